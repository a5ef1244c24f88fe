"""The first run on a GPU, in a few minutes: does every method work on this machine, at the speed the cost table
plans with?

    python sweeps/first_gpu_run.py --model CompVis/stable-diffusion-v1-4 [--device cuda] [--images 16] [--out x.json]
    python sweeps/first_gpu_run.py --model <tiny checkpoint> --device cpu --small   # the CPU check the tests run

For each dtype the device supports (CUDA: float16, and bfloat16 where the GPU has it; CPU: float32) it loads the
checkpoint, runs each generation method's own path on a handful of random images at its paper's resolution, and
one DomainFusion step on a PACS-sized batch (ResNet-50 at 224 px, random weights: nothing is downloaded); then
prints images/s against the cost table's estimate (``offline_generation.cost``: FLOPs counted on the meta device,
40% of the GPU's dense bf16 peak), peak memory against the card's, and a go / no-go per row: go when the outputs
are finite, memory stays under 90% of the card and the speed is at least a quarter of the estimate.
"""
import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time

import torch

from domainbed_diffusion import catalogue
from offline_generation import cost, throughput

MEMORY_LIMIT = 0.9  # of the card's memory: above it, a real batch (more images, longer prompts) may not fit
SPEED_FLOOR = 0.25  # of the estimate: below it, the path is not the one the table assumes (eager, fp32, ...)


def dtypes(device):
    if device.type != "cuda":
        return ["float32"]
    return ["float16"] + (["bfloat16"] if torch.cuda.is_bf16_supported() else [])


def verdict(finite, memory_fraction, speed_ratio):
    reasons = []
    if not finite:
        reasons.append("non-finite outputs")
    if memory_fraction is not None and memory_fraction > MEMORY_LIMIT:
        reasons.append(f"peak memory {memory_fraction:.0%} of the card")
    if speed_ratio is not None and speed_ratio < SPEED_FLOOR:
        reasons.append(f"{speed_ratio:.2f}x the estimated speed")
    return ("go", "") if not reasons else ("no-go", "; ".join(reasons))


def generation_rows(model, args, device, dtype, total_memory, peak):
    """Each method on a few random images through the generator's own path."""
    rows = []
    unet, vae = cost.sd14_on_meta() if not args.small else (None, None)
    for method in catalogue.methods():
        spec = catalogue.spec(method)
        resolution = 32 if args.small else spec.sampling["resolution"]
        cfg = throughput.method_cfg(method, resolution, args)
        if args.steps:
            cfg = dataclasses.replace(cfg, steps=args.steps)
        runner = spec.runner
        n_sources = max(runner.min_references, -(-args.images // runner.images_per_source(cfg)))
        row = dict(row=f"{method} ({dtype})", method=method, dtype=dtype)
        try:
            with tempfile.TemporaryDirectory() as work:
                root = throughput._dataset(work, resolution, n_sources)
                rate, memory = throughput.generator_throughput(model, method, cfg, root, device)
                finite = _finite_outputs(model, method, cfg, root)
        except Exception as error:  # a method that fails is the answer this script exists to give
            rows.append(dict(row, verdict="no-go", why=f"{type(error).__name__}: {error}"))
            continue
        estimate = None
        if peak and unet is not None:
            f = cost.diffusion_flops(unet, vae, resolution)
            estimate = peak * 1e12 * cost.Assumptions().utilization / spec.runner.flops(cfg, f["unet"], f["encode"],
                                                                                        f["decode"])
        ratio = rate / estimate if estimate else None
        fraction = memory / total_memory if memory and total_memory else None
        go, why = verdict(finite, fraction, ratio)
        rows.append(dict(row, images_per_s=rate, estimate=estimate, ratio=ratio, peak_memory_gib=memory,
                         memory_fraction=fraction, verdict=go, why=why))
    return rows


def _finite_outputs(model, method, cfg, root):
    """Whether a batch of the method's images is finite (NaNs would have been written as black images)."""
    from domainbed_diffusion.generation import make_batches
    from offline_generation.sources import scan
    folder = scan(root, "Bench")
    runner = catalogue.spec(method).make(cfg)
    units = next(iter(make_batches(runner.plan(folder, folder.env_names), runner.units_per_batch or cfg.batch_size)))
    images = [image for _, image in runner.run(model, units, folder, lambda *a, **k: None)]
    return bool(images) and all(image.std() > 0 for image in images)


def domainfusion_row(args, device, dtype, total_memory, peak):
    """One DomainFusion step on a PACS-sized batch after a first one (which loads the model): seconds against the
    table's estimate (on PACS every step refreshes, so one step is a typical one)."""
    row = dict(row=f"DomainFusion step ({dtype})", method="DomainFusion", dtype=dtype)
    step_args = argparse.Namespace(small=args.small, model_dir=args.model_dir, dtype=dtype, refresh_every=None)
    try:
        built = throughput.domainbed_step("DomainFusion", step_args, device,
                                          dict(img2img_steps=args.steps) if args.steps else None)
        if built is None:
            return dict(row, verdict="not run", why="DomainBed is not importable")
        model, minibatches, hp = built
        first = model.update(minibatches)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        seconds, _ = throughput.timed_steps(model, minibatches, 1, device)
        finite = all(math.isfinite(v) for v in first.values() if isinstance(v, float))
    except Exception as error:
        return dict(row, verdict="no-go", why=f"{type(error).__name__}: {error}")
    memory = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    estimate = None
    if peak and not args.small:
        hparams = cost.domainfusion_hparams("PACS", dict(diffusion_dtype=dtype))
        estimate = cost.domainfusion_table("PACS", hparams, cost.Assumptions(peak_tflops=peak))["step_seconds"]
    ratio = estimate / seconds if estimate else None
    fraction = memory / total_memory if memory and total_memory else None
    go, why = verdict(finite, fraction, ratio)
    return dict(row, seconds_per_step=seconds, estimate_seconds=estimate, ratio=ratio, peak_memory_gib=memory,
                memory_fraction=fraction, verdict=go, why=why)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a Stable Diffusion checkpoint: folder or cached id")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=16, help="images per method")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--edsam_m", type=int, default=2)
    parser.add_argument("--small", action="store_true", help="a tiny checkpoint at 32 px, Debug28: a CPU check")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps of every method and of DomainFusion's "
                                                                 "refresh (default: each one's own; a quick check)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not known")
    parser.add_argument("--out", default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    import domainbed_diffusion
    domainbed_diffusion.register()
    from domainbed_diffusion.diffusion import LatentDiffusion
    from domainbed_diffusion.diffusion.loading import resolve_device, resolve_model
    device = resolve_device(args.device)
    args.model_dir = resolve_model(args.model)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    total = torch.cuda.get_device_properties(device).total_memory / 2 ** 30 if device.type == "cuda" else None
    peak = args.peak_tflops or next((v for k, v in throughput.BF16_PEAK.items() if k in name), None)
    print(f"device {name}" + (f", {total:.0f} GiB" if total else "") + (f", bf16 peak {peak:g} TFLOP/s" if peak
                                                                        else ", no peak known: speed not judged"))
    rows = []
    start = time.time()
    for dtype in dtypes(device):
        model = LatentDiffusion.from_pretrained(args.model_dir, device=device, dtype=dtype)
        if device.type == "cuda":
            model.optimize(channels_last=True, compile=False)
        rows += generation_rows(model, args, device, dtype, total, peak)
        del model
        rows.append(domainfusion_row(args, device, dtype, total, peak))
    print(f"{'row':<28}{'speed':>14}{'estimate':>12}{'ratio':>8}{'peak GiB':>10}  verdict")
    for r in rows:
        speed = (f"{r['images_per_s']:.2f} img/s" if "images_per_s" in r else
                 f"{r['seconds_per_step']:.2f} s/step" if "seconds_per_step" in r else "")
        estimate, ratio, memory = r.get("estimate") or r.get("estimate_seconds"), r.get("ratio"), \
            r.get("peak_memory_gib")
        cells = [f"{v:.2f}" if v else "-" for v in (estimate, ratio)] + [f"{memory:.1f}" if memory else "-"]
        why = f": {r['why']}" if r.get("why") else ""
        print(f"{r['row']:<28}{speed:>14}{cells[0]:>12}{cells[1]:>8}{cells[2]:>10}  {r['verdict']}{why}")
    print(f"{sum(r['verdict'] == 'go' for r in rows)} of {len(rows)} rows go ({(time.time() - start) / 60:.1f} min)")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=name, memory_gib=total, peak_tflops=peak, rows=rows), f, indent=1)
    return 0 if all(r["verdict"] in ("go", "not run") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
