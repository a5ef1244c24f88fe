"""The GPU cost of the papers' protocol, from FLOPs counted on the meta device: no GPU, no weights, no download.

Stable Diffusion v1-4's UNet and VAE (and ResNet-50, DomainBed's featurizer) are built on ``torch.device("meta")``
and ``torch.utils.flop_counter`` counts one call at the shapes a method uses; each method's spec turns those into
the FLOPs of one output image (``Runner.flops``) and says how many images it makes (``Runner.outputs_per_source``,
once per trial for the methods fitted on a split). DomainFusion's step is counted from the registry's hparams for
the dataset: the classifier on its real and synthetic minibatches, GSD (the VAE encoder's forward-mode derivative
and one UNet call per real image) every ``gsd_every`` steps, and the refresh (``n_candidates`` img2img runs of each
drawn image, their decoding and scoring) every ``refresh_every`` steps. Hours assume a sustained fraction of a GPU's
dense bfloat16 peak (``Assumptions``): an estimate to plan with, which ``sweeps/first_gpu_run.py`` checks on the
user's GPU.
"""
from dataclasses import dataclass

import torch

from domainbed_diffusion import catalogue

# DomainBed's datasets: images, envs and training steps (its N_STEPS; DomainBed runs every dataset 5,001 steps)
DATASETS = {"PACS": (9991, 4), "VLCS": (10729, 4), "OfficeHome": (15588, 4), "TerraIncognita": (24788, 4),
            "DomainNet": (586575, 6)}
STEPS = 5001


@dataclass(frozen=True)
class Assumptions:
    """What turns FLOPs into hours."""
    gpu: str = "H100"
    peak_tflops: float = 989.4  # dense bf16 tensor-core peak
    utilization: float = 0.4  # sustained fraction of it: batched, compiled bf16 UNet inference reaches this
    trials: int = 3  # the sweep's trials (the per-trial draws of CDGA-IG and latent-prior, and the runs)
    holdout_fraction: float = 0.2
    n_hparams: int = 1

    def hours(self, flop):
        return flop / (self.peak_tflops * 1e12 * self.utilization) / 3600


def sd14_on_meta():
    """SD v1-4's UNet and VAE at their configs, on the meta device."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .throughput import SD14_UNET, SD14_VAE
    with torch.device("meta"):
        return UNet2DConditionModel(**SD14_UNET).eval(), AutoencoderKL(**SD14_VAE).eval()


def _count(fn):
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def diffusion_flops(unet, vae, resolution, guided_unet=False):
    """FLOPs of one image: a UNet call, a VAE encode, a decode, and the encode's forward-mode derivative (GSD)."""
    side = resolution // 8
    z = torch.zeros(1, 4, side, side, device="meta")
    x = torch.zeros(1, 3, resolution, resolution, device="meta")
    cond = torch.zeros(1, 77, 768, device="meta")
    t = torch.zeros(1, device="meta", dtype=torch.long)
    with torch.no_grad():
        out = dict(unet=_count(lambda: unet(z, t, encoder_hidden_states=cond)),
                   encode=_count(lambda: vae.encode(x).latent_dist.mean),
                   decode=_count(lambda: vae.decode(z).sample))
        p = torch.ones(1, device="meta")
        out["encode_jvp"] = _count(lambda: torch.func.jvp(lambda s: vae.encode(s.view(-1, 1, 1, 1) * x)
                                                          .latent_dist.mean, (p,), (torch.ones_like(p),)))
    return out


def resnet50_flops(size=224):
    """ResNet-50's forward and forward + backward on one image."""
    import torchvision
    with torch.device("meta"):
        net = torchvision.models.resnet50()
    x = torch.zeros(1, 3, size, size, device="meta")
    forward = _count(lambda: net(x))
    x = x.requires_grad_(False)
    both = _count(lambda: net(x).sum().backward())
    return dict(forward=forward, train=both)


def generation_table(dataset, assumptions=Assumptions(), overrides=None):
    """``[(method, images, TFLOP per image, GPU-hours)]`` of each method's synthetic domains of ``dataset`` at its
    paper's settings (its spec's defaults, ``overrides`` ``{method: {setting: value}}`` over them)."""
    images, envs = DATASETS[dataset]
    unet, vae = sd14_on_meta()
    rows, counted = [], {}
    for method in catalogue.methods():
        spec = catalogue.spec(method)
        cfg = spec.config(False, dataset=dataset, **(overrides or {}).get(method, {}))
        if cfg.resolution not in counted:
            counted[cfg.resolution] = diffusion_flops(unet, vae, cfg.resolution)
        f = counted[cfg.resolution]
        per_image = spec.runner.flops(cfg, f["unet"], f["encode"], f["decode"])
        draws = assumptions.trials * (1 - assumptions.holdout_fraction) if cfg.per_trial else 1
        n = round(images * spec.runner.outputs_per_source(cfg, envs) * draws)
        rows.append((method, n, per_image / 1e12, assumptions.hours(n * per_image)))
    return rows


def domainfusion_step(dataset, hparams, flops=None, resnet=None):
    """FLOPs of one DomainFusion step on ``dataset`` with ``hparams`` (the registry's, the sweep's over them),
    averaged over the steps (GSD every ``gsd_every``, a refresh every ``refresh_every``), split by part; and ERM's."""
    _, envs = DATASETS[dataset]
    size = hparams["image_size"]
    if flops is None:
        unet, vae = sd14_on_meta()
        flops = diffusion_flops(unet, vae, size)
    resnet = resnet or resnet50_flops()
    real = hparams["batch_size"] * (envs - 1)
    n = int(hparams["n_candidates"])
    guided = 2 if hparams["guidance_scale"] > 1 else 1
    denoise = int(hparams["img2img_steps"] * hparams["img2img_strength"])
    gsd_guided = 2 if hparams["gsd_guidance_scale"] > 1 else 1
    parts = {
        "classifier (real + synthetic)": 2 * real * resnet["train"],
        "GSD": real * (flops["encode_jvp"] + gsd_guided * flops["unet"]) / hparams["gsd_every"],
        "refresh": real * (flops["encode"] + n * (guided * denoise * flops["unet"] + flops["decode"])
                           + (n + 1) * resnet["forward"]) / hparams["refresh_every"],
    }
    erm = real * resnet["train"]
    return parts, erm


def domainfusion_table(dataset, hparams, assumptions=Assumptions()):
    """DomainFusion's cost per step and per run of ``dataset``, and the sweep's (test envs x trials x hparams)."""
    parts, erm = domainfusion_step(dataset, hparams)
    step = sum(parts.values())
    _, envs = DATASETS[dataset]
    runs = envs * assumptions.trials * assumptions.n_hparams
    return dict(parts={k: v / 1e12 for k, v in parts.items()}, step_tflop=step / 1e12, erm_step_tflop=erm / 1e12,
                step_seconds=assumptions.hours(step) * 3600, run_hours=assumptions.hours(step * STEPS), runs=runs,
                sweep_hours=assumptions.hours(step * STEPS * runs))


def text(dataset, hparams, assumptions=Assumptions(), overrides=None):
    """The cost table of ``dataset`` as lines."""
    a = assumptions
    lines = [f"{dataset}: GPU cost from FLOPs counted on the meta device (SD v1-4, ResNet-50), at {a.utilization:.0%} "
             f"of one {a.gpu}'s {a.peak_tflops:g} TFLOP/s dense bf16 peak; {a.trials} trials, holdout "
             f"{a.holdout_fraction:g}, {a.n_hparams} hparams set(s); DomainBed's {STEPS} steps per run.",
             f"{'method':<14}{'images':>10}{'TFLOP/image':>13}{'GPU-hours':>11}"]
    for method, n, tflop, hours in generation_table(dataset, a, overrides):
        lines.append(f"{method:<14}{n:>10,}{tflop:>13.2f}{hours:>11.2f}")
    df = domainfusion_table(dataset, hparams, a)
    lines.append(f"DomainFusion: {df['step_tflop']:.0f} TFLOP per step (ERM's {df['erm_step_tflop']:.2f}), "
                 + ", ".join(f"{k} {v:.1f}" for k, v in df["parts"].items())
                 + f"; {df['step_seconds']:.2f} s per step, {df['run_hours']:.1f} GPU-hours per run, "
                   f"{df['sweep_hours']:.0f} for its {df['runs']} runs (refresh every {hparams['refresh_every']} "
                   f"step(s), {hparams['n_candidates']} candidates, {hparams['img2img_steps']} steps at strength "
                   f"{hparams['img2img_strength']}, guidance {hparams['guidance_scale']}, {hparams['image_size']} px, "
                   f"batch {hparams['batch_size']} per env)")
    return lines


def domainfusion_hparams(dataset, sweep_hparams=None):
    """DomainFusion's hparams of a papers' run: the registry's defaults, the sweep's over them."""
    from domainbed import hparams_registry
    return dict(hparams_registry.default_hparams("DomainFusion", dataset), **(sweep_hparams or {}))

