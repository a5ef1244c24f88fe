"""The methods' math, one module each, imported by both the generator and the algorithms.

``cdga`` (prompts, env pairs, image guidance), ``edsam`` (transport transformation), ``latent_prior``
(Gaussian priors of inverted latents, geometric rejection, bandwidth), ``gsd`` (Gradient Score Distillation),
``candidates`` (DomainFusion's style/content candidate selection and AdaIN).
"""

METHODS = ("cdga-pg", "cdga-ig", "edsam", "latent-prior")

# Sampling settings per method: the papers' where they say (ED-SAM: 10 DDIM steps at 256 px; CDGA: SD's
# img2img defaults at about DomainBed's input size), and small ones for the embedded DigitStyles model.
DEFAULTS = {
    "cdga-pg": dict(steps=50, strength=0.75, guidance=7.5, resolution=256),
    "cdga-ig": dict(steps=50, strength=0.75, guidance=7.5, resolution=256),
    "edsam": dict(steps=10, strength=1.0, guidance=1.0, resolution=256),
    "latent-prior": dict(steps=10, strength=1.0, guidance=1.0, resolution=256),
}
EMBEDDED_DEFAULTS = {
    "cdga-pg": dict(steps=10, strength=0.6, guidance=3.0, resolution=32),
    "cdga-ig": dict(steps=10, strength=0.6, guidance=3.0, resolution=32),
    "edsam": dict(steps=10, strength=1.0, guidance=1.0, resolution=32),
    "latent-prior": dict(steps=10, strength=1.0, guidance=1.0, resolution=32),
}
