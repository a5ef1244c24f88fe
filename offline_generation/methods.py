"""The four generation methods: what images each makes (``plan``) and how a batch of them is made (``run``).

The math is in ``domainbed_diffusion.methods``; the diffusion operations in ``LatentDiffusion``. A plan is a
stream of units in a fixed order (one source image for CDGA, a source image and its M samples for ED-SAM, an
(env, class) group for latent-prior), generated as it is consumed: a DomainNet plan is millions of images and is
never held whole. Every output image has a seed derived from its own path, so what an image
looks like depends neither on the batch it was made in nor on the shard that made it.
"""
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch

from domainbed_diffusion.hparams_registry import seed_hash
from domainbed_diffusion.methods import cdga, edsam, latent_prior
from domainbed_diffusion.synthetic import env_folder, safe_name

from .sources import load_image


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

    @property
    def size(self):
        return len(self.items)


def _stem(rel_path):
    return safe_name(os.path.splitext(os.path.basename(rel_path))[0])


def _file(method, source_env, guide_env, class_name, name):
    return f"{env_folder(method, source_env, guide_env)}/{safe_name(class_name)}/{name}.png"


class Method:
    name = ""

    def __init__(self, cfg):
        self.cfg = cfg  # an argparse.Namespace-like object with the resolved settings of this method

    def seed(self, *keys):
        return seed_hash(self.cfg.seed, self.name, self.cfg.dataset, *keys)

    def params(self):
        c = self.cfg
        return dict(steps=c.steps, strength=c.strength, guidance=c.guidance, resolution=c.resolution)

    def plan(self, folder, envs):
        """Yield the units of work in a fixed order."""
        raise NotImplementedError

    def run(self, model, units, folder, report):
        """``[(item, uint8 HxWx3 image)]`` for the units' items; unreadable sources are reported and skipped."""
        raise NotImplementedError

    # shared helpers -----------------------------------------------------------------------------------
    def load(self, folder, rel_paths, report):
        """Source images as a (B, 3, R, R) tensor, and the indices of the ones that could be read."""
        arrays, ok = [], []
        for i, rel in enumerate(rel_paths):
            array, error = load_image(os.path.join(folder.root, rel), self.cfg.resolution)
            if error:
                report(f"unreadable image skipped: {os.path.join(folder.root, rel)} ({error})")
                continue
            arrays.append(array)
            ok.append(i)
        if not arrays:
            return None, ok
        return torch.from_numpy(np.stack(arrays)), ok

    def encode_sources(self, model, units, folder, report):
        """The units whose source image could be read, and those images' VAE latents (one per unit)."""
        pixels, ok = self.load(folder, [u.key for u in units], report)
        if pixels is None:
            return [], None
        return [units[i] for i in ok], model.encode_images(pixels.to(model.device))


def to_uint8(images):
    return (images.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


class CDGAPromptGuided(Method):
    """CDGA-PG: img2img of each image of env i toward every other env j, prompted with env j's description."""
    name = "cdga-pg"

    def plan(self, folder, envs):
        descriptions = cdga.load_descriptions(folder.name, envs, self.cfg.domain_descriptions)
        return self.pair_units(folder, envs, lambda image, guide_env, k: dict(
            prompt=cdga.pg_prompt(image.class_name, descriptions[guide_env], self.cfg.prompt_template)))

    def pair_units(self, folder, envs, guidance):
        """One unit per source image of ``envs`` with an item per (other env, k); ``guidance`` gives an item's
        prompt/guide fields, or None where there is nothing to guide it with."""
        for image in folder.images:
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

    def run(self, model, units, folder, report):
        units, latents = self.encode_sources(model, units, folder, report)  # once per source, then one row per item
        if not units:
            return []
        items = [item for u in units for item in u.items]
        latents = latents.repeat_interleave(torch.tensor([u.size for u in units], device=latents.device), 0)
        items, images = self.make(model, latents, items, folder, report)
        return list(zip(items, to_uint8(images)))

    def make(self, model, latents, items, folder, report):
        c = self.cfg
        return items, cdga.prompt_guided(model, latents, [it.prompt for it in items], [it.seed for it in items],
                                         c.strength, c.steps, c.guidance)


class CDGAImageGuided(CDGAPromptGuided):
    """CDGA-IG: the same pairs, guided by a same-class image of env j (latent AdaIN, see ``methods.cdga``)."""
    name = "cdga-ig"

    def params(self):
        return dict(super().params(), guide_mix=self.cfg.guide_mix)

    def plan(self, folder, envs):
        pools = {}  # (env, class) -> its image paths, sorted once

        def guidance(image, guide_env, k):
            key = (guide_env, image.class_name)
            if key not in pools:
                pools[key] = sorted(g.rel_path for g in folder.by_env_class.get(key, []))
            guide = cdga.choose_guide(pools[key], f"{self.cfg.seed}|{image.rel_path}|{guide_env}|{k}",
                                      presorted=True)
            # env j may have no image of this class: no item then
            return None if guide is None else dict(guide=guide, prompt=cdga.class_prompt(image.class_name))
        return self.pair_units(folder, envs, guidance)

    def make(self, model, latents, items, folder, report):
        guides, ok = self.load(folder, [it.guide for it in items], report)
        if guides is None:
            return [], torch.zeros(0, 3, self.cfg.resolution, self.cfg.resolution)
        c = self.cfg
        items = [items[i] for i in ok]
        guide_latents = model.encode_images(guides.to(model.device))
        return items, cdga.image_guided(model, latents[ok], guide_latents, [it.prompt for it in items],
                                        [it.seed for it in items], c.strength, c.steps, c.guidance, c.guide_mix)


class EDSAM(Method):
    """ED-SAM: DDIM-invert each image with its class prompt, transport the latent M times, regenerate."""
    name = "edsam"

    def params(self):
        return dict(steps=self.cfg.steps, guidance=self.cfg.guidance, resolution=self.cfg.resolution,
                    rho=self.cfg.rho, num_samples=self.cfg.num_samples)

    def plan(self, folder, envs):
        for image in folder.images:
            if image.env not in envs:
                continue
            items = [Item(file=_file(self.name, image.env, None, image.class_name, f"{_stem(image.rel_path)}_{m}"),
                          method=self.name, source_env=image.env, class_name=image.class_name, sample=m,
                          seed=self.seed(image.rel_path, m), source=image.rel_path,
                          prompt=cdga.class_prompt(image.class_name), params=self.params())
                     for m in range(self.cfg.num_samples)]
            yield Unit(items, image.rel_path)

    def run(self, model, units, folder, report):
        units, latents = self.encode_sources(model, units, folder, report)
        if not units:
            return []
        images, alpha = edsam.generate(model, latents, [u.items[0].prompt for u in units],
                                       [[it.seed for it in u.items] for u in units], self.cfg.rho, self.cfg.steps,
                                       self.cfg.guidance)
        items = [item for u in units for item in u.items]
        for item, a in zip(items, alpha.tolist()):
            item.params = dict(item.params, alpha=round(a, 6))
        return list(zip(items, to_uint8(images)))


class LatentPrior(Method):
    """Latent-prior sampling: per (env, class), a Gaussian prior of the inverted latents, geometric rejection,
    DDIM denoising within the bandwidth."""
    name = "latent-prior"

    def params(self):
        c = self.cfg
        return dict(steps=c.steps, mix_steps=self.mix_steps, guidance=c.guidance, resolution=c.resolution,
                    tolerance=list(c.tolerance))

    @property
    def mix_steps(self):
        return max(1, min(self.cfg.steps, round(self.cfg.mix_fraction * self.cfg.steps)))

    def plan(self, folder, envs):
        for env in envs:
            for class_name in folder.class_names:
                refs = folder.by_env_class.get((env, class_name), [])
                if len(refs) < 3:
                    continue  # a prior and its geometry need at least three references
                n = max(1, round(self.cfg.samples_per_image * len(refs)))
                items = [Item(file=_file(self.name, env, None, class_name, f"prior_{k:06d}"), method=self.name,
                              source_env=env, class_name=class_name, sample=k, seed=self.seed(env, class_name, k),
                              prompt=cdga.class_prompt(class_name), params=self.params())
                         for k in range(n)]
                yield Unit(items, f"{env}/{class_name}")

    def run(self, model, units, folder, report):
        results = []
        for unit in units:
            results += self.run_group(model, unit, folder, report)
        return results

    def run_group(self, model, unit, folder, report):
        first = unit.items[0]
        refs = [r.rel_path for r in folder.by_env_class[(first.source_env, first.class_name)]]
        pixels, ok = self.load(folder, refs, report)
        if pixels is None or len(ok) < 3:
            report(f"latent-prior: fewer than 3 readable images in {unit.key}, skipped")
            return []
        c = self.cfg
        samples = latent_prior.generate(model, pixels, first.prompt, len(unit.items),
                                        lambda k: self.seed(unit.key, "candidate", k), c.steps, self.mix_steps,
                                        c.guidance, c.bandwidth, c.tolerance, c.max_tries, c.batch_size)
        report(f"latent-prior {unit.key}: accepted {len(samples.seeds)}/{samples.tried} candidates "
               f"({samples.acceptance_rate:.0%}), bandwidth eta={samples.eta}", level="info")
        items = unit.items[:len(samples.seeds)]
        for item in items:
            item.params = dict(item.params, eta=samples.eta, acceptance_rate=round(samples.acceptance_rate, 4))
        return list(zip(items, to_uint8(samples.images)))


REGISTRY = {m.name: m for m in (CDGAPromptGuided, CDGAImageGuided, EDSAM, LatentPrior)}
