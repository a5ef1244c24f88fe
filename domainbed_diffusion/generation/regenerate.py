"""A control, not a method: ED-SAM's pipeline at rho = 0 (DDIM inversion with the class prompt, the latent mixed
with fresh noise, regeneration; no transport), so each image is remade by the diffusion model without being moved
toward any style. ``Regenerated`` (CDGA's union) and ``Regenerated_Balanced`` (ED-SAM's equal terms) train on
these images: what "any generated image" adds, to read the method rows against."""
from .base import EMBEDDED_INVERSION, INVERSION_SAMPLING, MethodSpec, Option
from .edsam import EDSAMRunner

SPEC = MethodSpec(
    "regenerate", "Regenerated", EDSAMRunner, INVERSION_SAMPLING, EMBEDDED_INVERSION,
    read_against=("ERM_RealMatched",),
    synthetic_mode="union",
    options=(Option("num_samples", 2, int, "regenerate: samples per image", hparam="regenerations_per_image",
                    select="count"),),
    fixed=dict(strength=1.0, rho=0.0), control=True)
