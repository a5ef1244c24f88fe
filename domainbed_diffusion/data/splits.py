"""DomainBed's train/validation split of a dataset folder, computed without running DomainBed.

DomainBed's train script splits every env ``i`` of a dataset with ``split_dataset(env, int(len(env) *
holdout_fraction), seed_hash(trial_seed, i))``: the env's images in ImageFolder order are shuffled by a
``numpy.random.RandomState`` seeded with that hash, the first ``n`` are the validation split, the rest the
training split. The generator needs the same split before any run exists, so that what it fits on an env (the
latent prior, CDGA-IG's guides) comes only from the images a run of that trial trains on; an integration test
checks this module against DomainBed's own ``split_dataset``.
"""
import hashlib
import os

import numpy as np
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from .seeding import seed_hash

HOLDOUT_FRACTION = 0.2  # DomainBed's train script default
TRIAL_SEEDS = (0, 1, 2)  # DomainBed's sweep default: --n_trials 3


def env_samples(env_dir):
    """``[(path, class index)]`` of one env folder in ImageFolder's order (sorted classes, then sorted files),
    with ImageFolder's own listing, so a split computed here indexes the same images as DomainBed's."""
    _, class_to_idx = find_classes(env_dir)
    return make_dataset(env_dir, class_to_idx, extensions=IMG_EXTENSIONS)


def validation_keys(n, holdout_fraction, trial_seed, env_index):
    """Indices (into an env of ``n`` images) of the validation split of DomainBed's train script."""
    keys = list(range(n))
    np.random.RandomState(seed_hash(trial_seed, env_index)).shuffle(keys)
    return keys[:int(n * holdout_fraction)]


def relative_paths(paths, dataset_dir):
    """Image paths relative to the dataset folder, with "/" (the manifests' form); slicing the common prefix,
    not ``os.path.relpath`` per path: DomainNet has 586k images."""
    prefix = os.path.join(dataset_dir, "")
    return [(p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, dataset_dir)).replace(os.sep, "/")
            for p in paths]


def validation_paths(dataset_dir, env_names, trial_seeds, holdout_fraction):
    """``{trial seed: {env: set of validation image paths relative to dataset_dir}}`` for every env."""
    out = {t: {} for t in trial_seeds}
    for i, env in enumerate(env_names):
        paths = relative_paths([p for p, _ in env_samples(os.path.join(dataset_dir, env))], dataset_dir)
        for t in trial_seeds:
            out[t][env] = {paths[k] for k in validation_keys(len(paths), holdout_fraction, t, i)}
    return out


def digest(paths):
    """A 52-bit digest of a set of image paths: exact in a float64 manifest parameter."""
    text = "\n".join(sorted(paths)).encode("utf-8")
    return int(hashlib.sha256(text).hexdigest()[:13], 16)
