"""Throughput benchmark: the generator and DomainFusion's step on Stable Diffusion v1.x's architecture.

    python -m offline_generation throughput --device cuda --dtype bfloat16 [--compile] [--out bench.json]
    python -m offline_generation throughput --tiny --device cpu        # the smoke test CI runs
    python -m offline_generation throughput --model embedded --device cpu --methods cdga-pg@32 --df_steps 0

Builds UNet2DConditionModel, AutoencoderKL and the CLIP text encoder at SD v1-4's configs with random weights
(speed does not depend on the weights; nothing is downloaded), then measures in one process:

- the naive baseline: one ``StableDiffusionImg2ImgPipeline`` call per image, fp32, default attention;
- the strong baseline a practitioner would write: the same pipeline called on a whole batch (``--batch_size``
  prompts, images and per-image generators) in the benchmark's dtype;
- the generator's own path (planning, batched encode/denoise/decode, the PNG writer thread) for cdga-pg at 320
  and 256 px, edsam (inversion + 10-step regeneration at 256 px) and latent-prior;
- DomainFusion's training step against ERM's on the same batch (ResNet-50 at 224 px, SD at 320 px), when
  DomainBed is importable.

For each: images/s, the ratio to the baseline, achieved TFLOP/s from UNet and VAE FLOPs counted with
``torch.utils.flop_counter`` at the shapes used, the fraction of the GPU's dense bf16 peak, and peak memory.
"""
import argparse
import json
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from domainbed_diffusion import catalogue

SD14_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                 attention_head_dim=8)
SD14_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
                layers_per_block=2, latent_channels=4, sample_size=512, scaling_factor=0.18215)
SD14_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu")
# Dense bf16 tensor-core peaks (TFLOP/s) by device name.
BF16_PEAK = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "A10": 125.0, "V100": 125.0}
WORDS = ["a", "photo", "of", "dog", "cat", "art", "painting", "sketch", "drawing", "cartoon", "photorealistic"]


def build(tiny, folder):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from domainbed_diffusion.diffusion import tiny as small
    torch.manual_seed(0)
    if tiny:
        return small.build_components(WORDS, folder)
    tokenizer = small.write_clip_tokenizer(WORDS, os.path.join(folder, "tokenizer"), max_length=77)
    text = CLIPTextConfig(**SD14_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
    return dict(unet=UNet2DConditionModel(**SD14_UNET), vae=AutoencoderKL(**SD14_VAE),
                text_encoder=CLIPTextModel(text), tokenizer=tokenizer, scheduler=DDIMScheduler(**small.SD_SCHEDULER))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def count_flops(model, resolution):
    """FLOPs of one UNet forward, one VAE encode and one VAE decode of a single image at ``resolution``."""
    from torch.utils.flop_counter import FlopCounterMode
    latent = resolution // model.vae_scale_factor
    z = torch.zeros(1, model.unet.config.in_channels, latent, latent, device=model.device, dtype=model.dtype)
    cond = model.encode_prompts(["a photo of a dog"])
    x = torch.zeros(1, 3, resolution, resolution, device=model.device)
    out = {}
    with torch.no_grad():
        for name, fn in [("unet", lambda: model.unet(z, 10, encoder_hidden_states=cond)),
                         ("encode", lambda: model.encode(x)), ("decode", lambda: model.decode_latents(z))]:
            counter = FlopCounterMode(display=False)
            with counter:
                fn()
            out[name] = counter.get_total_flops()
    return out


def _dataset(root, resolution, n):
    rng = np.random.RandomState(0)
    for env in ("a", "b"):
        os.makedirs(os.path.join(root, "Bench", env, "dog"), exist_ok=True)
        for k in range(n):
            Image.fromarray((rng.rand(resolution, resolution, 3) * 255).astype(np.uint8)).save(
                os.path.join(root, "Bench", env, "dog", f"{k:05d}.png"))
    return root


def baseline(components, n, cfg, device):
    """One StableDiffusionImg2ImgPipeline call per image, fp32: images/s."""
    from diffusers import StableDiffusionImg2ImgPipeline
    pipe = StableDiffusionImg2ImgPipeline(**components, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False).to(device, torch.float32)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.zeros((cfg.resolution, cfg.resolution, 3), np.uint8))

    def one(seed):
        return pipe("a photo of a dog, art painting", image=image, strength=cfg.strength,
                    num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                    generator=torch.Generator(device).manual_seed(seed)).images[0]
    one(0)  # warm-up
    _sync(device)
    start = time.perf_counter()
    for seed in range(n):
        one(seed + 1)
    _sync(device)
    return n / (time.perf_counter() - start)


def baseline_batched(components, n, cfg, device, dtype, batch_size):
    """The same pipeline called on whole batches of ``batch_size`` images, in ``dtype``: images/s."""
    from diffusers import StableDiffusionImg2ImgPipeline
    pipe = StableDiffusionImg2ImgPipeline(**components, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False).to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.zeros((cfg.resolution, cfg.resolution, 3), np.uint8))

    def batch(first, size):
        return pipe(["a photo of a dog, art painting"] * size, image=[image] * size, strength=cfg.strength,
                    num_inference_steps=cfg.steps, guidance_scale=cfg.guidance,
                    generator=[torch.Generator(device).manual_seed(first + k) for k in range(size)]).images
    batch(0, min(batch_size, n))  # warm-up
    _sync(device)
    start = time.perf_counter()
    made = 0
    while made < n:
        made += len(batch(made + 1, min(batch_size, n - made)))
    _sync(device)
    return n / (time.perf_counter() - start)


def per_image_flops(method, cfg, flops):
    """UNet + VAE FLOPs of one output image of a method (its spec's count)."""
    return catalogue.spec(method).runner.flops(cfg, flops["unet"], flops["encode"], flops["decode"])


def generator_throughput(model, method, cfg, root, device):
    """The generator's path end to end (planning, batches, writer thread): images/s and peak GPU memory."""
    from .generate import make_batches, run_method
    from .sources import scan
    folder = scan(root, "Bench")
    runner = catalogue.spec(method).make(cfg)
    batches = list(make_batches(runner.plan(folder, folder.env_names), runner.units_per_batch or cfg.batch_size))
    with tempfile.TemporaryDirectory() as out:
        run_method(model, folder, method, runner, batches[:1], out, 1, 0)  # warm-up (and compilation)
    with tempfile.TemporaryDirectory() as out:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        start = time.perf_counter()
        made = run_method(model, folder, method, runner, batches, out, 1, 0)
        _sync(device)
        elapsed = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    return made / elapsed, memory


def method_cfg(method, resolution, args):
    """The method's own defaults, at ``resolution``; latent-prior at a fixed bandwidth (no search) and few
    tries, so the benchmark times generation, not the bandwidth estimate."""
    own = dict(domain_descriptions=json.dumps({"a": "art painting", "b": "sketch drawing"}), bandwidth=0.0,
               max_tries=5, num_samples=args.edsam_m if method == "edsam" else None)
    spec = catalogue.spec(method)
    return spec.config(args.small, resolution=resolution, dataset="Bench", batch_size=args.batch_size,
                       **{k: v for k, v in own.items() if k in spec.settings()})


def domainbed_step(algorithm, args, device, change=None):
    """An ``algorithm`` built as DomainBed builds it for a PACS-sized batch (``args.small``: Debug28's) with random
    weights, and its minibatches; None when DomainBed is not importable."""
    import importlib.util
    if importlib.util.find_spec("domainbed") is None:
        return None
    import torchvision
    from domainbed import algorithms, datasets, hparams_registry

    import domainbed_diffusion
    from domainbed_diffusion.training import context
    domainbed_diffusion.register()
    dataset_name, hparams_dataset = ("Debug28", "Debug28") if args.small else ("Debug224", "PACS")
    dataset = datasets.get_dataset_class(dataset_name)("", [], {})
    envs = len(dataset)
    hp = hparams_registry.default_hparams(algorithm, hparams_dataset)
    hp.update(resnet50_augmix=False, batch_size=4 if args.small else 16, **(change or {}))
    if algorithm == "DomainFusion":
        hp.update(diffusion_model=args.model_dir, diffusion_dtype=args.dtype)
        if args.refresh_every:
            hp.update(refresh_every=args.refresh_every)
    context.set_run_context(context.current())
    x = torch.randn(envs, hp["batch_size"], *dataset.input_shape, device=device)
    y = torch.randint(0, dataset.num_classes, (envs, hp["batch_size"]), device=device)
    pretrained_resnet50 = torchvision.models.resnet50
    # DomainBed asks for ImageNet weights; speed does not depend on them and nothing is downloaded here
    torchvision.models.resnet50 = lambda *a, **k: pretrained_resnet50(weights=None)
    try:
        model = algorithms.get_algorithm_class(algorithm)(dataset.input_shape, dataset.num_classes, envs, hp)
    finally:
        torchvision.models.resnet50 = pretrained_resnet50
    return model.to(device), [(x[i], y[i]) for i in range(envs)], hp


def refresh_window(hparams, steps):
    """``steps`` rounded up to whole refresh periods: a timed window that holds the refreshes a run pays, at the
    frequency it pays them."""
    return -(-steps // hparams["refresh_every"]) * hparams["refresh_every"]


def timed_steps(model, minibatches, steps, device):
    """Seconds per step over ``steps`` updates, and how many of them refreshed DomainFusion's set."""
    _sync(device)
    start = time.perf_counter()
    refreshed = sum("refreshed" in (model.update(minibatches) or {}) for _ in range(steps))
    _sync(device)
    return (time.perf_counter() - start) / steps, refreshed


def domainfusion_step_cost(args, device):
    """Per-step seconds of ERM, DomainFusion without GSD and with GSD on the same batch and backbone; DomainFusion
    over whole refresh periods at the registry's frequency (``args.refresh_every`` over it)."""
    out = {}
    for name, algorithm, change in [("ERM", "ERM", {}), ("DomainFusion w/o GSD", "DomainFusion", {"lambda_gsd": 0.0}),
                                    ("DomainFusion", "DomainFusion", {})]:
        built = domainbed_step(algorithm, args, device, change)
        if built is None:
            return {"skipped": "DomainBed is not importable"}
        model, minibatches, hp = built
        steps = args.df_steps
        if algorithm == "DomainFusion":
            steps = refresh_window(hp, args.df_steps)
            out["refresh_every"], out["window"] = hp["refresh_every"], steps
        for _ in range(2):
            model.update(minibatches)
        out[name], refreshed = timed_steps(model, minibatches, steps, device)
        if name == "DomainFusion":
            out["refreshes_in_window"] = refreshed
        out["batch"] = len(minibatches) * hp["batch_size"]
        del model
    out["GSD overhead"] = out["DomainFusion"] / out["DomainFusion w/o GSD"] - 1
    out["DomainFusion / ERM"] = out["DomainFusion"] / out["ERM"]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m offline_generation throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--tiny", action="store_true", help="tiny configs (a CPU smoke test), not SD v1-4's")
    parser.add_argument("--model", default=None, help="measure this checkpoint ('embedded', a folder, a cached id) "
                                                       "instead of SD v1-4's architecture with random weights")
    parser.add_argument("--images", type=int, default=64, help="images per measured workload")
    parser.add_argument("--baseline_images", type=int, default=4, help="images of the per-image baseline")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--edsam_m", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--no_channels_last", action="store_true")
    parser.add_argument("--methods", nargs="+", default=["cdga-pg@320", "cdga-pg@256", "edsam@256", "latent-prior@256"])
    parser.add_argument("--df_steps", type=int, default=5, help="timed DomainFusion steps, rounded up to whole "
                                                                 "refresh periods (0: skip)")
    parser.add_argument("--refresh_every", type=int, default=None,
                        help="DomainFusion's refresh period (default: the registry's for the dataset, 1 on PACS)")
    parser.add_argument("--peak_tflops", type=float, default=None, help="dense bf16 peak of the device")
    parser.add_argument("--out", default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    from domainbed_diffusion.diffusion import LatentDiffusion
    from domainbed_diffusion.diffusion.loading import resolve_device, resolve_dtype
    from domainbed_diffusion.diffusion.tiny import save_checkpoint
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype if args.dtype != "auto" or device.type != "cuda" else "bfloat16", device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((v for k, v in BF16_PEAK.items() if k in name), None)
    results = {"device": name, "dtype": str(dtype), "tiny": args.tiny, "date": time.strftime("%Y-%m-%d"),
               "workloads": {}}
    from domainbed_diffusion.diffusion.loading import load_components, resolve_model
    # the tiny configs and the embedded model work at 32 px with the embedded model's settings
    model_dir = resolve_model(args.model) if args.model is not None else None
    small = args.small = args.tiny or model_dir == resolve_model("embedded")
    with tempfile.TemporaryDirectory() as work:
        if args.model is not None:
            args.model_dir = model_dir
            components = load_components(args.model_dir, torch.float32)
        else:
            components = build(args.tiny, os.path.join(work, "model"))
            args.model_dir = save_checkpoint(components, os.path.join(work, "model"))
        res_base = 32 if small else 256
        base_cfg = method_cfg("cdga-pg", res_base, args)
        base = baseline(components, args.baseline_images, base_cfg, device)
        results["baseline"] = {"images_per_s": base, "resolution": res_base, "steps": base_cfg.steps,
                               "strength": base_cfg.strength, "guidance": base_cfg.guidance}
        print(f"baseline (StableDiffusionImg2ImgPipeline per image, fp32) at {res_base}px: {base:.3f} images/s",
              flush=True)
        batched = baseline_batched(components, args.images, base_cfg, device, dtype, args.batch_size)
        results["batched_baseline"] = {"images_per_s": batched, "batch_size": args.batch_size,
                                       "dtype": str(dtype)}
        print(f"batched baseline (the pipeline on batches of {args.batch_size}, {dtype}) at {res_base}px: "
              f"{batched:.3f} images/s", flush=True)
        model = LatentDiffusion(**components).to(device, dtype)
        model.optimize(channels_last=not args.no_channels_last and device.type == "cuda", compile=args.compile,
                       batch_size=args.batch_size)
        for spec in args.methods:
            method, resolution = spec.split("@")
            resolution = 32 if small else int(resolution)
            cfg = method_cfg(method, resolution, args)
            runner = catalogue.spec(method).runner
            n_sources = max(runner.min_references, args.images // runner.images_per_source(cfg))
            root = _dataset(os.path.join(work, f"data-{method}-{resolution}"), resolution, n_sources)
            rate, memory = generator_throughput(model, method, cfg, root, device)
            flops = count_flops(model, resolution)
            tflops = rate * per_image_flops(method, cfg, flops) / 1e12
            row = {"images_per_s": rate, "ratio_to_baseline": rate / base,
                   "ratio_to_batched_baseline": rate / batched, "tflops": tflops,
                   "fraction_of_bf16_peak": tflops / peak if peak else None, "peak_memory_gib": memory,
                   "unet_gflop": flops["unet"] / 1e9, "resolution": resolution, "steps": cfg.steps}
            results["workloads"][spec] = row
            print(f"{spec}: {rate:.2f} images/s ({rate / base:.1f}x the per-image baseline, {rate / batched:.2f}x "
                  f"the batched one), {tflops:.3g} TFLOP/s"
                  + (f" = {tflops / peak:.0%} of bf16 peak" if peak else "")
                  + (f", peak memory {memory:.1f} GiB" if memory else ""), flush=True)
        if args.df_steps:
            results["domainfusion_step_s"] = domainfusion_step_cost(args, device)
            print("DomainFusion step cost:", json.dumps(results["domainfusion_step_s"]), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return results
