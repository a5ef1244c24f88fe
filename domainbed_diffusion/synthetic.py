"""Synthetic domains on disk, in DomainBed's folder layout, and the leak-free reader the algorithms use.

Layout, under a synthetic root (``<data_dir>/synthetic`` by default)::

    <root>/<Dataset>/<method>__<source env>[__to__<guide env>]/<class>/<image>.png
    <root>/<Dataset>/manifest.<method>.shard-<k>-of-<n>.jsonl      one JSON record per image

Each env folder is an ImageFolder, so DomainBed's image datasets can read the tree. A record names the image's
``file``, ``method``, ``source_env`` and ``source`` image, ``guide_env`` and ``guide`` image or ``prompt``,
``class_name``, ``sample`` index, ``params``, ``seed`` and ``model_id``. The rule that matters most: the reader
never returns an image whose making involved a test environment (its source or guide env), and, when it is
given the run's training split, none made from (or guided by) a validation image either.
"""
import glob
import json
import os
import re

from PIL import Image

MANIFEST_GLOB = "manifest.*.jsonl"
DEFAULT_SUBDIR = "synthetic"


class SyntheticDataError(RuntimeError):
    """Synthetic data is missing, or its manifest disagrees with itself or with the files."""


def safe_name(name):
    """A folder-safe version of an env or class name (whitespace and separators become '_')."""
    return re.sub(r"[\s/\\:]+", "_", str(name)).strip("_") or "_"


def env_folder(method, source_env, guide_env=None):
    folder = f"{method}__{safe_name(source_env)}"
    return folder + (f"__to__{safe_name(guide_env)}" if guide_env is not None else "")


def manifest_name(method, shard_id=0, num_shards=1):
    return f"manifest.{method}.shard-{shard_id:05d}-of-{num_shards:05d}.jsonl"


def default_root(data_dir):
    return os.path.join(data_dir, DEFAULT_SUBDIR)


def save_png(image, path):
    """Write a PIL image atomically: readers never see a half-written file (``.tmp`` names are ignored)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    image.save(tmp, format="PNG")
    os.replace(tmp, path)


class ManifestWriter:
    """Appends records to one manifest file; each ``write`` is flushed to disk before returning."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")

    def write(self, records):
        for record in records:
            self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


REQUIRED = ("file", "method", "source_env", "class_name")


def read_manifests(dataset_root, method=None):
    """All records of ``dataset_root`` (one dataset's synthetic folder), deduplicated by file (last wins)."""
    records = {}
    pattern = f"manifest.{method}.*.jsonl" if method else MANIFEST_GLOB
    for path in sorted(glob.glob(os.path.join(dataset_root, pattern))):
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    if not line.endswith("\n"):  # a line cut by an interrupted run: its image is redone on resume
                        continue
                    raise SyntheticDataError(f"{path}:{line_no} is not valid JSON; remove the line or the "
                                             f"manifest and re-run the generator (it resumes)") from None
                missing = [k for k in REQUIRED if k not in record]
                if missing:
                    raise SyntheticDataError(f"{path}:{line_no} lacks {missing}: not a manifest of this generator")
                records[record["file"]] = record
    return list(records.values())


class SyntheticDomains:
    """The synthetic images of one dataset under a synthetic root, read through their manifests."""

    def __init__(self, root, dataset):
        self.root = root
        self.dataset = dataset
        self.dataset_root = os.path.join(root, dataset)

    def exists(self, method):
        return bool(glob.glob(os.path.join(self.dataset_root, f"manifest.{method}.*.jsonl")))

    def records(self, method, check_files=True):
        """The method's records; raises when there are none or when a recorded file is missing."""
        if not os.path.isdir(self.dataset_root):
            raise SyntheticDataError(f"no synthetic domains for {self.dataset}: {self.dataset_root} does not exist")
        records = read_manifests(self.dataset_root, method)
        if not records:
            folders = [e for e in os.listdir(self.dataset_root) if e.startswith(f"{method}__")]
            what = (f"it has {method} image folders but no manifest, so their provenance is unknown"
                    if folders else f"it has no {method} manifest")
            raise SyntheticDataError(f"{self.dataset_root}: {what}")
        if check_files:
            missing = [r["file"] for r in records if not os.path.isfile(os.path.join(self.dataset_root, r["file"]))]
            if missing:
                raise SyntheticDataError(
                    f"{self.dataset_root}: the {method} manifest lists {len(missing)} image(s) that are not on disk "
                    f"(first: {missing[0]}). Re-run the generator with the same arguments: it regenerates them.")
        return records

    def select(self, method, env_names, class_names, test_envs, training_sources=None, allow_test_guides=False,
               where=None):
        """Records usable by a run: ``{training env index: [(path, class index, record), ...]}``.

        A record is dropped when its source env or guide env is a test env (guides allowed only with
        ``allow_test_guides``, CDGA's starred variant), or, given ``training_sources`` (env index -> set of
        image paths relative to the dataset root that the run trains on), when its source or guide image is
        not one of them. ``where`` filters records further (method parameters).
        """
        env_index = {name: i for i, name in enumerate(env_names)}
        class_index = {name: i for i, name in enumerate(class_names)}
        selected = {i: [] for i in range(len(env_names)) if i not in test_envs}
        for record in self.records(method):
            for key in ("source_env", "guide_env"):
                if record.get(key) is not None and record[key] not in env_index:
                    raise SyntheticDataError(f"{self.dataset_root}: record {record['file']} names env "
                                             f"{record[key]!r}, not one of {env_names}: wrong dataset or data_dir?")
            if record["class_name"] not in class_index:
                raise SyntheticDataError(f"{self.dataset_root}: record {record['file']} has class "
                                         f"{record['class_name']!r}, not one of the dataset's classes")
            source = env_index[record["source_env"]]
            guide = env_index.get(record.get("guide_env"))
            if source in test_envs or (guide in test_envs and not allow_test_guides):
                continue
            if training_sources is not None:
                if record.get("source") is not None and record["source"] not in training_sources.get(source, ()):
                    continue
                if guide is not None and record.get("guide") is not None and guide not in test_envs \
                        and record["guide"] not in training_sources.get(guide, ()):
                    continue
            if where is not None and not where(record):
                continue
            path = os.path.join(self.dataset_root, record["file"])
            selected[source].append((path, class_index[record["class_name"]], record))
        return selected


def load_rgb(path):
    with Image.open(path) as img:
        return img.convert("RGB")
