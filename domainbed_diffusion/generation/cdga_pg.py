"""CDGA-PG (Hemati et al., 2023): img2img of each image of env i toward every other env j, prompted with env j's
description; ``CDGA_PG`` trains ERM on the union of real and synthetic images."""
import json

import torch

from ..methods import cdga
from .base import CDGA_SAMPLING, EMBEDDED_IMG2IMG, IMAGES_PER_PAIR, MethodSpec, Option, Runner, stem, to_uint8


class CDGAPromptGuided(Runner):

    def plan(self, sources, envs):
        descriptions = cdga.load_descriptions(sources.name, envs, self.cfg.domain_descriptions)
        return self.pair_units(sources, envs, lambda image, guide_env, k, fit: dict(
            prompt=cdga.pg_prompt(image.class_name, descriptions[guide_env], self.cfg.prompt_template)))

    def pair_units(self, sources, envs, guidance):
        """One unit per source image of ``envs`` (per fit) with an item per (other env, k); ``guidance(image,
        guide_env, k, fit)`` gives an item's prompt/guide fields, or None where there is nothing to guide it with."""
        def items_of(image, fit):
            items = []
            for guide_env in envs:
                for k in range(self.cfg.images_per_pair if guide_env != image.env else 0):
                    fields = guidance(image, guide_env, k, fit)
                    if fields is not None:
                        items.append(self.item(image.env, image.class_name, f"{stem(image.rel_path)}_{k}",
                                               (image.rel_path, guide_env, k), guide_env=guide_env, sample=k,
                                               source=image.rel_path, fit=fit, **fields))
            return items
        return self.source_units(sources, envs, items_of)

    def run(self, model, units, sources, report):
        units, latents = self.encode_sources(model, units, sources, report)  # once per source, then one per item
        if not units:
            return []
        items = [item for u in units for item in u.items]
        sizes = [u.size for u in units]  # the output size given: no read back from the GPU (a host sync)
        latents = latents.repeat_interleave(torch.tensor(sizes, device=latents.device), 0, output_size=sum(sizes))
        items, images = self.make(model, latents, items, sources, report)
        return list(zip(items, to_uint8(images)))

    def make(self, model, latents, items, sources, report):
        c = self.cfg
        return items, cdga.prompt_guided(model, latents, [it.prompt for it in items], [it.seed for it in items],
                                         c.strength, c.steps, c.guidance)

    @staticmethod
    def outputs_per_source(cfg, n_envs):
        return cfg.images_per_pair * (n_envs - 1)  # toward every other env

    @staticmethod
    def flops(cfg, unet, encode, decode):
        guided = 2 if cfg.guidance > 1 else 1  # classifier-free guidance doubles the UNet batch
        return guided * int(cfg.steps * cfg.strength) * unet + encode + decode


SPEC = MethodSpec(
    "cdga-pg", "CDGA_PG", CDGAPromptGuided, CDGA_SAMPLING, EMBEDDED_IMG2IMG,
    read_against=("Regenerated",),
    synthetic_mode="union", test_guides_hparam="cdga_star_uses_test_domain",
    options=(IMAGES_PER_PAIR,
             Option("domain_descriptions", None, str, "CDGA-PG: env -> text, a JSON object or file"),
             Option("prompt_template", cdga.PROMPT_TEMPLATE, str, "CDGA-PG prompt template")),
    debug=dict(domain_descriptions=lambda envs: json.dumps({e: f"domain {e}" for e in envs})))
