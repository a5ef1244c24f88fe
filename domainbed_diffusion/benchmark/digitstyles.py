"""DigitStyles: the embedded multi-domain benchmark, built from scikit-learn's bundled digits (no download).

Each benchmark domain draws one set of digit images in one visual style, the way PACS draws objects as photo,
art, cartoon and sketch. The domains hold disjoint digit images. A separate pool of digits, disjoint from every
benchmark image and drawn in many styles (the benchmark's four and four more), trains the embedded diffusion
model, as Stable Diffusion was trained on data outside PACS. Everything is deterministic.

    python -m offline_generation prepare --data_dir ./data
"""
import argparse
import hashlib
import json
import os
import zlib

import numpy as np
from PIL import Image

from ..data.files import save_png
from . import DOMAINS, POOL_STYLES, PRETRAIN_STYLES  # noqa: F401  (its styles: digitstyles.DOMAINS ...)

DATASET = "DigitStyles"
POOL = "DigitStylesPool"
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# One text per style: what the embedded model was trained with, and CDGA-PG's domain descriptions.
STYLE_DESCRIPTIONS = {
    "blueprint": "white lines on a blueprint grid",
    "ink": "black ink on white paper",
    "neon": "neon glow on a dark background",
    "sketch": "pencil sketch outline",
    "chalk": "chalk on a green board",
    "mosaic": "checkered tiles",
    "pastel": "soft pastel colors",
    "stencil": "white stencil on a colored card",
}
PER_CLASS_PER_DOMAIN = 33  # 330 images a domain; the rest of the 1,797 digits form the pool
POOL_VARIANTS = 2  # renderings of each pool digit in each pool style
IMAGE_SIZE = 32
INPUT_SHAPE = (3, 28, 28)  # what the dataset class feeds the network: DomainBed's MNIST_CNN size
MEAN, STD = [0.5] * 3, [0.25] * 3
VERSION = 1  # bump when rendering changes, so prepared folders are rebuilt


def prompt(class_name, style=None):
    """The embedded model's prompt convention, "a {class}, {style description}" (CDGA's template)."""
    return f"a {class_name}, {STYLE_DESCRIPTIONS[style]}" if style else f"a {class_name}"


def network_transform():
    """PIL image -> network input of the DigitStyles dataset class (and of the pretrained featurizer)."""
    from torchvision import transforms
    # normalised inputs: MNIST_CNN leaves its initial plateau several times faster than on [0, 1] pixels
    return transforms.Compose([transforms.Resize(INPUT_SHAPE[1:]), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])


def load_pool(data_dir):
    """The pre-training pool's images, (N, 3, 32, 32) pixels in [0, 1], and their (class, style)."""
    import torch
    from torchvision.transforms.functional import to_tensor
    root = os.path.join(data_dir, POOL)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root} does not exist: write it with python -m offline_generation prepare "
                                f"--data_dir {data_dir}")
    images, labels = [], []
    for style in sorted(e.name for e in os.scandir(root) if e.is_dir()):
        for cls in sorted(os.listdir(os.path.join(root, style))):
            for name in sorted(os.listdir(os.path.join(root, style, cls))):
                with Image.open(os.path.join(root, style, cls, name)) as img:
                    images.append(to_tensor(img.convert("RGB")))
                labels.append((cls, style))
    return torch.stack(images), labels


def load_digits():
    from sklearn.datasets import load_digits as sklearn_digits
    digits = sklearn_digits()
    return digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def split_indices(targets, seed=0):
    """Stratified, disjoint assignment of digit indices: {domain: [...]} and the pool's list."""
    rng = np.random.RandomState(seed)
    domains = {d: [] for d in DOMAINS}
    pool = []
    for label in range(len(CLASS_NAMES)):
        idx = rng.permutation(np.flatnonzero(targets == label))
        for k, domain in enumerate(DOMAINS):
            domains[domain].extend(idx[k * PER_CLASS_PER_DOMAIN:(k + 1) * PER_CLASS_PER_DOMAIN].tolist())
        pool.extend(idx[len(DOMAINS) * PER_CLASS_PER_DOMAIN:].tolist())
    return {d: sorted(v) for d, v in domains.items()}, sorted(pool)


def _rng(*keys):
    return np.random.RandomState(zlib.crc32(repr(keys).encode()) & 0x7FFFFFFF)


def _blur(a, sigma):
    radius = max(1, int(3 * sigma))
    x = np.arange(-radius, radius + 1)
    kernel = np.exp(-x ** 2 / (2 * sigma ** 2))
    kernel /= kernel.sum()
    a = np.apply_along_axis(lambda r: np.convolve(np.pad(r, radius, mode="edge"), kernel, "valid"), 0, a)
    return np.apply_along_axis(lambda r: np.convolve(np.pad(r, radius, mode="edge"), kernel, "valid"), 1, a)


def _edges(mask):
    m = _blur(mask, 0.7)
    gy, gx = np.gradient(m)
    e = np.hypot(gx, gy)
    return np.clip(e / (e.max() + 1e-6), 0, 1)


def digit_mask(image8, rng, size=IMAGE_SIZE):
    """A soft stroke mask in [0, 1] of one 8x8 digit, upsampled and slightly rotated, scaled and shifted."""
    padded = np.pad(image8, 1)
    img = Image.fromarray((padded * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
    angle = rng.uniform(-10, 10)
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-2, 2, size=2)
    c = size / 2
    rad = np.deg2rad(angle)
    a, b = np.cos(rad) / scale, np.sin(rad) / scale
    # inverse affine map output -> input around the centre
    coeffs = (a, b, c - a * (c + shift[0]) - b * (c + shift[1]), -b, a, c + b * (c + shift[0]) - a * (c + shift[1]))
    img = img.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR)
    v = np.asarray(img, dtype=np.float32) / 255.0
    return 1.0 / (1.0 + np.exp(-(v - 0.4) * 12.0))


def _grid(size):
    y, x = np.mgrid[0:size, 0:size]
    return x, y


def render(mask, style, rng):
    """RGB float image in [0, 1] of a stroke mask drawn in one style."""
    size = mask.shape[0]
    m = mask[..., None]
    noise = rng.normal(0, 1, size=(size, size, 1)).astype(np.float32)
    x, y = _grid(size)
    if style == "ink":
        paper = np.array([0.97, 0.95, 0.9]) * rng.uniform(0.95, 1.0) + 0.015 * noise
        ink = np.array([[0.05, 0.05, 0.1], [0.1, 0.12, 0.35], [0.22, 0.06, 0.05]])[rng.randint(3)]
        out = paper * (1 - m) + ink * m
    elif style == "neon":
        bg = rng.uniform(0.0, 0.1, size=3) + 0.01 * noise
        color = np.array([[0.1, 1.0, 1.0], [1.0, 0.2, 0.9], [0.5, 1.0, 0.2], [1.0, 0.6, 0.1]])[rng.randint(4)]
        glow = _blur(mask, 1.6)[..., None]
        out = bg + color * glow * 1.2 + 0.5 * m ** 2
    elif style == "sketch":
        edges = _edges(mask)[..., None]
        hatch = (((x + y) % 4) == 0)[..., None] * m * 0.35
        paper = rng.uniform(0.85, 0.95) + 0.02 * noise
        out = np.repeat(paper - (paper - 0.25) * np.clip(edges * 1.3 + hatch, 0, 1), 3, axis=2)
    elif style == "blueprint":
        bg = np.array([0.08, 0.25, 0.6]) * rng.uniform(0.85, 1.1) + 0.02 * noise
        grid = (((x % 8) == 0) | ((y % 8) == 0))[..., None] * 0.12
        alpha = np.clip(_edges(mask)[..., None] * 1.2 + 0.25 * m, 0, 1)
        out = (bg + grid) * (1 - alpha) + np.array([0.95, 0.97, 1.0]) * alpha
    elif style == "chalk":
        bg = np.array([0.1, 0.25, 0.15]) * rng.uniform(0.85, 1.15) + 0.02 * noise
        alpha = m * np.clip(0.6 + 0.4 * rng.uniform(size=(size, size, 1)), 0, 1)
        out = bg * (1 - alpha) + np.array([0.92, 0.92, 0.86]) * alpha
    elif style == "mosaic":
        colors = rng.uniform(0.2, 1.0, size=(2, 3))
        checker = np.where(((x // 4 + y // 4) % 2 == 0)[..., None], colors[0], colors[1])
        bg = rng.uniform(0.3, 0.6, size=3)
        out = bg * (1 - m) + checker * m
    elif style == "pastel":
        bg = 0.8 + 0.15 * rng.uniform(size=3)
        ink = 0.45 + 0.3 * rng.uniform(size=3)
        soft = _blur(mask, 1.0)[..., None]
        out = bg * (1 - soft) + ink * soft
    elif style == "stencil":
        bg = rng.uniform(0.1, 0.8, size=3)
        hard = (mask > 0.5)[..., None].astype(np.float32)
        out = bg * (1 - hard) + np.array([0.98, 0.98, 0.98]) * hard
    else:
        raise ValueError(f"unknown DigitStyles style {style!r}; known: {', '.join(POOL_STYLES)}")
    return np.clip(out, 0, 1).astype(np.float32)


def render_digit(images, index, style, variant=0):
    """uint8 HxWx3 rendering of digit ``index`` in ``style``; the same arguments give the same pixels."""
    rng = _rng("DigitStyles", VERSION, int(index), style, int(variant))
    return (render(digit_mask(images[index], rng), style, rng) * 255 + 0.5).astype(np.uint8)


def _manifest_digest(entries):
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()


def _write_tree(root, entries, images):
    """Write ``entries`` (relative path, index, style, variant) under ``root``; skip a tree already complete."""
    marker = os.path.join(root, ".complete")
    digest = _manifest_digest([[e[0], int(e[1]), e[2], e[3]] for e in entries])
    if os.path.exists(marker):
        with open(marker) as f:
            if f.read().strip() == digest:
                return False
    for rel, index, style, variant in entries:
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_png(Image.fromarray(render_digit(images, index, style, variant)), path)
    with open(marker + ".tmp", "w") as f:
        f.write(digest)
    os.replace(marker + ".tmp", marker)
    return True


def benchmark_entries(targets, seed=0):
    domains, _ = split_indices(targets, seed)
    return [(os.path.join(d, CLASS_NAMES[targets[i]], f"{i:04d}.png"), i, d, 0) for d in DOMAINS for i in domains[d]]


def pool_entries(targets, seed=0):
    _, pool = split_indices(targets, seed)
    return [(os.path.join(s, CLASS_NAMES[targets[i]], f"{i:04d}_{v}.png"), i, s, v)
            for s in POOL_STYLES for i in pool for v in range(POOL_VARIANTS)]


def prepare(data_dir, seed=0, pool=True, verbose=True):
    """Write DigitStyles (and its pre-training pool) under ``data_dir``; returns the dataset's folder."""
    images, targets = load_digits()
    root = os.path.join(data_dir, DATASET)
    wrote = _write_tree(root, benchmark_entries(targets, seed), images)
    if verbose:
        print(f"{'wrote' if wrote else 'found'} {root}: {len(DOMAINS)} domains x "
              f"{PER_CLASS_PER_DOMAIN * len(CLASS_NAMES)} images")
    if pool:
        pool_root = os.path.join(data_dir, POOL)
        wrote = _write_tree(pool_root, pool_entries(targets, seed), images)
        if verbose:
            print(f"{'wrote' if wrote else 'found'} {pool_root}: pre-training pool, "
                  f"{len(POOL_STYLES)} styles")
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the DigitStyles dataset in DomainBed's folder layout.")
    parser.add_argument("--data_dir", required=True, help="DomainBed's data_dir; DigitStyles/ is written inside")
    parser.add_argument("--no_pool", action="store_true", help="skip the embedded model's pre-training pool")
    args = parser.parse_args(argv)
    prepare(args.data_dir, pool=not args.no_pool)


if __name__ == "__main__":
    main()
