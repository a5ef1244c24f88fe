"""Generation in memory, for DomainBed's Debug datasets: their envs are tensors, with no files to generate from
offline, so a run makes its synthetic set at construction with the same runners the generator uses."""
import numpy as np
import torch

from .base import SourceImage, make_batches


class TensorSources:
    """Images held as tensors (DomainBed's Debug datasets), seen as a dataset folder: ``<env>/<class>/<k>``."""

    def __init__(self, name, pixels, labels, env_names, class_names):
        self.name, self.class_names = name, list(class_names)
        self.env_names = list(env_names)
        self.pixels, self.images, self.by_env_class = {}, [], {}
        for env, x, y in zip(env_names, pixels, labels):
            for k, (image, label) in enumerate(zip(x, y.tolist())):
                source = SourceImage(env, self.class_names[label], f"{env}/{self.class_names[label]}/{k:06d}")
                self.pixels[source.rel_path] = image
                self.images.append(source)
                self.by_env_class.setdefault((env, source.class_name), []).append(source)

    def validation(self, trial_seeds, holdout_fraction):
        """The tensors given are what the run trains on: one split, with nothing held out."""
        return {None: {env: set() for env in self.env_names}}

    def load(self, rel_paths, resolution, report):
        if not rel_paths:
            return None, []
        x = torch.stack([self.pixels[p] for p in rel_paths]).float()
        if x.shape[-1] != resolution:
            x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear",
                                                align_corners=False, antialias=True)
        return x.clamp(0, 1), list(range(len(rel_paths)))


def generate_in_memory(model, spec, cfg, sources, envs, report=lambda *a, **k: None):
    """Every image of ``spec``'s plan over ``sources``: ``{source env: (uint8 images (N, H, W, 3), items)}``."""
    method = spec.make(cfg)
    per_batch = method.units_per_batch or cfg.batch_size
    out = {}
    for batch in make_batches(method.plan(sources, envs), per_batch):
        for item, image in method.run(model, batch, sources, report):
            out.setdefault(item.source_env, []).append((item, image))
    return {env: (np.stack([i for _, i in pairs]), [it for it, _ in pairs]) for env, pairs in out.items()}
