"""How well each shipped DigitStyles model follows its prompts, judged by the synthetic-domain report's probes.

    PYTHONPATH=../DomainBed python sweeps/embedded_models.py [--data_dir data] [--seeds 4]

For each model (the four per-test-env ones and the all-styles one) it samples "a {digit}, {style description}"
for every digit and benchmark style (20 DDIM steps, guidance 3, ``--seeds`` seeds each), embeds the samples with
the report's extractor (the embedded featurizer) and reads them with the report's probes, trained on real
DigitStyles training images: the share whose digit is the prompted one, and the share attributed to the prompted
style, separately for the styles the model was trained on and the one it never saw. Writes
``sweeps/results/embedded_models.{txt,json,png}`` (the grid: one row per model and style, one column per digit).
"""
import argparse
import json
import os
import sys
import tempfile

import numpy as np
import torch
from PIL import Image, ImageDraw

from domainbed_diffusion.benchmark import digitstyles
from domainbed_diffusion.diffusion import LatentDiffusion
from domainbed_diffusion.diffusion.loading import resolve_model
from domainbed_diffusion.generation.base import to_uint8
from domainbed_diffusion.diffusion.choice import trained_on
from offline_generation import sources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = [f"embedded-without-{s}" for s in digitstyles.DOMAINS] + ["embedded-all-styles"]


def measure(report, extractor, name, seeds):
    """Samples of every (style, digit) and what the report's probes read in them (class and env indices are the
    report's: its folder's sorted names)."""
    from offline_generation.preview import text_to_image
    folder = resolve_model(name)
    model = LatentDiffusion.from_pretrained(folder, device="cpu", dtype="float32")
    seen = set(trained_on(folder) or ())
    prompts, digit, style = [], [], []
    for s, env in enumerate(digitstyles.DOMAINS):
        for c, cls in enumerate(digitstyles.CLASS_NAMES):
            for k in range(seeds):
                prompts.append(digitstyles.prompt(cls, env))
                digit.append(report.classes.index(cls))
                style.append(report.envs.index(env))
    images = torch.cat([text_to_image(model, prompts[i:i + 80], list(range(i, min(i + 80, len(prompts)))))
                        for i in range(0, len(prompts), 80)])
    x = np.asarray(extractor(as_read(images, extractor.size)))
    digit, style = np.array(digit), np.array(style)
    predicted_digit = report.label_probe.predict(x)
    predicted_style = report.env_probe.predict(x)
    seen_mask = np.array([report.envs[s] in seen for s in style])
    result = dict(samples=len(prompts), digit=float(np.mean(predicted_digit == digit)),
                  style_seen=float(np.mean((predicted_style == style)[seen_mask])),
                  style_unseen=float(np.mean((predicted_style == style)[~seen_mask])) if (~seen_mask).any()
                  else None,
                  digit_unseen=float(np.mean((predicted_digit == digit)[~seen_mask])) if (~seen_mask).any()
                  else None)
    first = images.view(len(digitstyles.DOMAINS), 10, seeds, *images.shape[1:])[:, :, 0]  # one seed per cell
    return result, first


def as_read(images, size):
    """Images as the report reads generated files: 8-bit PNG pixels, resized bicubically by PIL."""
    return torch.from_numpy(np.stack([sources.as_read(array, size) for array in to_uint8(images)]))


def grid(rows, path, tile=32, pad=2, label=190):
    image = Image.new("RGB", (label + 10 * (tile + pad), len(rows) * (tile + pad)), "white")
    draw = ImageDraw.Draw(image)
    for r, (text, images) in enumerate(rows):
        draw.text((4, r * (tile + pad) + tile // 2 - 6), text, fill="black")
        for c, pixels in enumerate(images):
            image.paste(Image.fromarray(to_uint8(pixels[None])[0]), (label + c * (tile + pad), r * (tile + pad)))
    image.save(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--out", default=os.path.join(REPO, "sweeps", "results"))
    args = parser.parse_args(argv)
    from offline_generation import features
    from offline_generation.report import Report
    from offline_generation.sources import scan
    torch.manual_seed(0)
    digitstyles.prepare(args.data_dir, pool=False)
    extractor = features.for_dataset("DigitStyles", "auto", device="cpu")
    with tempfile.TemporaryDirectory() as cache_dir:
        report = Report(scan(args.data_dir, "DigitStyles"), extractor, features.FeatureCache(cache_dir, extractor))
    results, rows = {}, []
    for name in MODELS:
        results[name], first = measure(report, extractor, name, args.seeds)
        rows += [(f"{name[len('embedded-'):]}: {style}", first[s]) for s, style in enumerate(digitstyles.DOMAINS)]
    lines = [f"{'model':<28}{'samples':>8}{'digit':>8}{'style (seen)':>14}{'style (unseen)':>16}"
             f"{'digit (unseen)':>16}"]
    for name, r in results.items():
        unseen = f"{r['style_unseen']:.1%}" if r["style_unseen"] is not None else "-"
        digit_unseen = f"{r['digit_unseen']:.1%}" if r["digit_unseen"] is not None else "-"
        lines.append(f"{name:<28}{r['samples']:>8}{r['digit']:>8.1%}{r['style_seen']:>14.1%}{unseen:>16}"
                     f"{digit_unseen:>16}")
    lines.append(f"digit: share of samples whose digit the report's label probe reads as the prompted one; style: "
                 f"share the env probe attributes to the prompted style, for the benchmark styles the model was "
                 f"trained on and the one it never saw. Probes on real training images (reference: digit "
                 f"{report.reference['label_accuracy']:.1%}, style {report.reference['env_accuracy']:.1%} on real "
                 f"validation images).")
    text = "\n".join(lines)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "embedded_models.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "embedded_models.json"), "w") as f:
        json.dump(dict(reference=report.reference, models=results), f, indent=1)
    grid(rows, os.path.join(args.out, "embedded_models.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
