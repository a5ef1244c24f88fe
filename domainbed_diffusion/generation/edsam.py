"""ED-SAM (Truong et al., 2024): DDIM-invert each image with its class prompt, move the latent M times with the
transport transformation (``methods.edsam``), regenerate; ``EDSAM`` trains on Eq. 11's equal real and synthetic
terms."""
from ..methods import cdga, edsam
from .base import EMBEDDED_INVERSION, INVERSION_SAMPLING, MethodSpec, Option, Runner, stem, to_uint8


class EDSAMRunner(Runner):

    def params(self):
        return dict(steps=self.cfg.steps, guidance=self.cfg.guidance, resolution=self.cfg.resolution,
                    rho=self.cfg.rho, num_samples=self.cfg.num_samples)

    def plan(self, sources, envs):
        return self.source_units(sources, envs, lambda image, fit: [
            self.item(image.env, image.class_name, f"{stem(image.rel_path)}_{m}", (image.rel_path, m), sample=m,
                      source=image.rel_path, prompt=cdga.class_prompt(image.class_name), fit=fit)
            for m in range(self.cfg.num_samples)])

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


SPEC = MethodSpec(
    "edsam", "EDSAM", EDSAMRunner, INVERSION_SAMPLING, EMBEDDED_INVERSION,
    read_against=("Regenerated_Balanced",),
    synthetic_mode="balanced",
    options=(Option("num_samples", 10, int, "ED-SAM: M samples per image", hparam="edsam_m",
                    search=lambda r: int(r.choice([3, 5, 10])), select="count"),
             Option("rho", 0.5, float, "ED-SAM: transport distance bound", hparam="edsam_rho", select="value")),
    fixed=dict(strength=1.0))
