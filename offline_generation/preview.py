"""Preview grids: for each method, a few source images, each next to its synthetic variants.

For latent-prior, whose images have no single source, the row starts with a real image of the (env, class)
whose prior made them.
"""
import os
import random

import numpy as np

from PIL import Image, ImageDraw

from domainbed_diffusion.data.files import load_rgb, save_png
from domainbed_diffusion.data.layout import Selection, SyntheticDomains, synthetic_root

from .sources import dataset_root

LABEL_WIDTH = 150


def _rows(domains, method, dataset_dir, n_rows, n_variants, seed):
    """A few groups of the method's images (one source image, or one (env, class) prior each), read through the
    index so that a DomainNet-size set previews as fast as a small one."""
    index = domains.index(method)
    # a group: its source image's code, or for images without one a negative code of their (env, class)
    groups = np.where(index.source >= 0, index.source,
                      -1 - (index.source_env.astype(np.int64) * len(index.classes) + index.class_))
    keys = sorted(np.unique(groups).tolist())
    rows = []
    for key in sorted(random.Random(seed).sample(keys, min(n_rows, len(keys)))):
        members = np.flatnonzero(groups == key)
        records = Selection(domains.dataset_root, index, members, np.zeros(len(members))).records()
        group = sorted(records, key=lambda r: (str(r.get("guide_env")), r["sample"]))[:n_variants]
        if group[0].get("source"):
            label = group[0]["source"]
            real = os.path.join(dataset_dir, label)
        else:
            label = f"{group[0]['source_env']}/{group[0]['class_name']}"
            folder = os.path.join(dataset_dir, group[0]["source_env"], group[0]["class_name"])
            real = os.path.join(folder, sorted(os.listdir(folder))[0])
        labels = [(f"{r['guide_env']}" if r.get("guide_env") else f"#{r['sample']}",
                   _made_by(r["file"])) for r in group]
        rows.append((label, real, [os.path.join(domains.dataset_root, r["file"]) for r in group], labels))
    return rows


def _made_by(file):
    """"w/o <env>" for an image of a per-test-env model (its folder ``without-<env>/``), else ""."""
    head = file.split("/", 1)[0]
    return "w/o " + head[len("without-"):] if head.startswith("without-") and "/" in file else ""


def preview(args, stream=None):
    """Write the grid PNG for ``args.methods``; returns its path."""
    root = synthetic_root(args.synthetic_root, args.data_dir)
    domains = SyntheticDomains(root, args.dataset)
    real_root = dataset_root(args.data_dir, args.dataset, args.dataset_dir)
    tile, pad = args.size, 4
    sections = [(m, _rows(domains, m, real_root, args.rows, args.variants, args.seed))
                for m in args.methods if domains.exists(m)]
    if not sections:
        raise FileNotFoundError(f"no synthetic images of {args.methods} under {domains.dataset_root}: "
                                f"generate them first with python -m offline_generation")
    columns = 1 + max(len(r[2]) for _, rows in sections for r in rows)
    line = 12 if any(by for _, rows in sections for r in rows for _, by in r[3]) else 0  # a "w/o" line
    height = sum(20 + len(rows) * (tile + 16 + line + pad) for _, rows in sections)
    grid = Image.new("RGB", (LABEL_WIDTH + columns * (tile + pad), height), "white")
    draw = ImageDraw.Draw(grid)
    y = 0
    for method, rows in sections:
        draw.text((4, y + 4), f"{method}: source | synthetic variants", fill="black")
        y += 20
        for key, real, files, labels in rows:
            draw.text((4, y + tile // 2), key[-24:], fill="black")
            x = LABEL_WIDTH
            for path, (label, by) in [(real, ("source", ""))] + list(zip(files, labels)):
                grid.paste(load_rgb(path).resize((tile, tile), Image.NEAREST), (x, y))
                draw.text((x, y + tile + 1), label[:16], fill="gray")
                draw.text((x, y + tile + 13), by[:16], fill="gray")
                x += tile + pad
            y += tile + 16 + line + pad
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_png(grid, args.out)
    print(f"wrote {args.out}", file=stream)
    return args.out


def text_to_image(model, prompts, seeds, steps=20, guidance=3.0):
    """Images (B, 3, R, R) in [0, 1] sampled from pure noise with DDIM, one seed per image."""
    import torch

    from domainbed_diffusion.diffusion import generators_from_seeds, per_image_noise
    size = model.unet.config.sample_size
    shape = (model.unet.config.in_channels, size, size)
    noise = per_image_noise(generators_from_seeds(seeds), shape, model.device, model.dtype)
    with torch.no_grad():
        latents = model.denoise(noise * model.scheduler.init_noise_sigma, prompts, steps, steps, guidance)
    return model.decode_latents(latents)


def samples_grid(args):
    """A grid PNG: one row per prompt, ``args.n`` samples each, for any checkpoint."""
    from domainbed_diffusion.diffusion import LatentDiffusion
    model = LatentDiffusion.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    tile, pad = args.size, 4
    grid = Image.new("RGB", (LABEL_WIDTH * 2 + args.n * (tile + pad), len(args.prompts) * (tile + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for row, prompt in enumerate(args.prompts):
        images = text_to_image(model, [prompt] * args.n, [args.seed * 1000 + k for k in range(args.n)],
                               args.steps, args.guidance)
        y = row * (tile + pad)
        draw.text((4, y + tile // 2 - 6), prompt[:48], fill="black")
        for k, image in enumerate(images):
            pixels = (image.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype("uint8")
            grid.paste(Image.fromarray(pixels).resize((tile, tile), Image.NEAREST),
                       (LABEL_WIDTH * 2 + k * (tile + pad), y))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_png(grid, args.out)
    print(f"wrote {args.out}")
    return args.out
