"""The generation methods: one module each (``cdga_pg``, ``cdga_ig``, ``edsam``, ``latent_prior``) holding its
``Runner`` (what images it makes and how a batch of them is made from pixels) and its ``SPEC`` (name, algorithm,
sampling defaults, options); what they share in ``base``; ``in_memory`` for DomainBed's Debug datasets. The math
is in ``domainbed_diffusion.methods``, the diffusion operations in ``diffusion.LatentDiffusion``, and the list of
methods in ``domainbed_diffusion.catalogue``.
"""
from .base import Item, MethodSpec, Option, Runner, SourceImage, Unit, make_batches, stem, to_uint8

__all__ = ["Item", "MethodSpec", "Option", "Runner", "SourceImage", "Unit", "make_batches", "stem", "to_uint8"]
