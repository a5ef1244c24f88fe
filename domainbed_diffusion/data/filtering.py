"""Filtered selections of synthetic images: what ``python -m offline_generation filter`` writes and how a run reads
it (the hparam ``synthetic_filter``).

A filter file ``filter.<method>.<name>.jsonl`` sits next to the method's manifests. For each (test env, trial) it
holds a header line (the split it was fitted for: the digest of each training env's validation split, what it
kept and dropped) and one line per dropped image (its file, label, the probe's prediction, confidence, entropy and
the reason). No image is deleted: a run without ``synthetic_filter`` reads them all, a run with it drops the
images its own (test env, trial) group lists.
"""
import json
import os

from .layout import SyntheticDataError, safe_name


def filter_path(dataset_root, method, name):
    return os.path.join(dataset_root, f"filter.{method}.{safe_name(name)}.jsonl")


def read_groups(path):
    """``{(test env, frozenset of (env, digest)): (header, set of dropped files)}`` of a filter file."""
    groups = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                raise SyntheticDataError(f"{path}:{number}: not valid JSON: the filter file is damaged; run the "
                                         f"filter command again (it rewrites the file whole)") from None
            key = (item["test_env"], frozenset((env, str(d)) for env, d in item["validation_digests"].items()))
            if item.get("header"):
                groups[key] = (item, groups.get(key, (None, set()))[1])
            else:
                groups.setdefault(key, (None, set()))[1].add(item["file"])
    return groups


def dropped_files(path, trial_seed):
    """Every file a filter dropped for any test env of one trial (the report's view of a filtered selection)."""
    if not os.path.isfile(path):
        raise SyntheticDataError(f"no filter {path}: make it with `python -m offline_generation filter`")
    return {f for header, files in read_groups(path).values() if header and header["trial_seed"] == trial_seed
            for f in files}


def apply(selected, dataset_root, method, name, test_env_names, digests, command):
    """``selected`` (``{env index: Selection}``) without the images the filter ``name`` dropped for this run's
    test env and split (``digests``: env name -> validation digest of the run's training envs); an error naming
    ``command`` when the filter file, or its group for this run, is missing."""
    path = filter_path(dataset_root, method, name)
    if len(test_env_names) != 1:
        raise SyntheticDataError(f"synthetic_filter={name!r}: a filter is fitted per test env; this run has "
                                 f"{len(test_env_names)} ({test_env_names}). Sweep with --single_test_envs.")
    if not os.path.isfile(path):
        raise SyntheticDataError(f"synthetic_filter={name!r}: no filter {path} for {method}. Make it with:\n    "
                                 f"{command}")
    key = (test_env_names[0], frozenset((env, str(d)) for env, d in digests.items()))
    groups = read_groups(path)
    if key not in groups or groups[key][0] is None:
        raise SyntheticDataError(f"synthetic_filter={name!r}: {path} has no group for test env {test_env_names[0]} "
                                 f"and this run's train/validation split (its trial seed or holdout fraction was "
                                 f"not filtered for). Make it with:\n    {command}")
    dropped = groups[key][1]
    return {i: selection.without(dropped) for i, selection in selected.items()}
