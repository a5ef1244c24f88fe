"""Latent-prior sampling (Zhu et al., 2023): per (env, class), a Gaussian prior of the inverted latents,
geometric rejection, DDIM denoising within the domain's bandwidth (``methods.latent_prior``); ``LatentPrior``
trains on the union of real and synthetic images, each run on the images fitted on its own split."""
import itertools

from ..diffusion.pipeline import generators_from_seeds
from ..methods import cdga, latent_prior
from .base import EMBEDDED_INVERSION, INVERSION_SAMPLING, MethodSpec, Option, Runner, Unit, to_uint8


def bandwidth(value):
    """``--bandwidth``: DDIM's eta, or ``auto``."""
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"--bandwidth {value!r}: a number (DDIM eta) or 'auto'") from None


class LatentPriorRunner(Runner):
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
        for fit in self.fits(sources):
            scope = [f"trial{t}" for t in fit.keys]  # none: tensors that are the run's own split
            for env in envs:
                training = {name: [r.rel_path for r in sources.by_env_class.get((env, name), []) if fit.trains_on(r)]
                            for name in sources.class_names}
                domain = ("/".join([*scope, env]), self.domain_references(training, c.bandwidth_references))
                for class_name in sources.class_names:
                    refs = training[class_name]
                    if len(refs) < self.min_references:
                        continue
                    n = max(1, round(c.samples_per_image * len(refs)))
                    items = [self.item(env, class_name, f"prior_{k:06d}", (env, class_name, k), fit=fit, sample=k,
                                       prompt=cdga.class_prompt(class_name))
                             for k in range(n)]
                    yield Unit(items, "/".join([*scope, env, class_name]), tuple(refs), domain)

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
    def outputs_per_source(cfg, n_envs):
        return cfg.samples_per_image  # per reference image of its (env, class) prior

    @staticmethod
    def flops(cfg, unet, encode, decode):
        mix = max(1, round(cfg.mix_fraction * cfg.steps))
        guided = 2 if cfg.guidance > 1 else 1
        return (mix * unet + encode) + guided * mix * unet + decode  # one inversion per reference, one output each


SPEC = MethodSpec(
    "latent-prior", "LatentPrior", LatentPriorRunner, INVERSION_SAMPLING, EMBEDDED_INVERSION,
    read_against=("Regenerated_Balanced",),
    synthetic_mode="union", per_split=True,
    options=(
        Option("mix_fraction", 0.8, float, "latent-prior: inversion depth (fraction of steps)"),
        Option("bandwidth", "auto", bandwidth, "latent-prior: DDIM eta when denoising, or 'auto' (one per domain)"),
        Option("bandwidth_references", 32, int, "latent-prior: images of a domain its 'auto' bandwidth is "
               "estimated on (classes in turn)"),
        Option("tolerance", latent_prior.DEFAULT_TOLERANCE, float, "latent-prior: tolerances of the pairwise "
               "distance (relative), the pairwise angle and the angle to origin (degrees)", nargs=3),
        Option("samples_per_image", 1.0, float, "latent-prior: images per reference image"),
        Option("max_tries", 20, int, "latent-prior: candidates drawn per wanted image, at most")),
    fixed=dict(strength=1.0),
    # Debug tensors are noise: the geometric check is opened and the bandwidth fixed so the path runs
    debug=dict(tolerance=(1.0, 90.0, 90.0), bandwidth=0.0, max_tries=8))
