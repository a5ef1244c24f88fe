"""The one diffusion code path: Stable Diffusion's components loaded from a local folder, a cached id or the
embedded model (``loading``), the operations every method uses (``pipeline``), tiny models for tests (``tiny``)."""
from .loading import CheckpointError, resolve_model
from .pipeline import LatentDiffusion, generators_from_seeds, per_image_noise

__all__ = ["CheckpointError", "resolve_model", "LatentDiffusion", "generators_from_seeds", "per_image_noise"]
