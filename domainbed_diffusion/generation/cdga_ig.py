"""CDGA-IG: CDGA-PG's pairs, each guided by a same-class image of env j instead of text (the source's foreground
on the guide's background, then img2img; see ``methods.cdga``); ``CDGA_IG`` trains as ``CDGA_PG`` does."""
import torch

from ..methods import cdga
from .base import CDGA_SAMPLING, EMBEDDED_IMG2IMG, IMAGES_PER_PAIR, MethodSpec, Option, to_uint8
from .cdga_pg import SPEC as CDGA_PG, CDGAPromptGuided


class CDGAImageGuided(CDGAPromptGuided):

    def params(self):
        return dict(super().params(), guide_mix=self.cfg.guide_mix)

    def plan(self, sources, envs):
        """Always per trial: each planned trial's guides come from that trial's own training split, so no guide
        is a validation image of the run that reads the pair, and the pool does not shrink with the trials."""
        pools = {}  # (trial, env, class) -> its usable guide paths, sorted once

        def guidance(image, guide_env, k, fit):
            key = (fit.trial, guide_env, image.class_name)
            if key not in pools:
                pools[key] = sorted(g.rel_path for g in sources.by_env_class.get((guide_env, image.class_name), [])
                                    if fit.trains_on(g))
            guide = cdga.choose_guide(pools[key], "|".join(map(str, (self.cfg.seed, *fit.keys, image.rel_path,
                                                                     guide_env, k))), presorted=True)
            # env j may have no (usable) image of this class: no item then
            return None if guide is None else dict(guide=guide, prompt=cdga.class_prompt(image.class_name))
        return self.pair_units(sources, envs, guidance)

    def pairs(self, units, sources, report):
        """The items whose source and guide could both be read, with those images: ``(items, sources, guides)``
        (pixels (B, 3, R, R) in [0, 1], one row per item), or None when none could."""
        pixels, ok = sources.load([u.key for u in units], self.cfg.resolution, report)
        if pixels is None:
            return None
        units = [units[i] for i in ok]
        items = [item for u in units for item in u.items]
        pixels = pixels.repeat_interleave(torch.tensor([u.size for u in units]), 0)
        guides, ok = sources.load([it.guide for it in items], self.cfg.resolution, report)
        if guides is None:
            return None
        return [items[i] for i in ok], pixels[ok], guides

    def run(self, model, units, sources, report):
        pairs = self.pairs(units, sources, report)
        if pairs is None:
            return []
        items, pixels, guides = pairs
        c = self.cfg
        images = cdga.image_guided(model, pixels.to(model.device), guides.to(model.device),
                                   [it.prompt for it in items], [it.seed for it in items], c.strength, c.steps,
                                   c.guidance, c.guide_mix)
        return list(zip(items, to_uint8(images)))

    @staticmethod
    def flops(cfg, unet, encode, decode):
        return CDGAPromptGuided.flops(cfg, unet, encode, decode)  # the transplant's pixel work is negligible


SPEC = MethodSpec(
    "cdga-ig", "CDGA_IG", CDGAImageGuided, CDGA_SAMPLING, EMBEDDED_IMG2IMG,
    read_against=("Regenerated", "Composite"),
    synthetic_mode="union", test_guides_hparam=CDGA_PG.test_guides_hparam,
    options=(IMAGES_PER_PAIR,
             Option("guide_mix", 1.0, float, "CDGA-IG: how much of the transplant onto the guide (0: the source)")),
    per_split=True)
