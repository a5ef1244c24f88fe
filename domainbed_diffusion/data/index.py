"""A compact, columnar index of one method's manifests: what a run reads at start instead of the JSON lines.

The manifests stay the human-readable source of truth; the index is derived from them and lives beside them as
``index.<method>.<signature>/``, a folder of ``.npy`` columns opened memory-mapped. Its signature is a hash of the
manifests' names and sizes (they are append-only), so an index that does not match the manifests on disk is never
found, let alone read: it is rebuilt (or reported where the folder is read-only). A build reads each manifest only
up to the size in its signature, so a generator still appending cannot make the index disagree with its name.

Columns (one row per image, deduplicated by file, last record wins as in ``read_manifests``):

- ``file``: the image path relative to the dataset's synthetic folder (a byte blob and offsets);
- ``source_env``, ``guide_env``, ``class``: codes into the env and class vocabularies of ``meta.json`` (-1: none);
- ``source``, ``guide``: codes into ``paths.npy``, the sorted source/guide image paths (-1: none);
- ``model``: codes into ``meta.json``'s ``models`` (the records' ``model_id``), whose ``model_trained_on`` lists
  the envs each model was trained on (None: unknown, a model without a card);
- ``sample`` and one float64 column per numeric parameter (``param.<name>``, NaN where a record lacks it).

Numpy arrays are single objects: DataLoader workers forked from the run share their pages and never copy them
(a list of Python records is copied page by page as workers touch refcounts).
"""
import array
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid

import numpy as np

FORMAT_VERSION = 2
REQUIRED = ("file", "method", "source_env", "class_name")  # fields every manifest record has
_FILE_FIELD = re.compile(r'"file": "((?:[^"\\]|\\.)*)"')


class SyntheticDataError(RuntimeError):
    """Synthetic data is missing, or its manifest disagrees with itself or with the files, or no index matches
    the manifests and none can be built here."""


def manifest_paths(dataset_root, method=None):
    """The manifests of ``method`` (every method's if None) under one dataset's synthetic folder, sorted."""
    return sorted(glob.glob(os.path.join(dataset_root, f"manifest.{method or '*'}.*.jsonl")))


def missing_images(dataset_root, method, missing):
    """The error for recorded images that are not on disk (``missing``: paths relative to ``dataset_root``)."""
    return SyntheticDataError(
        f"{dataset_root}: the {method} manifest lists {len(missing)} image(s) that are not on disk (first: "
        f"{missing[0]}). Re-run the generator with the same arguments: it makes them again.")


def signature(paths):
    """``(hash, [(name, size)])`` of the manifests: any append, new shard or removal changes it."""
    parts = [(os.path.basename(p), os.path.getsize(p)) for p in paths]
    digest = hashlib.sha1(json.dumps([FORMAT_VERSION, parts]).encode()).hexdigest()[:16]
    return digest, parts


def index_dir(dataset_root, method, digest):
    return os.path.join(dataset_root, f"index.{method}.{digest}")


def iter_lines(path, size):
    """``(line number, line)`` of a manifest, read up to ``size`` bytes; a last line cut mid-write is dropped."""
    with open(path, "rb") as f:
        data_left = size
        for line_no, raw in enumerate(f, 1):
            if data_left <= 0:
                return
            raw = raw[:data_left]
            data_left -= len(raw)
            if not raw.endswith(b"\n"):
                return  # cut by an interrupted run (or past the signature): its image is redone on resume
            line = raw.decode("utf-8")
            if line.strip():
                yield line_no, line


def iter_records(path, size=None, required=REQUIRED):
    """The records of one manifest (up to ``size`` bytes), each checked: invalid JSON or a missing field is an
    error naming the file and line."""
    for line_no, line in iter_lines(path, os.path.getsize(path) if size is None else size):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise SyntheticDataError(f"{path}:{line_no} is not valid JSON; remove the line or the manifest and re-run the "
                        f"generator (it resumes)") from None
        missing = [k for k in required if k not in record]
        if missing:
            raise SyntheticDataError(f"{path}:{line_no} lacks {missing}: not a manifest of this generator")
        yield record


def recorded_file_names(paths):
    """The ``file`` field of every record in these manifests, read by a regex (records are written with sorted
    keys, one per line); lines without it fall back to JSON."""
    for path in paths:
        for _, line in iter_lines(path, os.path.getsize(path)):
            match = _FILE_FIELD.search(line)
            if match and "\\" not in match.group(1):
                yield match.group(1)
            else:
                try:
                    yield json.loads(line)["file"]
                except (json.JSONDecodeError, KeyError):
                    continue


class _Vocab:
    def __init__(self):
        self.codes = {}

    def __call__(self, value):
        if value is None:
            return -1
        code = self.codes.get(value)
        if code is None:
            code = self.codes[value] = len(self.codes)
        return code

    def values(self):
        return list(self.codes)


def _blob(strings):
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _last_unique(files):
    """A mask of the rows to keep so that each file appears once, its last record winning (as a resumed batch
    records its images again)."""
    keep = np.ones(len(files), dtype=bool)
    if len(files) < 2:
        return keep
    hashes = np.fromiter((hash(f) for f in files), dtype=np.int64, count=len(files))
    order = np.argsort(hashes, kind="stable")  # equal hashes keep increasing row order
    sorted_hashes = hashes[order]
    starts = np.flatnonzero(np.concatenate([[True], sorted_hashes[1:] != sorted_hashes[:-1]]))
    ends = np.append(starts[1:], len(files))
    for group in np.flatnonzero(ends - starts > 1):  # equal hashes: almost always one file recorded twice
        latest = {}
        for row in order[starts[group]:ends[group]]:
            latest[files[row]] = row
            keep[row] = False
        keep[list(latest.values())] = True
    return keep


def build(dataset_root, method, verify=True, required=REQUIRED):
    """Build the index of ``method``'s manifests under ``dataset_root`` and return its folder.

    ``verify`` checks that every recorded image is on disk (one directory listing per folder, not one ``stat``
    per file). Written to a temporary folder and renamed into place, so concurrent builders never expose a half
    index (the loser's copy is discarded).
    """
    paths = manifest_paths(dataset_root, method)
    digest, parts = signature(paths)
    final = index_dir(dataset_root, method, digest)
    if os.path.isfile(os.path.join(final, "meta.json")):
        _remove_older(dataset_root, method, final, parts)
        return final
    envs, classes, images, models = _Vocab(), _Vocab(), _Vocab(), _Vocab()
    model_trained_on = {}
    files = []
    cols = {k: array.array("i") for k in ("source_env", "guide_env", "class", "source", "guide", "sample", "model")}
    params = {}  # name -> (rows, values)
    for path, (_, size) in zip(paths, parts):
        for record in iter_records(path, size, required):
            row = len(files)
            files.append(record["file"])
            cols["source_env"].append(envs(record["source_env"]))
            cols["guide_env"].append(envs(record.get("guide_env")))
            cols["class"].append(classes(record["class_name"]))
            cols["source"].append(images(record.get("source")))
            cols["guide"].append(images(record.get("guide")))
            cols["sample"].append(int(record.get("sample", 0)))
            model = str(record.get("model_id", ""))
            cols["model"].append(models(model))
            model_trained_on.setdefault(model, _trained_on(record, model))
            for key, value in (record.get("params") or {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows, values = params.setdefault(key, (array.array("q"), array.array("d")))
                    rows.append(row)
                    values.append(value)
    keep = _last_unique(files)
    if not keep.all():
        files = [f for f, k in zip(files, keep) if k]
    if verify:
        _verify_files(dataset_root, method, files)
    n = len(files)
    tmp = f"{final}.{uuid.uuid4().hex}.tmp"
    os.makedirs(tmp)
    blob, offsets = _blob(files)
    del files
    np.save(os.path.join(tmp, "file_blob.npy"), blob)
    np.save(os.path.join(tmp, "file_offsets.npy"), offsets)
    # image paths sorted, so a run finds its training images with one vectorised searchsorted
    path_values = [p.encode("utf-8") for p in images.values()]
    sorted_paths = np.array(sorted(path_values), dtype=bytes) if path_values else np.zeros(0, dtype="S1")
    remap = np.searchsorted(sorted_paths, np.array(path_values, dtype=bytes)).astype(np.int32) if path_values \
        else np.zeros(0, dtype=np.int32)
    np.save(os.path.join(tmp, "paths.npy"), sorted_paths)
    for key, dtype in (("source_env", np.int16), ("guide_env", np.int16), ("class", np.int32), ("sample", np.int32),
                       ("model", np.int32)):
        np.save(os.path.join(tmp, f"{key}.npy"), np.frombuffer(cols[key], dtype=np.int32)[keep].astype(dtype))
    for key in ("source", "guide"):
        codes = np.frombuffer(cols[key], dtype=np.int32)[keep]
        mapped = remap[np.maximum(codes, 0)] if len(remap) else codes
        np.save(os.path.join(tmp, f"{key}.npy"), np.where(codes >= 0, mapped, -1).astype(np.int32))
    param_names = sorted(params)
    for key in param_names:
        rows, values = params.pop(key)
        column = np.full(len(keep), np.nan)
        column[np.frombuffer(rows, dtype=np.int64)] = np.frombuffer(values, dtype=np.float64)
        np.save(os.path.join(tmp, f"param.{key}.npy"), column[keep])
    meta = dict(version=FORMAT_VERSION, method=method, count=n, manifests=parts, envs=envs.values(),
                classes=classes.values(), params=param_names, verified=bool(verify), built=time.time(),
                models=models.values(), model_trained_on=[model_trained_on[m] for m in models.values()])
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f)
    try:
        os.rename(tmp, final)
    except OSError:  # another process built the same index first
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isfile(os.path.join(final, "meta.json")):
            raise
    _remove_older(dataset_root, method, final, parts)
    return final


def _remove_older(dataset_root, method, final, parts):
    """Delete the method's other indexes that are older than the manifests ``parts`` describe."""
    for stale in glob.glob(os.path.join(dataset_root, f"index.{method}.*")):
        if stale != final and not stale.endswith(".tmp") and _older(stale, parts):
            shutil.rmtree(stale, ignore_errors=True)


def _older(folder, parts):
    """Whether the index in ``folder`` was built from manifests no longer than ``parts`` (names and sizes): only
    those are stale next to this one. An index of longer manifests (built meanwhile by a shard that finished
    later) is newer, and is kept; so are folders whose meta cannot be read (still being renamed into place). A
    manifest removed from disk makes its indexes stale."""
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            theirs = {name: size for name, size in json.load(f)["manifests"]}
    except (OSError, ValueError, KeyError):
        return False
    ours = {name: size for name, size in parts}
    root = os.path.dirname(folder)
    return all(size <= ours[name] if name in ours else not os.path.exists(os.path.join(root, name))
               for name, size in theirs.items())


def _trained_on(record, model):
    """The envs a record's model was trained on; None when unknown (a model without a card)."""
    if "model_trained_on" in record:
        return record["model_trained_on"]
    if model.startswith("embedded@"):  # records from before cards: the shipped model then was the all-styles one
        from ..benchmark import POOL_STYLES
        return list(POOL_STYLES)
    return None


def _verify_files(dataset_root, method, files):
    listings, missing = {}, []
    for rel in files:
        folder, name = os.path.split(rel)
        names = listings.get(folder)
        if names is None:
            try:
                names = listings[folder] = set(os.listdir(os.path.join(dataset_root, folder)))
            except FileNotFoundError:
                names = listings[folder] = set()
        if name not in names:
            missing.append(rel)
    if missing:
        raise missing_images(dataset_root, method, missing)


class SyntheticIndex:
    """An index opened for reading: memory-mapped columns and the vocabularies."""

    def __init__(self, folder):
        self.folder = folder
        with open(os.path.join(folder, "meta.json")) as f:
            self.meta = json.load(f)
        self.count = self.meta["count"]
        self.envs, self.classes = self.meta["envs"], self.meta["classes"]
        load = lambda name: np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")  # noqa: E731
        self.file_blob, self.file_offsets = load("file_blob"), load("file_offsets")
        self.paths = load("paths")
        self.source_env, self.guide_env, self.class_ = load("source_env"), load("guide_env"), load("class")
        self.source, self.guide, self.sample = load("source"), load("guide"), load("sample")
        self.model = load("model")
        self.models, self.model_trained_on = self.meta["models"], self.meta["model_trained_on"]
        self.params = {k: load(f"param.{k}") for k in self.meta["params"]}

    def __len__(self):
        return self.count

    def __reduce__(self):
        # a worker started by spawn or forkserver reopens the memory maps instead of receiving copies of them
        return SyntheticIndex, (self.folder,)

    def file(self, row):
        start, end = int(self.file_offsets[row]), int(self.file_offsets[row + 1])
        return bytes(self.file_blob[start:end]).decode("utf-8")

    def path(self, code):
        """The image path of a ``source``/``guide`` code, or None for -1."""
        return None if code < 0 else bytes(self.paths[code]).decode("utf-8")

    def param(self, name):
        """A numeric parameter's column (NaN where absent; all NaN if no record has it)."""
        column = self.params.get(name)
        return np.full(self.count, np.nan) if column is None else column

    def path_codes(self, rel_paths):
        """Codes of ``rel_paths`` in ``paths`` (-1 for paths no record names)."""
        if not len(self.paths) or not rel_paths:
            return np.full(len(rel_paths), -1, dtype=np.int64)
        keys = np.array([p.encode("utf-8") for p in rel_paths], dtype=bytes)
        pos = np.searchsorted(self.paths, keys)
        pos = np.minimum(pos, len(self.paths) - 1)
        return np.where(self.paths[pos] == keys, pos, -1)


def open_index(dataset_root, method, build_if_missing=True, stream=None):
    """The index matching the manifests on disk, built first if it is missing or stale and the folder is
    writable; a clear error naming the command otherwise."""
    digest, _ = signature(manifest_paths(dataset_root, method))
    folder = index_dir(dataset_root, method, digest)
    if not os.path.isfile(os.path.join(folder, "meta.json")):
        if not build_if_missing or not os.access(dataset_root, os.W_OK):
            raise SyntheticDataError(f"{dataset_root}: no index of the {method} manifests matches them (missing or stale) and "
                        f"it cannot be built here. Build it with:\n    python -m offline_generation index "
                        f"--synthetic_root {os.path.dirname(dataset_root)} --dataset "
                        f"{os.path.basename(dataset_root)} --methods {method}")
        start = time.time()
        folder = build(dataset_root, method)
        print(f"indexed the {method} manifests of {dataset_root} in {time.time() - start:.1f}s", file=stream or
              sys.stderr)
    return SyntheticIndex(folder)
