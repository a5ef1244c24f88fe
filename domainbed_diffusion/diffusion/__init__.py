"""Diffusion models: loading (``loading``), small configs (``tiny``) and the shared operations (``pipeline``)."""
from .loading import EMBEDDED, CheckpointError, resolve_model
from .pipeline import LatentDiffusion, generators_from_seeds, per_image_noise
__all__ = ["EMBEDDED", "CheckpointError", "resolve_model", "LatentDiffusion", "generators_from_seeds", "per_image_noise"]
