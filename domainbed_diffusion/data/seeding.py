"""Seeds derived from names: the same value in every process, whatever its hash seed or its start order."""
import hashlib


def seed_hash(*args):
    """A 31-bit integer hash of the arguments, stable across processes."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)
