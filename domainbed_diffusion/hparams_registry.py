"""Hyperparameters of the plugin's algorithms and datasets, in DomainBed's registry convention.

``extend`` runs after DomainBed's own ``_hparams`` and adds to its dict of ``(default, random)`` pairs: every
random value comes from a RandomState seeded by ``(random_seed, name)``, so a random search is deterministic.
DomainBed's entries are left as they are for DomainBed's datasets; DigitStyles, a dataset of ours, sets the
optimisation basics (lr, batch size, weight decay) for every algorithm, as DomainBed does for its small images.

Each algorithm's own block is a function below, ``block(hparams, dataset)`` with ``hparams.define`` and
``hparams.redefine``; the catalogue pairs it with its algorithm (``catalogue``), and ``extend`` is given that
pairing, so this module lists no algorithm by name.
"""
import numpy as np

from .benchmark import CPU_DATASETS, DIGITSTYLES, PAPERS_DATASETS
from .benchmark.shipped import EMBEDDED, PAPERS_MODEL
from .data.seeding import seed_hash


class Hparams:
    """Adds entries to DomainBed's ``{name: (default, random)}`` dict of one (algorithm, dataset, seed)."""

    def __init__(self, hparams, random_seed):
        self.hparams, self.random_seed = hparams, random_seed

    def define(self, name, default_val, random_val_fn):
        assert name not in self.hparams, name
        random_state = np.random.RandomState(seed_hash(self.random_seed, name))
        self.hparams[name] = (default_val, random_val_fn(random_state))

    def redefine(self, name, default_val, random_val_fn=None):
        """Replace an entry DomainBed defined; keep DomainBed's random value unless a new one is given."""
        if random_val_fn is None:
            self.hparams[name] = (default_val, self.hparams[name][1])
        else:
            del self.hparams[name]
            self.define(name, default_val, random_val_fn)


def extend(hparams, algorithm, dataset, random_seed, entry=None, swad_on=False):
    """Add the plugin's entries to DomainBed's ``{name: (default, random)}`` dict, in place; ``entry`` is the
    algorithm's catalogue entry (None for DomainBed's own algorithms); ``swad_on``: its ``_SWAD`` variant."""
    hp = Hparams(hparams, random_seed)
    if dataset == DIGITSTYLES:  # dataset-wide, for every algorithm (DomainBed's included)
        hp.redefine("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5))  # DomainBed's small-image default
        hp.redefine("weight_decay", 0.0, lambda r: 0.0)
        hp.redefine("batch_size", 8, lambda r: int(2 ** r.uniform(3, 4.5)))
        # every algorithm starts from the featurizer pretrained on styles outside the benchmark (``pretrained``)
        hp.define("pretrained_featurizer", EMBEDDED, lambda r: EMBEDDED)
        hp.define("channels_last", True, lambda r: True)  # CPU speed only (``networks``)
        # CPU speed: bfloat16 convolutions (``networks``; their effect on accuracy: docs/performance.md), and no
        # forward passes for the training splits' accuracies, which no selection method reads (``evaluation``)
        hp.define("autocast", "bfloat16", lambda r: "bfloat16")
        hp.define("eval_training_splits", False, lambda r: False)
    reads = entry.reads_spec() if entry is not None else None
    if reads is not None:  # it trains on a generation method's images
        synthetic(hp, dataset, entry.mode)
        twins(hp, reads)
    if entry is not None and entry.hparams is not None:
        entry.hparams(hp, dataset)
    every_algorithm(hp, dataset)
    if swad_on:
        swad(hp, dataset)


SWAD_SUFFIX = "_SWAD"  # "<Name>_SWAD": any algorithm <Name> with SWAD (``options``)


def swad_base(algorithm):
    """``<Name>`` of an ``<Name>_SWAD`` algorithm name, else None."""
    return algorithm[:-len(SWAD_SUFFIX)] if algorithm.endswith(SWAD_SUFFIX) and len(algorithm) > len(SWAD_SUFFIX) \
        else None


def every_algorithm(hp, dataset):
    """The options of every algorithm (``options``), off by default: which generation methods' images a run also
    reads, and how (each env's minibatch, or extra environments)."""
    hp.define("synthetic_methods", [], lambda r: [])
    hp.define("synthetic_as", "minibatch", lambda r: "minibatch")
    if "synthetic_root" not in hp.hparams:
        hp.define("synthetic_root", "", lambda r: "")
    # "": every image; a name: the images `python -m offline_generation filter --name NAME` kept for the run
    hp.define("synthetic_filter", "", lambda r: "")
    if "UNSAFE_generator_saw_test_env" not in hp.hparams:
        leak_opt_in(hp)


# SWAD's evaluation interval per dataset: its paper's (PACS, OfficeHome, TerraIncognita 100, VLCS 50, DomainNet
# 500); DigitStyles' 151 steps evaluated every 5 give 30 segments, room for its 3 + 6 evaluation windows.
SWAD_EVAL_EVERY = {"PACS": 100, "VLCS": 50, "OfficeHome": 100, "TerraIncognita": 100, "DomainNet": 500,
                   DIGITSTYLES: 5, "Debug28": 2, "Debug224": 2}


def swad(hp, dataset):
    """``<Name>_SWAD``: SWAD's loss-valley rules (its defaults; tolerance 0.2 on VLCS, as its paper's runs)."""
    hp.define("swad_n_converge", 3, lambda r: 3)
    hp.define("swad_n_tolerance", 6, lambda r: 6)
    ratio = 0.2 if dataset == "VLCS" else 0.3
    hp.define("swad_tolerance_ratio", ratio, lambda r: ratio)
    every = SWAD_EVAL_EVERY.get(dataset, 100)
    hp.define("swad_eval_every", every, lambda r: every)
    hp.define("swad_bn_batches", 500, lambda r: 500)  # BatchNorm statistics recomputed on this many batches


def synthetic(hp, dataset, mode):
    """Every algorithm that trains on a generation method's images (``algorithms.SyntheticERM``)."""
    # "" means <data_dir>/synthetic, where `python -m offline_generation` writes by default.
    hp.define("synthetic_root", "", lambda r: "")
    hp.define("synthetic_weight", 1.0, lambda r: float(10 ** r.uniform(-0.5, 0.5)))
    # compute-matched by default (ERM's images per step), mixed as the method's paper trains (its spec's mode)
    hp.define("synthetic_mode", mode, lambda r: mode)
    leak_opt_in(hp)


def twins(hp, spec):
    """The hparams that choose among a generation method's images (its options' twins): the option's default,
    and its search distribution where it has one; and its opt-in to images guided toward the test env, off."""
    for option in spec.twins().values():
        hp.define(option.hparam, option.default, option.search or (lambda r, d=option.default: d))
    if spec.test_guides_hparam:  # CDGA's starred variant trains on pairs toward the test domain: not DG
        hp.define(spec.test_guides_hparam, False, lambda r: False)


def leak_opt_in(hp):
    """True lets a run use a diffusion model trained on its test env (``generators``): ablations only."""
    hp.define("UNSAFE_generator_saw_test_env", False, lambda r: False)


def miro(hp, dataset):
    # MIRO's per-dataset recipe (ResNet-50, no SWAD); its search grid for the regularisation weight.
    ld = {"PACS": 0.01, "VLCS": 0.01}.get(dataset, 0.1)
    hp.define("ld", ld, lambda r: float(r.choice([0.001, 0.01, 0.1, 1.0])))
    hp.define("lr_mult", 10.0, lambda r: 10.0)
    if dataset in PAPERS_DATASETS:
        i = PAPERS_DATASETS.index(dataset)
        hp.redefine("lr", [3e-5, 1e-5, 3e-5, 3e-5, 3e-5][i])
        hp.redefine("resnet_dropout", [0.0, 0.5, 0.1, 0.0, 0.1][i])
        hp.redefine("weight_decay", [0.0, 1e-6, 1e-6, 1e-4, 0.0][i])


def domainfusion(hp, dataset):
    cpu = dataset in CPU_DATASETS
    model = EMBEDDED if cpu else PAPERS_MODEL
    hp.define("diffusion_model", model, lambda r: model)
    hp.define("diffusion_dtype", "auto", lambda r: "auto")
    leak_opt_in(hp)
    hp.define("image_size", 32 if cpu else 320, lambda r: 32 if cpu else 320)
    hp.define("class_prompt", "a {}" if cpu else "a photo of a {}", lambda r: "a {}" if cpu else "a photo of a {}")
    hp.define("lambda_raw", 1.0, lambda r: 1.0)
    hp.define("lambda_gen", 1.0, lambda r: float(10 ** r.uniform(-1, 0.3)))
    hp.define("lambda_gsd", 1e-3, lambda r: float(10 ** r.uniform(-4, -2)))
    # On a CPU the UNet's jvp and the img2img refresh dominate the step: both run less often there.
    hp.define("gsd_every", 2 if cpu else 1, lambda r: 2 if cpu else 1)
    # images per diffusion call in GSD's derivative and the refresh: bounds their memory (docs/performance.md)
    chunk = 64 if cpu else 16
    hp.define("diffusion_chunk", chunk, lambda r: chunk)
    hp.define("gsd_t_min", 0.02, lambda r: 0.02)
    hp.define("gsd_t_max", 0.98, lambda r: 0.98)
    hp.define("gsd_weighting", "sds", lambda r: "sds")
    hp.define("gsd_guidance_scale", 1.0, lambda r: 1.0)
    hp.define("n_candidates", 2, lambda r: int(r.choice([1, 2, 5])))
    hp.define("sampling_strategy", True, lambda r: True)
    hp.define("content_lambda", 0.5, lambda r: float(r.uniform(0.0, 1.0)))
    # the paper refreshes the images each step draws (its Fig. 3); on DigitStyles' 151 steps that would leave most
    # of the set real, so there a cycle regenerates the whole set every 120 steps
    hp.define("refresh_order", "cycle" if cpu else "drawn", lambda r: "cycle" if cpu else "drawn")
    hp.define("refresh_every", 5 if cpu else 1, lambda r: 5 if cpu else int(r.choice([1, 2, 5])))
    hp.define("turnover_steps", 120, lambda r: 120)
    hp.define("img2img_steps", 10 if cpu else 50, lambda r: 10 if cpu else 50)
    hp.define("img2img_strength", 0.6 if cpu else 0.8, lambda r: float(r.uniform(0.4, 0.8)))
    hp.define("guidance_scale", 3.0 if cpu else 7.5, lambda r: 3.0 if cpu else 7.5)
    hp.define("lr_schedule", "cosine", lambda r: "cosine")
    # where the refreshed images are kept (a file of up to tens of GB on DomainNet): "" is the run's output folder
    hp.define("spill_dir", "", lambda r: "")
    if fusion_batch_size(dataset):
        hp.redefine("batch_size", fusion_batch_size(dataset))


def fusion_batch_size(dataset):
    """DomainFusion's real images per env and step on the papers' datasets (None: the dataset's default)."""
    if dataset in PAPERS_DATASETS:
        return 8 if dataset == "DomainNet" else 16
    return None


def fusion_matched(hp, dataset):
    """ERM_FusionMatched: DomainFusion's schedule, and its real plus synthetic images per step, all real."""
    hp.define("lr_schedule", "cosine", lambda r: "cosine")
    real = fusion_batch_size(dataset) or hp.hparams["batch_size"][0]
    hp.redefine("batch_size", 2 * real, lambda r: 2 * real)


def erm_augment(hp, dataset):
    hp.define("augment_flip", False, lambda r: False)


def real_matched(hp, dataset):
    hp.define("real_share", 1 / 3, lambda r: 1 / 3)

