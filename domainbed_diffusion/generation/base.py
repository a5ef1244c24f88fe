"""What every generation method shares: the plan's data model, batching, the ``Runner`` base class and the
``MethodSpec`` that names a method, its algorithm and its settings.

A plan is a stream of units in a fixed order (one source image for CDGA, a source image and its M samples for
ED-SAM, an (env, class) group for latent-prior), generated as it is consumed: a DomainNet plan is millions of
images and is never held whole. Every output image has a seed derived from its own path, so what it looks like
depends neither on the batch it was made in nor on the shard that made it.

Sources are any object with ``name``, ``images`` (``SourceImage`` list), ``by_env_class``, ``class_names``,
``validation(trial_seeds, holdout_fraction)`` and ``load(rel_paths, resolution, report) -> (pixels (B, 3, R, R)
in [0, 1] or None, indices read)``: the generator's dataset folder, or ``in_memory.TensorSources`` for tensors.
"""
import os
from functools import cached_property
from dataclasses import asdict, dataclass, field, fields, make_dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..data import splits
from ..data.seeding import seed_hash
from ..data.layout import env_folder, safe_name


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


def stem(rel_path):
    """A source image's file name without extension, folder-safe: the start of its outputs' names."""
    return safe_name(os.path.splitext(os.path.basename(rel_path))[0])


@dataclass(frozen=True)
class Fit:
    """The train/validation split a plan's images are made for: one planned trial's, or none (one draw that
    serves every trial; the reader then drops the images whose source is in a run's validation split)."""
    trial: Optional[int] = None
    validation: Optional[Dict[str, Any]] = None  # env -> validation image paths of that trial
    holdout_fraction: Optional[float] = None

    @property
    def keys(self):
        """What the trial adds to an image's seed keys (nothing for a shared draw, or tensors of one split)."""
        return () if self.trial is None else (self.trial,)

    @property
    def prefix(self):
        return "".join(f"t{t}_" for t in self.keys)

    def trains_on(self, image):
        return self.validation is None or image.rel_path not in self.validation.get(image.env, ())

    def params(self, env):
        """The split's fields of a record whose source env is ``env`` (the reader matches the digest)."""
        if self.validation is None:
            return {}
        split = dict(holdout_fraction=self.holdout_fraction, validation_digest=splits.digest(self.validation[env]))
        if self.trial is not None:
            split["trial_seed"] = self.trial
        return split


class Runner:
    """A generation method's orchestration: ``plan`` yields units, ``run`` makes a batch of them. The math it
    calls lives in ``domainbed_diffusion.methods``, shared with the algorithms. Its name (seeds, folders, records)
    is its spec's: one runner class can serve several specs."""
    units_per_batch = None  # None: as many as fit in the batch size
    min_references = 1  # source images an (env, class) needs before the method can use it

    def __init__(self, cfg):
        self.cfg = cfg  # this method's settings, typed and frozen (``MethodSpec.config``)

    @property
    def name(self):
        return self.cfg.method

    def seed(self, *keys):
        return seed_hash(self.cfg.seed, self.name, self.cfg.dataset, *keys)

    def params(self):
        c = self.cfg
        return dict(steps=c.steps, strength=c.strength, guidance=c.guidance, resolution=c.resolution)

    def fits(self, sources):
        """The splits to plan for: each planned trial's when made per trial, else one shared draw."""
        c = self.cfg
        if not c.per_trial:
            return [Fit()]
        return [Fit(trial, validation, c.holdout_fraction)
                for trial, validation in sources.validation(c.trial_seeds, c.holdout_fraction).items()]

    def source_units(self, sources, envs, items_of):
        """Per fit, one unit per source image of ``envs`` in its training split: ``items_of(image, fit)`` gives
        the unit's items (none: no unit)."""
        for fit in self.fits(sources):
            for image in sources.images:
                if image.env in envs and fit.trains_on(image):
                    items = items_of(image, fit)
                    if items:
                        yield Unit(items, image.rel_path)

    def item(self, source_env, class_name, name, seed_keys, guide_env=None, params=None, fit=Fit(), **fields):
        """The ``Item`` of one output image: its file under the method's env folder, its seed from ``seed_keys``
        (its path's parts), its parameters (``params()`` unless given) and provenance ``fields``; made for
        ``fit``'s trial, the trial prefixes its name and its seed keys, and its split is recorded."""
        name, seed_keys = fit.prefix + name, (*fit.keys, *seed_keys)
        params = dict(self.params() if params is None else params, **fit.params(source_env))
        file = f"{env_folder(self.name, source_env, guide_env)}/{safe_name(class_name)}/{name}.png"
        tag = self.cfg.model_tag
        if tag:  # one model per test env: each model's images in its own folder ("without-neon/...")
            file = f"{safe_name(tag)}/{file}"
        return Item(file=file, method=self.name, source_env=source_env, class_name=class_name,
                    seed=self.seed(*seed_keys), guide_env=guide_env, params=params, **fields)

    def plan(self, sources, envs):
        """Yield the units of work in a fixed order."""
        raise NotImplementedError

    def run(self, model, units, sources, report):
        """``[(item, uint8 HxWx3 image)]`` for the units' items; unreadable sources are reported and skipped."""
        raise NotImplementedError

    @staticmethod
    def images_per_source(cfg):
        return 1

    @classmethod
    def outputs_per_source(cls, cfg, n_envs):
        """Images the method makes from each source image of a dataset with ``n_envs`` envs (every env a source)."""
        return cls.images_per_source(cfg)

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


# How a run's hparam twin picks among the images made with several values of an option (``Option.select``):
# "count", the first N samples of each source (``sample < N``); "value", the images made at that value (a record
# without the parameter counts as made at it).
SELECT_RULES = ("count", "value")


@dataclass(frozen=True)
class Option:
    """A method's setting: its generator flag ``--<method>.<name>``, with its default, and where a run chooses among
    the images made with several values, its hparam twin (``hparam``; random search: ``search(random_state)``) and
    the rule by which the twin picks them (``select``, one of ``SELECT_RULES``)."""
    name: str
    default: Any
    type: Callable = str
    help: str = ""
    nargs: Any = None
    hparam: Optional[str] = None
    search: Optional[Callable] = None
    select: Optional[str] = None

    def __post_init__(self):
        if self.select not in (None, *SELECT_RULES):
            raise ValueError(f"Option {self.name}: select={self.select!r}, use one of {SELECT_RULES} or None")
        if self.select and not self.hparam:
            raise ValueError(f"Option {self.name}: select={self.select!r} needs the hparam a run chooses with")

    def mask(self, index, value):
        """The index rows a run whose twin hparam is ``value`` reads (``select``'s rule), or None: all."""
        if self.select == "count":
            return np.asarray(index.sample) < int(value)
        if self.select == "value":
            column = np.asarray(index.param(self.name), dtype=float)
            return np.isnan(column) | (np.abs(column - float(value)) < 1e-9)
        return None


# Settings every method's config has, whatever the method: ``(name, type, default)``.
COMMON_SETTINGS = (("method", str, ""), ("seed", int, 0), ("dataset", str, ""), ("batch_size", int, 32),
                   ("per_trial", bool, False), ("trial_seeds", tuple, None), ("holdout_fraction", float, None),
                   ("model_tag", Optional[str], None))
SAMPLING_SETTINGS = ("steps", "strength", "guidance", "resolution")


@dataclass(frozen=True)
class MethodSpec:
    """A generation method and the DomainBed algorithm that trains on its images: the catalogue's unit.

    The algorithm is a class named ``algorithm`` in ``domainbed_diffusion.algorithms`` (or in the module of the
    runner, for a method of another package) when it adds behaviour; otherwise ``registration`` derives
    ``SyntheticERM`` under that name, reading the images its options' twins select."""
    name: str  # the generator's --methods name and the manifests' "method"
    algorithm: str  # the DomainBed algorithm that trains on its images
    runner: type  # its Runner subclass
    sampling: Dict[str, Any]  # steps, strength, guidance, resolution: the paper's
    embedded_sampling: Dict[str, Any]  # the same for the embedded DigitStyles model (32 px)
    synthetic_mode: str = "union"  # how the algorithm mixes real and synthetic images (``training.mixing``)
    per_split: bool = False  # always made per trial (it fits on a split): a run uses only its own trial's images
    hparams: Optional[Callable] = None  # the algorithm's own hyperparameter block (``hparams_registry``)
    options: Tuple[Option, ...] = ()
    fixed: Dict[str, Any] = field(default_factory=dict)  # settings the method does not take from the command line
    control: bool = False  # a control of the ablation table, not a method: ``--methods all`` leaves it out
    read_against: Tuple[str, ...] = ()  # the controls its algorithm's row is read against (the ablation table)
    # settings over the defaults on DomainBed's Debug datasets (noise tensors, no files); a callable value is
    # given the training envs' names
    debug: Dict[str, Any] = field(default_factory=dict)
    # the hparam (False by default) that lets a run read images guided toward its test env: not DG, loudly named
    test_guides_hparam: Optional[str] = None

    @cached_property
    def config_class(self):
        """The frozen dataclass of this method's settings, made once per spec."""
        names = [k for k in SAMPLING_SETTINGS] + [o.name for o in self.options]
        names += [k for k in self.fixed if k not in names]
        settings = list(COMMON_SETTINGS) + [(k, Any, None) for k in names]
        name = "".join(part.capitalize() for part in self.name.replace("-", "_").split("_")) + "Config"
        return make_dataclass(name, [(n, t, field(default=d)) for n, t, d in settings], frozen=True)

    def settings(self):
        """The names of the settings its config has."""
        return tuple(f.name for f in fields(self.config_class))

    def config(self, embedded=False, **given):
        """The method's settings, typed and frozen: ``given`` values (None: not given) over its defaults for the
        model in use (the embedded model's or the paper's), with its ``fixed`` settings last. A name the method
        does not have is an error naming the method's settings."""
        cls = self.config_class
        unknown = sorted(set(given) - set(self.settings()))
        if unknown:
            raise TypeError(f"{self.name}: no setting {', '.join(unknown)}; its settings are "
                            f"{', '.join(self.settings())}")
        values = dict(self.embedded_sampling if embedded else self.sampling)
        values.update((o.name, o.default) for o in self.options)
        values.update((k, v) for k, v in given.items() if v is not None)
        values.update(self.fixed)
        values["method"] = self.name
        values["per_trial"] = bool(values.get("per_trial")) or self.per_split
        values["trial_seeds"] = tuple(splits.TRIAL_SEEDS if values.get("trial_seeds") is None
                                      else values["trial_seeds"])
        if values.get("holdout_fraction") is None:
            values["holdout_fraction"] = splits.HOLDOUT_FRACTION
        for o in self.options:  # options of several values (nargs) are tuples, so a config is hashable
            if isinstance(values.get(o.name), list):
                values[o.name] = tuple(values[o.name])
        return cls(**{k: v for k, v in values.items() if k in self.settings()})

    def make(self, cfg):
        return self.runner(cfg)

    def twins(self):
        """The options a run chooses with an hparam: ``{option name: Option}``."""
        return {o.name: o for o in self.options if o.hparam}

    def from_hparams(self, hparams):
        """``{option name: value}`` of the hparam twins in a run's ``hparams``."""
        return {name: o.type(hparams[o.hparam]) for name, o in self.twins().items()}

    def record_filter(self, hparams):
        """``index -> boolean mask`` of the images a run with ``hparams`` reads, by its twins' ``select`` rules;
        None when no twin selects."""
        rules = [(o, hparams[o.hparam]) for o in self.twins().values() if o.select]
        if not rules:
            return None

        def where(index):
            mask = np.ones(len(index), dtype=bool)
            for option, value in rules:
                mask &= option.mask(index, value)
            return mask
        return where

    def debug_settings(self, envs):
        """The settings this method takes on DomainBed's Debug datasets, for training envs ``envs``."""
        return {k: v(envs) if callable(v) else v for k, v in self.debug.items()}



def config_dict(cfg):
    """A config as JSON-ready values (what ``generate`` saves beside the manifests)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}


# Options and sampling shared by several methods.
IMAGES_PER_PAIR = Option("images_per_pair", 1, int, "CDGA: images per (source image, other env)",
                         hparam="cdga_images_per_pair", select="count")
# Sampling: the papers' where they say (ED-SAM: 10 DDIM steps at 256 px; CDGA: SD's img2img defaults at about
# DomainBed's input size), and small ones for the embedded DigitStyles model, at CDGA's strength for both CDGAs.
CDGA_SAMPLING = dict(steps=50, strength=0.75, guidance=7.5, resolution=256)
EMBEDDED_IMG2IMG = dict(steps=10, strength=0.75, guidance=3.0, resolution=32)
INVERSION_SAMPLING = dict(steps=10, strength=1.0, guidance=1.0, resolution=256)
EMBEDDED_INVERSION = dict(INVERSION_SAMPLING, resolution=32)
