"""Hyperparameters of the plugin's algorithms and datasets, in DomainBed's registry convention.

``extend`` runs after DomainBed's own ``_hparams`` and adds to its dict of ``(default, random)`` pairs: every
random value comes from a RandomState seeded by ``(random_seed, name)``, so a random search is deterministic.
DomainBed's entries are left as they are for DomainBed's datasets; DigitStyles, a dataset of ours, sets the
optimisation basics (lr, batch size, weight decay) for every algorithm, as DomainBed does for its small images.
"""
import hashlib

import numpy as np

from .digitstyles import DATASET as DIGITSTYLES

ALGORITHMS = ["MIRO", "CDGA_PG", "CDGA_IG", "EDSAM", "LatentPrior", "DomainFusion"]
SYNTHETIC_ALGORITHMS = ["CDGA_PG", "CDGA_IG", "EDSAM", "LatentPrior"]
# CDGA: ERM on the union of real and synthetic images; ED-SAM: Eq. 11's equal real and synthetic terms; the
# latent-prior study trains no classifier, so its images are used as CDGA uses its own: added to the data.
SYNTHETIC_MODES = {"CDGA_PG": "union", "CDGA_IG": "union", "EDSAM": "balanced", "LatentPrior": "union"}
CPU_DATASETS = [DIGITSTYLES, "Debug28", "Debug224"]  # run with the embedded diffusion model
PAPERS_DATASETS = ["PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet"]
EMBEDDED_MODEL = "embedded"
PAPERS_MODEL = "CompVis/stable-diffusion-v1-4"


def seed_hash(*args):
    """A 31-bit integer hash of the arguments, stable across processes."""
    return int(hashlib.md5(str(args).encode("utf-8")).hexdigest(), 16) % (2 ** 31)


def extend(hparams, algorithm, dataset, random_seed):
    """Add the plugin's entries to DomainBed's ``{name: (default, random)}`` dict, in place."""

    def _hparam(name, default_val, random_val_fn):
        assert name not in hparams, name
        random_state = np.random.RandomState(seed_hash(random_seed, name))
        hparams[name] = (default_val, random_val_fn(random_state))

    def _redefine(name, default_val, random_val_fn=None):
        """Replace an entry DomainBed defined; keep DomainBed's random value unless a new one is given."""
        if random_val_fn is None:
            hparams[name] = (default_val, hparams[name][1])
        else:
            del hparams[name]
            _hparam(name, default_val, random_val_fn)

    # Dataset-wide definitions for our datasets (every algorithm, DomainBed's included).
    if dataset == DIGITSTYLES:
        _redefine("lr", 1e-3, lambda r: 10 ** r.uniform(-4.5, -2.5))  # DomainBed's small-image default
        _redefine("weight_decay", 0.0, lambda r: 0.0)
        _redefine("batch_size", 8, lambda r: int(2 ** r.uniform(3, 4.5)))
        # every algorithm starts from the featurizer pretrained on styles outside the benchmark (``pretrained``)
        _hparam("pretrained_featurizer", "embedded", lambda r: "embedded")
        _hparam("channels_last", True, lambda r: True)  # CPU speed only (``networks``)

    if algorithm == "MIRO":
        # MIRO's per-dataset recipe (ResNet-50, no SWAD); its search grid for the regularisation weight.
        ld = {"PACS": 0.01, "VLCS": 0.01}.get(dataset, 0.1)
        _hparam("ld", ld, lambda r: float(r.choice([0.001, 0.01, 0.1, 1.0])))
        _hparam("lr_mult", 10.0, lambda r: 10.0)
        if dataset in PAPERS_DATASETS:
            i = PAPERS_DATASETS.index(dataset)
            _redefine("lr", [3e-5, 1e-5, 3e-5, 3e-5, 3e-5][i])
            _redefine("resnet_dropout", [0.0, 0.5, 0.1, 0.0, 0.1][i])
            _redefine("weight_decay", [0.0, 1e-6, 1e-6, 1e-4, 0.0][i])

    if algorithm in SYNTHETIC_ALGORITHMS:
        # "" means <data_dir>/synthetic, where `python -m offline_generation` writes by default.
        _hparam("synthetic_root", "", lambda r: "")
        _hparam("synthetic_weight", 1.0, lambda r: float(10 ** r.uniform(-0.5, 0.5)))
        # compute-matched by default (ERM's images per step), mixed as each paper trains (see SyntheticERM)
        mode = SYNTHETIC_MODES[algorithm]
        _hparam("synthetic_mode", mode, lambda r: mode)

    if algorithm in ("CDGA_PG", "CDGA_IG"):
        _hparam("cdga_images_per_pair", 1, lambda r: 1)
        # CDGA's starred variant trains on pairs toward the test domain: uses test-domain information.
        _hparam("cdga_star_uses_test_domain", False, lambda r: False)

    if algorithm == "EDSAM":
        _hparam("edsam_rho", 0.5, lambda r: 0.5)
        _hparam("edsam_m", 10, lambda r: int(r.choice([3, 5, 10])))

    if algorithm == "DomainFusion":
        cpu = dataset in CPU_DATASETS
        _hparam("diffusion_model", EMBEDDED_MODEL if cpu else PAPERS_MODEL,
                lambda r: EMBEDDED_MODEL if cpu else PAPERS_MODEL)
        _hparam("diffusion_dtype", "auto", lambda r: "auto")
        _hparam("image_size", 32 if cpu else 320, lambda r: 32 if cpu else 320)
        _hparam("class_prompt", "a {}" if cpu else "a photo of a {}", lambda r: "a {}" if cpu else "a photo of a {}")
        _hparam("lambda_raw", 1.0, lambda r: 1.0)
        _hparam("lambda_gen", 1.0, lambda r: float(10 ** r.uniform(-1, 0.3)))
        _hparam("lambda_gsd", 1e-3, lambda r: float(10 ** r.uniform(-4, -2)))
        # On a CPU the UNet's jvp and the img2img refresh dominate the step: both run less often there.
        _hparam("gsd_every", 2 if cpu else 1, lambda r: 2 if cpu else 1)
        _hparam("gsd_t_min", 0.02, lambda r: 0.02)
        _hparam("gsd_t_max", 0.98, lambda r: 0.98)
        _hparam("gsd_weighting", "sds", lambda r: "sds")
        _hparam("gsd_guidance_scale", 1.0, lambda r: 1.0)
        _hparam("n_candidates", 2, lambda r: int(r.choice([1, 2, 5])))
        _hparam("sampling_strategy", True, lambda r: True)
        _hparam("content_lambda", 0.5, lambda r: float(r.uniform(0.0, 1.0)))
        _hparam("refresh_every", 20 if cpu else 10, lambda r: int(r.choice([1, 5, 10, 20])))
        _hparam("img2img_steps", 10 if cpu else 50, lambda r: 10 if cpu else 50)
        _hparam("img2img_strength", 0.6 if cpu else 0.8, lambda r: float(r.uniform(0.4, 0.8)))
        _hparam("guidance_scale", 3.0 if cpu else 7.5, lambda r: 3.0 if cpu else 7.5)
        _hparam("lr_schedule", "cosine", lambda r: "cosine")
        if dataset in PAPERS_DATASETS:
            _redefine("batch_size", 8 if dataset == "DomainNet" else 16)
