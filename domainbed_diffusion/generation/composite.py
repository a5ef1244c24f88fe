"""A control, not a method: CDGA-IG's composite without diffusion (the source's foreground on its guide's
background, ``style.transplant``), for the same pairs and guides as CDGA-IG's, written as they enter its img2img.
``Composite`` trains on them as ``CDGA_IG`` does: what CDGA-IG's diffusion adds to its hand-made guide."""
from ..methods.style import transplant
from .base import MethodSpec, to_uint8
from .cdga_ig import SPEC as CDGA_IG, CDGAImageGuided


class CompositeRunner(CDGAImageGuided):

    def params(self):
        return dict(resolution=self.cfg.resolution, guide_mix=self.cfg.guide_mix)

    def run(self, model, units, sources, report):
        pairs = self.pairs(units, sources, report)
        if pairs is None:
            return []
        items, pixels, guides = pairs
        return list(zip(items, to_uint8(transplant(pixels, guides, self.cfg.guide_mix))))

    @staticmethod
    def flops(cfg, unet, encode, decode):
        return 0  # pixel arithmetic only


SPEC = MethodSpec(
    "composite", "Composite", CompositeRunner, CDGA_IG.sampling, CDGA_IG.embedded_sampling,
    synthetic_mode="union", test_guides_hparam=CDGA_IG.test_guides_hparam, options=CDGA_IG.options,
    per_split=True, control=True)
