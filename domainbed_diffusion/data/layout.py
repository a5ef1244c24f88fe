"""Synthetic domains on disk, in DomainBed's folder layout, and the leak-free reader the algorithms use.

Layout, under a synthetic root (``<data_dir>/synthetic`` by default)::

    <root>/<Dataset>/<method>__<source env>[__to__<guide env>]/<class>/<image>.png
    <root>/<Dataset>/manifest.<method>.shard-<k>-of-<n>.jsonl      one JSON record per image

Each env folder is an ImageFolder, so DomainBed's image datasets can read the tree. A record names the image's
``file``, ``method``, ``source_env`` and ``source`` image, ``guide_env`` and ``guide`` image or ``prompt``,
``class_name``, ``sample`` index, ``params``, ``seed``, ``model_id`` and ``model_trained_on`` (the envs the model's
card lists). With one model per test env (``generators``) each model's images sit under ``without-<env>/``. The
rule that matters most: the reader never returns an image whose making involved a test environment (its source
or guide env, or a model trained on it), and, when it is given the run's training split, none made from (or
guided by) a validation image either.
"""
import json
import os
import re

import numpy as np

from .index import SyntheticDataError, iter_records, manifest_paths, missing_images, open_index

DEFAULT_SUBDIR = "synthetic"
__all__ = ["SyntheticDataError", "SyntheticDomains", "Selection", "ManifestWriter", "read_manifests", "env_folder",
           "manifest_name", "safe_name", "default_root", "synthetic_root"]


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


def synthetic_root(given, data_dir):
    """The synthetic root a command or run uses: the one ``given`` (option ``--synthetic_root``, hparam
    ``synthetic_root``), else ``<data_dir>/synthetic``; the one place that default is worked out."""
    if given:
        return given
    if not data_dir:
        raise ValueError("no synthetic root: give --synthetic_root (hparam synthetic_root) or --data_dir")
    return default_root(data_dir)


def _drop_cut_line(path):
    """A manifest whose last line was cut by a crash is truncated after its last complete line, so that
    appending never glues a new record to the cut one (the cut record's image is redone on resume)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        size = f.seek(0, os.SEEK_END)
        position = size
        while position > 0:
            step = min(65536, position)
            f.seek(position - step)
            chunk = f.read(step)
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                f.truncate(position - step + newline + 1)
                return
            position -= step
        f.truncate(0)


class ManifestWriter:
    """Appends records to one manifest file; each ``write`` is flushed to disk before returning."""

    def __init__(self, path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        _drop_cut_line(path)
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


def read_manifests(dataset_root, method=None):
    """All records of ``dataset_root`` (one dataset's synthetic folder), deduplicated by file (last wins)."""
    records = {}
    for path in manifest_paths(dataset_root, method):
        for record in iter_records(path):
            records[record["file"]] = record
    return list(records.values())


class SyntheticDomains:
    """The synthetic images of one dataset under a synthetic root, read through their manifests."""

    def __init__(self, root, dataset):
        self.root = root
        self.dataset = dataset
        self.dataset_root = os.path.join(root, dataset)

    def exists(self, method):
        return bool(manifest_paths(self.dataset_root, method))

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
                raise missing_images(self.dataset_root, method, missing)
        return records

    def index(self, method, build_if_missing=True):
        """The method's columnar index (``synthetic_index``), built first if missing or stale."""
        if not os.path.isdir(self.dataset_root):
            raise SyntheticDataError(f"no synthetic domains for {self.dataset}: {self.dataset_root} does not exist")
        if not self.exists(method):
            self.records(method, check_files=False)  # raises the right "no manifest" error
        return open_index(self.dataset_root, method, build_if_missing)

    def select(self, method, env_names, class_names, test_envs, training_sources=None, allow_test_guides=False,
               where=None, validation_digests=None, generator_saw_test_env=False, per_split=False):
        """Records usable by a run: ``{training env index: Selection}``, read through the method's index.

        A record is dropped when its source env or guide env is a test env (guides allowed only with
        ``allow_test_guides``, CDGA's starred variant), or, given ``training_sources`` (env index -> set of
        image paths relative to the dataset root that the run trains on), when its source or guide image is
        not one of them. ``where(index)`` returns a boolean mask over the index's rows (method parameters).
        Images of a model trained on a test env are skipped when images of a model that was not are there too
        (a folder of per-test-env models' images), and refused with ``GeneratorLeakError`` when they are all
        there is, unless ``generator_saw_test_env`` (the hparam ``UNSAFE_generator_saw_test_env``) opts in.
        Given ``validation_digests`` (env index -> ``splits.digest`` of the run's validation split), records made
        per trial (``validation_digest``) are kept only if made for this run's split of their env, and when there
        are any, they are all the run reads: a per-trial draw replaces a shared one (records without a split),
        which is read otherwise, unless ``per_split`` (the method always fits on a split). Each ``Selection``
        counts its env's pairs lost to a guide outside the run's training split (``guides_not_trained``).
        """
        index = self.index(method)
        env_of = _vocabulary_map(index.envs, env_names, "env", self.dataset_root, index,
                                 lambda codes: np.isin(index.source_env, codes) | np.isin(index.guide_env, codes),
                                 "wrong dataset or data_dir?")
        class_of = _vocabulary_map(index.classes, class_names, "class", self.dataset_root, index,
                                   lambda codes: np.isin(index.class_, codes), "not one of the dataset's classes")
        source_env = env_of[index.source_env]
        guide_env = np.where(index.guide_env >= 0, env_of[np.maximum(index.guide_env, 0)], -1)
        tests = np.asarray(sorted(test_envs), dtype=np.int64)
        keep = ~np.isin(source_env, tests)
        guided_by_test = np.isin(guide_env, tests)
        if not allow_test_guides:
            keep &= ~guided_by_test
        if training_sources is not None:
            # image path code -> the env it trains in; one extra slot, never set, is where code -1 (none) lands
            trained_env = np.full(len(index.paths) + 1, -1, dtype=np.int64)
            for env, paths in training_sources.items():
                codes = index.path_codes(sorted(paths))
                trained_env[codes[codes >= 0]] = env
            has_source = index.source >= 0
            keep &= ~has_source | (trained_env[index.source] == source_env)
            checked_guide = (index.guide >= 0) & (guide_env >= 0) & ~guided_by_test
            guide_ok = ~checked_guide | (trained_env[index.guide] == guide_env)
        else:
            guide_ok = np.ones(len(keep), dtype=bool)
        if validation_digests is not None:
            run_digest = np.full(len(env_names), np.nan)
            for env, value in validation_digests.items():
                run_digest[env] = float(value)
            digest = index.param("validation_digest")
            own = digest == run_digest[source_env]  # NaN (no split) never equal
            keep &= own if per_split or (keep & own).any() else np.isnan(digest)
        if where is not None:
            keep &= np.asarray(where(index), dtype=bool)
        keep &= self._generator_rows(index, [env_names[i] for i in sorted(test_envs)], keep,
                                     generator_saw_test_env, method)
        lost_guides = keep & ~guide_ok  # records this run would use but for their guide
        keep &= guide_ok
        labels = class_of[index.class_]
        return {i: Selection(self.dataset_root, index, np.flatnonzero(keep & (source_env == i)),
                             labels[keep & (source_env == i)], int((lost_guides & (source_env == i)).sum()))
                for i in range(len(env_names)) if i not in test_envs}


    def _generator_rows(self, index, test_names, keep, unsafe, method):
        """A mask of the rows whose model this run may use (see ``select``)."""
        from .provenance import UNSAFE, GeneratorLeakError, seen_test_envs
        saw = np.asarray([bool(seen_test_envs(t, test_names)) for t in index.model_trained_on] or [False])
        row_saw = saw[index.model] if len(index.model) else np.zeros(0, dtype=bool)
        if unsafe or not (keep & row_saw).any() or (keep & ~row_saw).any():
            return np.ones(len(row_saw), dtype=bool) if unsafe else ~row_saw
        models = sorted({index.models[m] for m in np.unique(index.model[keep & row_saw])})
        raise GeneratorLeakError(
            f"{self.dataset_root}: every {method} image this run could use was made by a diffusion model trained "
            f"on its test env(s) {test_names} ({', '.join(models)}). Generate with the model that excludes the "
            f"test env (--model embedded does on DigitStyles: one model per test env), or opt in with the "
            f"hparam {UNSAFE}=true for an ablation."
            + (" No shipped model excludes two test envs: sweep with --single_test_envs." if len(test_names) > 1
               else ""))


def _vocabulary_map(vocabulary, names, what, dataset_root, index, rows_with, hint):
    """Codes of the index's vocabulary -> positions in the run's ``names``; an unknown name is an error that
    names a record holding it."""
    position = {name: i for i, name in enumerate(names)}
    unknown = [code for code, name in enumerate(vocabulary) if name not in position]
    if unknown:
        row = int(np.flatnonzero(rows_with(np.asarray(unknown)))[0])
        raise SyntheticDataError(f"{dataset_root}: record {index.file(row)} names {what} "
                                 f"{vocabulary[unknown[0]]!r}, not one of {list(names)}: {hint}")
    return np.asarray([position[name] for name in vocabulary] or [0], dtype=np.int64)


class Selection:
    """The rows of an index that one training env of a run may use, and their class labels (numpy arrays, so
    DataLoader workers share them without copying)."""

    def __init__(self, dataset_root, index, rows, labels, guides_not_trained=0):
        self.dataset_root, self.index = dataset_root, index
        self.rows, self.labels = rows.astype(np.int64), labels.astype(np.int64)
        self.guides_not_trained = guides_not_trained  # pairs dropped: guide in the run's validation split

    def __len__(self):
        return len(self.rows)

    def path(self, k):
        return os.path.join(self.dataset_root, self.index.file(int(self.rows[k])))

    def record(self, k):
        """The indexed fields of the k-th image as a manifest-like dict."""
        ix, row = self.index, int(self.rows[k])

        def name(vocabulary, code):
            return None if code < 0 else vocabulary[code]

        return dict(file=ix.file(row), source_env=ix.envs[ix.source_env[row]], guide_env=name(ix.envs,
                    int(ix.guide_env[row])), class_name=ix.classes[ix.class_[row]],
                    source=ix.path(int(ix.source[row])), guide=ix.path(int(ix.guide[row])),
                    sample=int(ix.sample[row]), model_id=ix.models[int(ix.model[row])],
                    params={k: float(v[row]) for k, v in ix.params.items() if not np.isnan(v[row])})

    def records(self):
        return [self.record(k) for k in range(len(self))]

    def without(self, files):
        """This selection less the images whose file (relative to the dataset root) is in ``files``."""
        keep = np.asarray([self.index.file(int(row)) not in files for row in self.rows], dtype=bool)
        return Selection(self.dataset_root, self.index, self.rows[keep], self.labels[keep], self.guides_not_trained)
