"""The generation methods, each defined once: a ``Method`` (what images it makes and how a batch of them is made
from pixels) and its ``MethodSpec`` (name, algorithm, sampling defaults, options). The generator's command line,
the in-memory synthesis for DomainBed's Debug datasets, the benchmark, the sweeps and the tests all read
``SPECS``; the math is in ``methods/``, the diffusion operations in ``LatentDiffusion``.

A plan is a stream of units in a fixed order (one source image for CDGA, a source image and its M samples for
ED-SAM, an (env, class) group for latent-prior), generated as it is consumed: a DomainNet plan is millions of
images and is never held whole. Every output image has a seed derived from its own path, so what it looks like
depends neither on the batch it was made in nor on the shard that made it.

Sources are any object with ``name``, ``images`` (``SourceImage`` list), ``by_env_class``, ``class_names`` and
``load(rel_paths, resolution, report) -> (pixels (B, 3, R, R) in [0, 1] or None, indices read)``: the generator's
dataset folder, or ``TensorSources`` for tensors.

Adding a method: its math module in ``methods/``, a ``Method`` subclass and a ``MethodSpec`` here, its algorithm
class in ``algorithms`` and its hparams in ``hparams_registry``.
"""
import itertools
import os
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from . import splits
from .hparams_registry import seed_hash
from .methods import cdga, edsam, latent_prior
from .synthetic import env_folder, safe_name


@dataclass(frozen=True)
class SourceImage:
    env: str
    class_name: str
    rel_path: str  # relative to the dataset folder: "<env>/<class>/<file>"


@dataclass
class Item:
    """One output image and its provenance (becomes one manifest record)."""
    file: str
    method: str
    source_env: str
    class_name: str
    seed: int
    sample: int = 0
    source: Optional[str] = None
    guide_env: Optional[str] = None
    guide: Optional[str] = None
    prompt: str = ""
    params: dict = field(default_factory=dict)


@dataclass
class Unit:
    """Items made together: their source image(s) are loaded and encoded once."""
    items: List[Item]
    key: str
    references: Tuple[str, ...] = ()  # the images a method fits on (latent-prior's prior), when not the key
    domain: Tuple[str, Tuple[Tuple[str, str], ...]] = ()  # latent-prior: (key, ((image, prompt), ...)) of its domain

    @property
    def size(self):
        return len(self.items)


def make_batches(units, batch_size):
    """Consecutive units packed into batches of at most ``batch_size`` images (a unit is never split); a
    generator, so a plan of millions of images is never held whole."""
    current, size = [], 0
    for unit in units:
        if current and size + unit.size > batch_size:
            yield current
            current, size = [], 0
        current.append(unit)
        size += unit.size
    if current:
        yield current


def to_uint8(images):
    return (images.permute(0, 2, 3, 1).float().cpu().numpy() * 255 + 0.5).astype(np.uint8)


def _stem(rel_path):
    return safe_name(os.path.splitext(os.path.basename(rel_path))[0])


def _file(method, source_env, guide_env, class_name, name):
    return f"{env_folder(method, source_env, guide_env)}/{safe_name(class_name)}/{name}.png"


class Method:
    """A generation method's orchestration: ``plan`` yields units, ``run`` makes a batch of them."""
    name = ""
    units_per_batch = None  # None: as many as fit in the batch size
    min_references = 1  # source images an (env, class) needs before the method can use it

    def __init__(self, cfg):
        self.cfg = cfg  # a namespace of this method's resolved settings (``MethodSpec.config``)

    def seed(self, *keys):
        return seed_hash(self.cfg.seed, self.name, self.cfg.dataset, *keys)

    def params(self):
        c = self.cfg
        return dict(steps=c.steps, strength=c.strength, guidance=c.guidance, resolution=c.resolution)

    def plan(self, sources, envs):
        """Yield the units of work in a fixed order."""
        raise NotImplementedError

    def run(self, model, units, sources, report):
        """``[(item, uint8 HxWx3 image)]`` for the units' items; unreadable sources are reported and skipped."""
        raise NotImplementedError

    @staticmethod
    def images_per_source(cfg):
        return 1

    @staticmethod
    def flops(cfg, unet, encode, decode):
        """UNet + VAE FLOPs of one output image, from one UNet call's and one encode's and decode's."""
        raise NotImplementedError

    def encode_sources(self, model, units, sources, report):
        """The units whose source image could be read, and those images' VAE latents (one per unit)."""
        pixels, ok = sources.load([u.key for u in units], self.cfg.resolution, report)
        if pixels is None:
            return [], None
        return [units[i] for i in ok], model.encode_images(pixels.to(model.device))


class CDGAPromptGuidedMethod(Method):
    """CDGA-PG: img2img of each image of env i toward every other env j, prompted with env j's description."""
    name = "cdga-pg"

    def plan(self, sources, envs):
        descriptions = cdga.load_descriptions(sources.name, envs, self.cfg.domain_descriptions)
        return self.pair_units(sources, envs, lambda image, guide_env, k: dict(
            prompt=cdga.pg_prompt(image.class_name, descriptions[guide_env], self.cfg.prompt_template)))

    def pair_units(self, sources, envs, guidance):
        """One unit per source image of ``envs`` with an item per (other env, k); ``guidance`` gives an item's
        prompt/guide fields, or None where there is nothing to guide it with."""
        for image in sources.images:
            if image.env not in envs:
                continue
            items = []
            for guide_env in envs:
                for k in range(self.cfg.images_per_pair if guide_env != image.env else 0):
                    fields = guidance(image, guide_env, k)
                    if fields is not None:
                        items.append(Item(
                            file=_file(self.name, image.env, guide_env, image.class_name,
                                       f"{_stem(image.rel_path)}_{k}"),
                            method=self.name, source_env=image.env, class_name=image.class_name, sample=k,
                            seed=self.seed(image.rel_path, guide_env, k), source=image.rel_path,
                            guide_env=guide_env, params=self.params(), **fields))
            if items:
                yield Unit(items, image.rel_path)

    def run(self, model, units, sources, report):
        units, latents = self.encode_sources(model, units, sources, report)  # once per source, then one per item
        if not units:
            return []
        items = [item for u in units for item in u.items]
        latents = latents.repeat_interleave(torch.tensor([u.size for u in units], device=latents.device), 0)
        items, images = self.make(model, latents, items, sources, report)
        return list(zip(items, to_uint8(images)))

    def make(self, model, latents, items, sources, report):
        c = self.cfg
        return items, cdga.prompt_guided(model, latents, [it.prompt for it in items], [it.seed for it in items],
                                         c.strength, c.steps, c.guidance)

    @staticmethod
    def flops(cfg, unet, encode, decode):
        guided = 2 if cfg.guidance > 1 else 1  # classifier-free guidance doubles the UNet batch
        return guided * int(cfg.steps * cfg.strength) * unet + encode + decode


class CDGAImageGuidedMethod(CDGAPromptGuidedMethod):
    """CDGA-IG: the same pairs, guided by a same-class image of env j (latent AdaIN, see ``methods.cdga``)."""
    name = "cdga-ig"

    def params(self):
        return dict(super().params(), guide_mix=self.cfg.guide_mix, holdout_fraction=self.cfg.holdout_fraction)

    def plan(self, sources, envs):
        """Guides are drawn from the images in the training split of every planned trial, so a run of any of
        those trials loses no pair to a guide in its validation split."""
        validation = sources.validation(self.cfg.trial_seeds, self.cfg.holdout_fraction)
        pools = {}  # (env, class) -> its usable guide paths, sorted once

        def guidance(image, guide_env, k):
            key = (guide_env, image.class_name)
            if key not in pools:
                pools[key] = sorted(g.rel_path for g in sources.by_env_class.get(key, [])
                                    if not any(g.rel_path in v[guide_env] for v in validation.values()))
            guide = cdga.choose_guide(pools[key], f"{self.cfg.seed}|{image.rel_path}|{guide_env}|{k}",
                                      presorted=True)
            # env j may have no (usable) image of this class: no item then
            return None if guide is None else dict(guide=guide, prompt=cdga.class_prompt(image.class_name))
        return self.pair_units(sources, envs, guidance)

    def make(self, model, latents, items, sources, report):
        guides, ok = sources.load([it.guide for it in items], self.cfg.resolution, report)
        if guides is None:
            return [], torch.zeros(0, 3, self.cfg.resolution, self.cfg.resolution)
        c = self.cfg
        items = [items[i] for i in ok]
        guide_latents = model.encode_images(guides.to(model.device))
        return items, cdga.image_guided(model, latents[ok], guide_latents, [it.prompt for it in items],
                                        [it.seed for it in items], c.strength, c.steps, c.guidance, c.guide_mix)

    @staticmethod
    def flops(cfg, unet, encode, decode):
        return CDGAPromptGuidedMethod.flops(cfg, unet, encode, decode) + encode  # the guide's encoding


class EDSAMMethod(Method):
    """ED-SAM: DDIM-invert each image with its class prompt, transport the latent M times, regenerate."""
    name = "edsam"

    def params(self):
        return dict(steps=self.cfg.steps, guidance=self.cfg.guidance, resolution=self.cfg.resolution,
                    rho=self.cfg.rho, num_samples=self.cfg.num_samples)

    def plan(self, sources, envs):
        for image in sources.images:
            if image.env not in envs:
                continue
            items = [Item(file=_file(self.name, image.env, None, image.class_name, f"{_stem(image.rel_path)}_{m}"),
                          method=self.name, source_env=image.env, class_name=image.class_name, sample=m,
                          seed=self.seed(image.rel_path, m), source=image.rel_path,
                          prompt=cdga.class_prompt(image.class_name), params=self.params())
                     for m in range(self.cfg.num_samples)]
            yield Unit(items, image.rel_path)

    def run(self, model, units, sources, report):
        units, latents = self.encode_sources(model, units, sources, report)
        if not units:
            return []
        images, alpha = edsam.generate(model, latents, [u.items[0].prompt for u in units],
                                       [[it.seed for it in u.items] for u in units], self.cfg.rho, self.cfg.steps,
                                       self.cfg.guidance)
        items = [item for u in units for item in u.items]
        for item, a in zip(items, alpha.tolist()):
            item.params = dict(item.params, alpha=round(a, 6))
        return list(zip(items, to_uint8(images)))

    @staticmethod
    def images_per_source(cfg):
        return cfg.num_samples

    @staticmethod
    def flops(cfg, unet, encode, decode):
        guided = 2 if cfg.guidance > 1 else 1
        return (cfg.steps * unet + encode) / cfg.num_samples + guided * cfg.steps * unet + decode  # shared inversion


class LatentPriorMethod(Method):
    """Latent-prior sampling: per (env, class), a Gaussian prior of the inverted latents, geometric rejection,
    DDIM denoising within the bandwidth."""
    name = "latent-prior"
    units_per_batch = 1  # one (env, class) group at a time: its references set the prior
    min_references = 3  # a prior and its geometry need at least three references

    def __init__(self, cfg):
        super().__init__(cfg)
        self._bandwidths = {}  # per (trial, env): the same value whichever group, shard or resumed run asks first

    def params(self):
        c = self.cfg
        return dict(steps=c.steps, mix_steps=self.mix_steps, guidance=c.guidance, resolution=c.resolution,
                    tolerance=list(c.tolerance), bandwidth_references=c.bandwidth_references)

    @property
    def mix_steps(self):
        return max(1, min(self.cfg.steps, round(self.cfg.mix_fraction * self.cfg.steps)))

    def plan(self, sources, envs):
        """Per planned trial, per (env, class): a prior fitted on that trial's training split only, so no
        validation image shapes what a run of that trial trains on; records carry the split's digest."""
        c = self.cfg
        for trial, validation in sources.validation(c.trial_seeds, c.holdout_fraction).items():
            for env in envs:
                split = dict(holdout_fraction=c.holdout_fraction, validation_digest=splits.digest(validation[env]))
                if trial is not None:
                    split["trial_seed"] = trial
                scope = () if trial is None else (trial,)  # None: tensors that are the run's own split
                training = {name: [r.rel_path for r in sources.by_env_class.get((env, name), [])
                                   if r.rel_path not in validation[env]] for name in sources.class_names}
                domain = ("/".join([*(f"trial{t}" for t in scope), env]),
                          self.domain_references(training, c.bandwidth_references))
                for class_name in sources.class_names:
                    refs = training[class_name]
                    if len(refs) < self.min_references:
                        continue
                    key = "/".join([*(f"trial{t}" for t in scope), env, class_name])
                    prefix = "".join(f"t{t}_" for t in scope) + "prior"
                    n = max(1, round(c.samples_per_image * len(refs)))
                    items = [Item(file=_file(self.name, env, None, class_name, f"{prefix}_{k:06d}"),
                                  method=self.name, source_env=env, class_name=class_name, sample=k,
                                  seed=self.seed(*scope, env, class_name, k), prompt=cdga.class_prompt(class_name),
                                  params=dict(self.params(), **split))
                             for k in range(n)]
                    yield Unit(items, key, tuple(refs), domain)

    @staticmethod
    def domain_references(training, n):
        """Up to ``n`` of a domain's training images, class by class in turn, with their class prompts."""
        queues = [[(path, cdga.class_prompt(name)) for path in paths] for name, paths in training.items()]
        picked = [pair for row in itertools.zip_longest(*queues) for pair in row if pair is not None]
        return tuple(picked[:n])

    def bandwidth(self, model, unit, sources, report):
        """The domain's ``B_eta`` (``--bandwidth auto``), estimated once on its ``domain_references``."""
        key, pairs = unit.domain
        if key not in self._bandwidths:
            c = self.cfg
            pixels, ok = sources.load([path for path, _ in pairs], c.resolution, report)
            if pixels is None:
                raise ValueError(f"latent-prior: no readable image in {key} to estimate its bandwidth from; fix "
                                 f"the images reported above or give one with --bandwidth ETA")
            from .diffusion.pipeline import generators_from_seeds
            self._bandwidths[key] = latent_prior.domain_bandwidth(
                model, pixels, [pairs[i][1] for i in ok], c.steps, self.mix_steps,
                generators_from_seeds([self.seed(key, "bandwidth", i) for i in ok]), c.batch_size)
            report(f"latent-prior {key}: bandwidth eta={self._bandwidths[key]} from {len(ok)} images", level="info")
        return self._bandwidths[key]

    def run(self, model, units, sources, report):
        results = []
        for unit in units:
            results += self.run_group(model, unit, sources, report)
        return results

    def run_group(self, model, unit, sources, report):
        first = unit.items[0]
        pixels, ok = sources.load(list(unit.references), self.cfg.resolution, report)
        if pixels is None or len(ok) < self.min_references:
            report(f"latent-prior: fewer than {self.min_references} readable images in {unit.key}, skipped")
            return []
        c = self.cfg
        eta = self.bandwidth(model, unit, sources, report) if c.bandwidth == "auto" else c.bandwidth
        samples = latent_prior.generate(model, pixels, first.prompt, len(unit.items),
                                        lambda k: self.seed(unit.key, "candidate", k), c.steps, self.mix_steps,
                                        c.guidance, eta, c.tolerance, c.max_tries, c.batch_size)
        report(f"latent-prior {unit.key}: accepted {len(samples.seeds)}/{samples.tried} candidates "
               f"({samples.acceptance_rate:.0%}), bandwidth eta={samples.eta}", level="info")
        items = unit.items[:len(samples.seeds)]
        for item in items:
            item.params = dict(item.params, eta=samples.eta, acceptance_rate=round(samples.acceptance_rate, 4))
        return list(zip(items, to_uint8(samples.images)))

    @staticmethod
    def flops(cfg, unet, encode, decode):
        mix = max(1, round(cfg.mix_fraction * cfg.steps))
        guided = 2 if cfg.guidance > 1 else 1
        return (mix * unet + encode) + guided * mix * unet + decode  # one inversion per reference, one output each


# -- specs ---------------------------------------------------------------------------------------------------
def bandwidth(value):
    """``--bandwidth``: DDIM's eta, or ``auto``."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--bandwidth {value!r}: a number (DDIM eta) or 'auto'") from None


@dataclass(frozen=True)
class Option:
    """A method's setting: a command-line flag of the generator, with its default."""
    name: str
    default: Any
    type: Callable = str
    help: str = ""
    nargs: Any = None


@dataclass(frozen=True)
class MethodSpec:
    name: str  # the generator's --methods name and the manifests' "method"
    algorithm: str  # the DomainBed algorithm that trains on its images
    method: type  # its Method subclass
    sampling: Dict[str, Any]  # steps, strength, guidance, resolution: the paper's
    embedded_sampling: Dict[str, Any]  # the same for the embedded DigitStyles model (32 px)
    options: Tuple[Option, ...] = ()
    fixed: Dict[str, Any] = field(default_factory=dict)  # settings the method does not take from the command line

    def config(self, embedded=False, **given):
        """The method's settings: ``given`` values (None: not given) over its defaults for the model in use."""
        cfg = SimpleNamespace(seed=0, dataset="", batch_size=32)
        defaults = dict(self.embedded_sampling if embedded else self.sampling)
        defaults.update((o.name, o.default) for o in self.options)
        for key, value in given.items():
            setattr(cfg, key, value)
        for key, value in defaults.items():
            if getattr(cfg, key, None) is None:
                setattr(cfg, key, value)
        for key, value in self.fixed.items():
            setattr(cfg, key, value)
        if isinstance(getattr(cfg, "tolerance", None), list):
            cfg.tolerance = tuple(cfg.tolerance)
        return cfg

    def make(self, cfg):
        return self.method(cfg)


IMAGES_PER_PAIR = Option("images_per_pair", 1, int, "CDGA: images per (source image, other env)")
# DomainBed's train/validation split of the trials a sweep will run: what a method fits on an env comes from it
TRIAL_SEEDS = Option("trial_seeds", list(splits.TRIAL_SEEDS), int, "CDGA-IG, latent-prior: the sweep's trial "
                     "seeds, whose train/validation splits guides and priors must respect", nargs="+")
HOLDOUT_FRACTION = Option("holdout_fraction", splits.HOLDOUT_FRACTION, float, "CDGA-IG, latent-prior: the "
                          "train script's --holdout_fraction")
# Sampling: the papers' where they say (ED-SAM: 10 DDIM steps at 256 px; CDGA: SD's img2img defaults at about
# DomainBed's input size), and small ones for the embedded DigitStyles model.
CDGA_SAMPLING = dict(steps=50, strength=0.75, guidance=7.5, resolution=256)
EMBEDDED_IMG2IMG = dict(steps=10, strength=0.6, guidance=3.0, resolution=32)
INVERSION_SAMPLING = dict(steps=10, strength=1.0, guidance=1.0, resolution=256)
EMBEDDED_INVERSION = dict(INVERSION_SAMPLING, resolution=32)

SPECS = {spec.name: spec for spec in (
    MethodSpec("cdga-pg", "CDGA_PG", CDGAPromptGuidedMethod, CDGA_SAMPLING, EMBEDDED_IMG2IMG, (
        IMAGES_PER_PAIR,
        Option("domain_descriptions", None, str, "CDGA-PG: env -> text, a JSON object or file"),
        Option("prompt_template", cdga.PROMPT_TEMPLATE, str, "CDGA-PG prompt template"))),
    MethodSpec("cdga-ig", "CDGA_IG", CDGAImageGuidedMethod, CDGA_SAMPLING, EMBEDDED_IMG2IMG, (
        IMAGES_PER_PAIR,
        Option("guide_mix", 1.0, float, "CDGA-IG: how far to move toward the guide's statistics"),
        TRIAL_SEEDS, HOLDOUT_FRACTION)),
    MethodSpec("edsam", "EDSAM", EDSAMMethod, INVERSION_SAMPLING, EMBEDDED_INVERSION, (
        Option("num_samples", 10, int, "ED-SAM: M samples per image"),
        Option("rho", 0.5, float, "ED-SAM: transport distance bound")), fixed=dict(strength=1.0)),
    MethodSpec("latent-prior", "LatentPrior", LatentPriorMethod, INVERSION_SAMPLING, EMBEDDED_INVERSION, (
        Option("mix_fraction", 0.8, float, "latent-prior: inversion depth (fraction of steps)"),
        Option("bandwidth", "auto", bandwidth, "latent-prior: DDIM eta when denoising, or 'auto' (one per domain)"),
        Option("bandwidth_references", 32, int, "latent-prior: images of a domain its 'auto' bandwidth is "
               "estimated on (classes in turn)"),
        Option("tolerance", latent_prior.DEFAULT_TOLERANCE, float, "latent-prior: tolerances of the pairwise "
               "distance (relative), the pairwise angle and the angle to origin (degrees)", nargs=3),
        Option("samples_per_image", 1.0, float, "latent-prior: images per reference image"),
        Option("max_tries", 20, int, "latent-prior: candidates drawn per wanted image, at most"),
        TRIAL_SEEDS, HOLDOUT_FRACTION),
        fixed=dict(strength=1.0)),
)}
METHODS = tuple(SPECS)


# -- tensors as sources --------------------------------------------------------------------------------------
class TensorSources:
    """Images held as tensors (DomainBed's Debug datasets), seen as a dataset folder: ``<env>/<class>/<k>``."""

    def __init__(self, name, pixels, labels, env_names, class_names):
        self.name, self.class_names = name, list(class_names)
        self.env_names = list(env_names)
        self.pixels, self.images, self.by_env_class = {}, [], {}
        for env, x, y in zip(env_names, pixels, labels):
            for k, (image, label) in enumerate(zip(x, y.tolist())):
                source = SourceImage(env, self.class_names[label], f"{env}/{self.class_names[label]}/{k:06d}")
                self.pixels[source.rel_path] = image
                self.images.append(source)
                self.by_env_class.setdefault((env, source.class_name), []).append(source)

    def validation(self, trial_seeds, holdout_fraction):
        """The tensors given are what the run trains on: one split, with nothing held out."""
        return {None: {env: set() for env in self.env_names}}

    def load(self, rel_paths, resolution, report):
        if not rel_paths:
            return None, []
        x = torch.stack([self.pixels[p] for p in rel_paths]).float()
        if x.shape[-1] != resolution:
            x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                                align_corners=False, antialias=True)
        return x.clamp(0, 1), list(range(len(rel_paths)))


def generate_in_memory(model, spec, cfg, sources, envs, report=lambda *a, **k: None):
    """Every image of ``spec``'s plan over ``sources``: ``{source env: (uint8 images (N, H, W, 3), items)}``."""
    method = spec.make(cfg)
    per_batch = method.units_per_batch or cfg.batch_size
    out = {}
    for batch in make_batches(method.plan(sources, envs), per_batch):
        for item, image in method.run(model, batch, sources, report):
            out.setdefault(item.source_env, []).append((item, image))
    return {env: (np.stack([i for _, i in pairs]), [it for it, _ in pairs]) for env, pairs in out.items()}
