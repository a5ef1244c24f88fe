"""Training-side data of the generation-based algorithms: synthetic datasets, pixels <-> network inputs (mixing
them into minibatches is ``mixing``'s).

Synthetic images reach the network exactly as real ones do: through the env's own transform (DomainBed's
augmentations included) and DomainBed's ``InfiniteDataLoader``. DomainBed's Debug datasets have no image files,
so for them the synthetic set is made in memory at construction, by the same method functions the generator
uses, with the embedded model.
"""
import os
import shlex

import torch
import torch.nn.functional as F
from torchvision import transforms

from .. import catalogue
from ..data import splits, layout as synthetic
from ..data.files import load_rgb
from ..benchmark import CPU_DATASETS
from ..data.provenance import UNSAFE
from ..benchmark.shipped import EMBEDDED, PAPERS_MODEL
from ..data.index import missing_images


# -- pixels <-> network inputs ------------------------------------------------------------------------------
def _normalize_of(transform):
    if isinstance(transform, transforms.Normalize):
        return transform
    for t in getattr(transform, "transforms", []):
        found = _normalize_of(t)
        if found is not None:
            return found
    return None


class PixelMapping:
    """Maps network inputs of an env back to pixels in [0, 1] and pixels to (non-augmented) network inputs."""

    def __init__(self, transform, input_shape):
        normalize = _normalize_of(transform)
        self.mean = torch.tensor(normalize.mean if normalize else [0.0] * input_shape[0]).view(1, -1, 1, 1)
        self.std = torch.tensor(normalize.std if normalize else [1.0] * input_shape[0]).view(1, -1, 1, 1)
        self.size = tuple(input_shape[1:])

    def to_pixels(self, x, size=None):
        p = (x * self.std.to(x) + self.mean.to(x)).clamp(0, 1)
        return p if size is None else F.interpolate(p, size=size, mode="bilinear", align_corners=False, antialias=True)

    def to_inputs(self, pixels):
        p = F.interpolate(pixels, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        return (p - self.mean.to(p)) / self.std.to(p)


def env_transform(ctx, env_index):
    return getattr(ctx.dataset[env_index], "transform", None)


def has_files(env):
    return hasattr(env, "samples")


def dataset_root_of(ctx):
    """The dataset's folder on disk: the parent of its env folders."""
    roots = {os.path.dirname(os.path.normpath(env.root)) for env in ctx.dataset.datasets if hasattr(env, "root")}
    return roots.pop() if len(roots) == 1 else None


def _relative_paths(ctx, env_index, keys):
    samples = ctx.dataset[env_index].samples
    return set(splits.relative_paths([samples[k][0] for k in keys], dataset_root_of(ctx)))


def training_sources(ctx):
    """env index -> paths (relative to the dataset folder) of the images this run trains on."""
    return {i: _relative_paths(ctx, i, ctx.training_keys(i)) for i in ctx.train_envs}


def validation_digests(ctx):
    """env index -> ``splits.digest`` of the run's validation split of that training env (empty if unsplit)."""
    return {i: splits.digest(_relative_paths(ctx, i, ctx.validation_keys(i))) for i in ctx.train_envs}


# -- synthetic datasets -------------------------------------------------------------------------------------
class SyntheticImages(torch.utils.data.Dataset):
    """Synthetic images of one env (a ``synthetic.Selection``), through that env's transform."""

    def __init__(self, selection, transform, method=""):
        self.selection = selection
        self.transform = transform
        self.method = method

    def __len__(self):
        return len(self.selection)

    def __getitem__(self, index):
        try:
            image = load_rgb(self.selection.path(index))
        except FileNotFoundError:  # removed after the index was built
            raise missing_images(self.selection.dataset_root, self.method,
                                 [self.selection.index.file(int(self.selection.rows[index]))]) from None
        label = int(self.selection.labels[index])
        return (self.transform(image) if self.transform else transforms.functional.to_tensor(image)), label


def synthetic_datasets(ctx, method, hparams, algorithm_name, base_seed, where=None, allow_test_guides=False):
    """``{training env index: Dataset}`` of ``method``'s images this run may use, through the env's transform:
    read leak-free from disk (``synthetic_items``), or made in memory for DomainBed's Debug datasets (tensors, no
    files to generate from offline)."""
    if all(has_files(ctx.dataset[i]) for i in ctx.train_envs):
        items = synthetic_items(ctx, method, hparams, algorithm_name, where, allow_test_guides,
                                catalogue.spec(method).per_split)
        return {i: SyntheticImages(items[i], env_transform(ctx, i), method) for i in ctx.train_envs}
    made = in_memory_synthetic(ctx, method, hparams, base_seed)
    return {i: torch.utils.data.TensorDataset(*made[i]) for i in ctx.train_envs}


def generator_command(ctx, method, hparams, extra=()):
    """The generator command line that makes what a run of ``method`` needs."""
    model = EMBEDDED if ctx.dataset_name in CPU_DATASETS else PAPERS_MODEL
    parts = ["python", "-m", "offline_generation", "--dataset", ctx.dataset_name, "--data_dir", ctx.data_dir,
             "--methods", method, "--model", model, *extra]
    if hparams.get("synthetic_root"):
        parts += ["--synthetic_root", hparams["synthetic_root"]]
    return " ".join(shlex.quote(str(p)) for p in parts)


def filter_command(ctx, method, hparams, name):
    """The filter command line that makes the filter ``name`` a run of ``method`` asks for."""
    parts = ["python", "-m", "offline_generation", "filter", "--dataset", ctx.dataset_name, "--data_dir",
             ctx.data_dir, "--methods", method, "--name", name, "--test_envs",
             *[ctx.env_names[i] for i in ctx.test_envs], *run_split_arguments(ctx)]
    if hparams.get("synthetic_root"):
        parts += ["--synthetic_root", hparams["synthetic_root"]]
    return " ".join(shlex.quote(str(p)) for p in parts)


def run_split_arguments(ctx):
    """``--trial_seeds``/``--holdout_fraction`` of this run, for the generator command (when known)."""
    args = ctx.train_args
    if args is None or getattr(args, "trial_seed", None) is None:
        return []
    return ["--trial_seeds", str(args.trial_seed), "--holdout_fraction", str(args.holdout_fraction)]


def synthetic_items(ctx, method, hparams, algorithm_name, where=None, allow_test_guides=False, per_split=False):
    """Leak-free synthetic items per training env, read through the manifests; clear errors when missing.

    Images made per trial are read for this run's own trial only (``synthetic.SyntheticDomains.select``);
    ``per_split``: the method always fits on a split (CDGA-IG, latent-prior), so only those are read."""
    root = synthetic.synthetic_root(hparams.get("synthetic_root"), ctx.data_dir)
    domains = synthetic.SyntheticDomains(root, ctx.dataset_name)
    command = generator_command(ctx, method, hparams)
    if not domains.exists(method):
        folders = (sorted(e for e in os.listdir(domains.dataset_root) if e.startswith(f"{method}__"))
                   if os.path.isdir(domains.dataset_root) else [])
        if folders:  # images without a manifest: their provenance (model, split, source) is unknown
            raise synthetic.SyntheticDataError(
                f"{algorithm_name} trains on {method} synthetic images of {ctx.dataset_name}: {domains.dataset_root} "
                f"has {len(folders)} {method} image folder(s) (e.g. {folders[0]}) but no manifest "
                f"(manifest.{method}.*.jsonl), so no image can be checked against the leak rules and none is read "
                f"(a generation stopped before its first record, or images copied without their manifests). Copy "
                f"the manifests too, or run the generator on that folder: it makes and records them again:"
                f"\n    {command}")
        raise synthetic.SyntheticDataError(
            f"{algorithm_name} trains on {method} synthetic images of {ctx.dataset_name}, and there are none under "
            f"{domains.dataset_root}. Generate them first:\n    {command}\n(or point the hparam synthetic_root at "
            f"the folder that holds them).")
    try:
        selected = domains.select(method, ctx.env_names, ctx.class_names, ctx.test_envs,
                                  training_sources=training_sources(ctx), allow_test_guides=allow_test_guides,
                                  where=where, validation_digests=validation_digests(ctx),
                                  generator_saw_test_env=bool(hparams.get(UNSAFE, False)), per_split=per_split)
    except synthetic.SyntheticDataError as error:
        raise synthetic.SyntheticDataError(f"{error}\nTo regenerate: {command}") from None
    if hparams.get("synthetic_filter"):
        from ..data import filtering
        name = hparams["synthetic_filter"]
        digests = {ctx.env_names[i]: d for i, d in validation_digests(ctx).items()}
        selected = filtering.apply(selected, domains.dataset_root, method, name,
                                   [ctx.env_names[i] for i in ctx.test_envs], digests,
                                   filter_command(ctx, method, hparams, name))
    empty = [ctx.env_names[i] for i, items in selected.items() if not items]
    if empty and per_split:
        args = ctx.train_args
        which = (f"trial seed {args.trial_seed}, holdout fraction {args.holdout_fraction}"
                 if args is not None else "this process's split")
        raise synthetic.SyntheticDataError(
            f"{algorithm_name}: no {method} image of {ctx.dataset_name} under {domains.dataset_root} was fitted on "
            f"this run's train/validation split of env(s) {empty} ({which}). Its images are made per trial, from "
            f"the training split only, so that no validation image shapes the training data. Generate this "
            f"trial's with:\n    {generator_command(ctx, method, hparams, run_split_arguments(ctx))}")
    lost = sum(items.guides_not_trained for items in selected.values())
    if lost:
        total = lost + sum(len(items) for items in selected.values())
        print(f"{algorithm_name}: {lost} of {total} {method} pairs are not used: their guide is in this run's "
              f"validation split (generate with this run's trial in --trial_seeds to avoid it)", flush=True)
    if empty:
        raise synthetic.SyntheticDataError(
            f"{algorithm_name}: no usable {method} image for training env(s) {empty} of {ctx.dataset_name} under "
            f"{domains.dataset_root} (test envs {[ctx.env_names[i] for i in ctx.test_envs]}). Were they generated "
            f"for these envs and these settings (images made --per_trial serve only their own trials)? Generate "
            f"with:\n    {command}")
    return selected


# -- in memory, for datasets without files ------------------------------------------------------------------
def in_memory_synthetic(ctx, method, hparams, base_seed):
    """{training env: (images (N, C, H, W) as network inputs, labels)} made with the embedded model, for envs
    that are tensors (DomainBed's Debug datasets), by the method's own plan over the training envs only."""
    from ..diffusion import LatentDiffusion
    from ..generation.in_memory import TensorSources, generate_in_memory
    if ctx.input_shape[0] != 3:
        raise ValueError(f"{method} makes RGB images; {ctx.dataset_name} has {ctx.input_shape[0]} channels")
    model = LatentDiffusion.from_pretrained(EMBEDDED, device="cpu", dtype="float32")
    mapping = PixelMapping(None, ctx.input_shape)
    envs = [ctx.env_names[i] for i in ctx.train_envs]
    parts = [ctx.training_split(i) for i in ctx.train_envs]  # the run's training images only: no leak
    sources = TensorSources(ctx.dataset_name, [mapping.to_pixels(torch.stack([x for x, _ in split]).float())
                                               for split in parts],
                            [torch.tensor([int(y) for _, y in split]) for split in parts], envs, ctx.class_names)
    spec = catalogue.spec(method)
    cfg = spec.config(embedded=True, seed=base_seed, dataset=ctx.dataset_name, batch_size=64,
                      **spec.from_hparams(hparams), **spec.debug_settings(envs))
    made = generate_in_memory(model, spec, cfg, sources, envs)
    data = {}
    for i, env in zip(ctx.train_envs, envs):
        if env not in made:
            raise ValueError(f"{method} made no synthetic image for env {env} of {ctx.dataset_name}")
        images, items = made[env]
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        labels = torch.tensor([ctx.class_names.index(it.class_name) for it in items])
        data[i] = (mapping.to_inputs(pixels), labels)
    return data
