"""Reading a DomainBed dataset folder ``<data_dir>/<dataset dir>/<env>/<class>/<image>`` as real-world data.

JPEG and PNG in any mode (grayscale, palette, RGBA, CMYK, 16-bit) and any size become RGB at the generation
resolution; unreadable files are reported by name and skipped, never fatal; empty class folders are reported.
"""
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
from PIL import Image, ImageFile

from domainbed_diffusion.data import splits
from domainbed_diffusion.generation import SourceImage

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is reported, not silently padded

EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# DomainBed's folder of each dataset under data_dir.
DATASET_DIRS = {"PACS": "PACS", "VLCS": "VLCS", "OfficeHome": "office_home", "TerraIncognita": "terra_incognita",
                "DomainNet": "domain_net", "DigitStyles": "DigitStyles", "SVIRO": "sviro"}


@dataclass
class DatasetFolder:
    name: str
    root: str
    env_names: List[str]
    class_names: List[str]
    images: List[SourceImage]
    by_env_class: Dict[tuple, List[SourceImage]] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)
    _validation: dict = field(default_factory=dict, repr=False)

    def path(self, image):
        return os.path.join(self.root, image.rel_path)

    def validation(self, trial_seeds, holdout_fraction):
        """``{trial seed: {env: validation image paths}}``: DomainBed's train script's split of every env, over
        the whole env folder (``--max_per_class`` limits the sources, not the split)."""
        key = (tuple(trial_seeds), float(holdout_fraction))
        if key not in self._validation:
            self._validation[key] = splits.validation_paths(self.root, self.env_names, trial_seeds,
                                                            holdout_fraction)
        return self._validation[key]

    def load(self, rel_paths, resolution, report):
        """Images as a (B, 3, R, R) float tensor in [0, 1], and the indices of those that could be read (the
        others are reported by name and skipped)."""
        import torch
        arrays, ok = [], []
        for i, rel in enumerate(rel_paths):
            array, error = load_image(os.path.join(self.root, rel), resolution)
            if error:
                report(f"unreadable image skipped: {os.path.join(self.root, rel)} ({error})")
                continue
            arrays.append(array)
            ok.append(i)
        if not arrays:
            return None, ok
        return torch.from_numpy(np.stack(arrays)), ok


def dataset_root(data_dir, dataset, dataset_dir=None):
    root = dataset_dir or os.path.join(data_dir, DATASET_DIRS.get(dataset, dataset))
    if not os.path.isdir(root) and not dataset_dir and dataset not in DATASET_DIRS:
        raise ValueError(f"unknown dataset {dataset!r}: not one of {', '.join(DATASET_DIRS)}, and there is no folder "
                         f"{root}. For a dataset of your own, lay it out as {root}/<env>/<class>/<image> or pass "
                         f"--dataset_dir <folder>.")
    if not os.path.isdir(root):
        hint = (f"python -m offline_generation prepare --data_dir {data_dir}" if dataset == "DigitStyles"
                else "DomainBed's `python -m domainbed.scripts.download --data_dir ...`, or pass --dataset_dir")
        raise FileNotFoundError(f"dataset folder {root} does not exist; create it with {hint}")
    return root


def scan(data_dir, dataset, dataset_dir=None, envs=None, stream=None, max_per_class=None):
    """The dataset's envs, classes and image files (sorted, as DomainBed's ImageFolder orders them)."""
    root = dataset_root(data_dir, dataset, dataset_dir)
    env_names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not env_names:
        raise FileNotFoundError(f"{root} has no env folders: expected {root}/<env>/<class>/<image>")
    if envs:
        unknown = [e for e in envs if e not in env_names]
        if unknown:
            raise ValueError(f"--envs {unknown} not found in {root}; its envs are {env_names}")
    warnings, images, by_env_class = [], [], {}
    class_names = set()
    for env in env_names:
        env_dir = os.path.join(root, env)
        for cls in sorted(e.name for e in os.scandir(env_dir) if e.is_dir() and not e.name.startswith(".")):
            class_names.add(cls)
            files = sorted(e.name for e in os.scandir(os.path.join(env_dir, cls))
                           if e.is_file() and e.name.lower().endswith(EXTENSIONS) and not e.name.startswith("."))
            if not files:
                warnings.append(f"empty class folder skipped: {os.path.join(env_dir, cls)}")
                continue
            items = [SourceImage(env, cls, f"{env}/{cls}/{f}") for f in files[:max_per_class]]
            by_env_class[(env, cls)] = items
            if not envs or env in envs:
                images.extend(items)
    for w in warnings:
        print(f"warning: {w}", file=stream or sys.stderr)
    return DatasetFolder(dataset, root, env_names, sorted(class_names), images, by_env_class, warnings)


def to_rgb(img):
    """Any PIL mode as RGB; transparency is composited over white."""
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L"):
        a = np.asarray(img, dtype=np.float64)
        a = (a - a.min()) / max(a.max() - a.min(), 1e-9) * 255
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def load_image(path, size):
    """The image at ``path`` as float32 (3, size, size) in [0, 1], or ``(None, reason)`` if unreadable."""
    try:
        with Image.open(path) as img:
            img.load()
            rgb = to_rgb(img)
    except Exception as error:  # PIL raises many types for broken files
        return None, f"{type(error).__name__}: {error}"
    return as_read(rgb, size), None


def as_read(rgb, size):
    """An RGB PIL image (or (H, W, 3) uint8 array) as every reader sees it: bicubic to ``size``, float32 (3, H, W)."""
    rgb = Image.fromarray(rgb) if isinstance(rgb, np.ndarray) else rgb
    rgb = rgb.resize((size, size), Image.BICUBIC)
    return np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / 255.0
