"""The GPU code paths, run on the CPU so that a first GPU run is not their first test: half precision through
every generator method and GSD's forward-mode derivative, ``--compile`` (one graph, no recompilation, same
images as eager) and ``--channels_last`` (same images)."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from domainbed_diffusion.diffusion import LatentDiffusion
from domainbed_diffusion.methods import cdga, edsam, gsd, latent_prior
from offline_generation.cli import main as cli_main


# Measured on the embedded model and these digits (pixels in [0, 1], 6 steps): bf16 mean |diff| at most 0.0026,
# max 0.033; fp16 mean 0.0005, max 0.003. The bounds leave about 3x headroom.
TOLERANCE = {"bfloat16": dict(mean=0.01, max=0.1), "float16": dict(mean=0.002, max=0.01)}


@pytest.fixture(scope="module")
def pixels():
    """A seven, a three and a five in DigitStyles' styles: images the embedded model knows."""
    from domainbed_diffusion.benchmark import digitstyles
    digits, targets = digitstyles.load_digits()
    picks = [(int(np.flatnonzero(targets == d)[0]), style) for d, style in ((7, "neon"), (3, "ink"), (5, "sketch"))]
    images = [digitstyles.render_digit(digits, k, style) for k, style in picks]
    return torch.stack([torch.from_numpy(i.astype(np.float32) / 255).permute(2, 0, 1) for i in images])


def every_method(model, x, steps=6):
    """Each method's math on the same three images (6 DDIM steps: CPU half precision is slow)."""
    z = model.encode_images(x.to(model.dtype))
    prompts = ["a seven", "a three", "a five"]
    seeds = [11, 12, 13]
    return dict(
        cdga_pg=cdga.prompt_guided(model, z, [cdga.pg_prompt(c, "neon glow on a dark background") for c in
                                              ("seven", "three", "five")], seeds, 0.6, steps, 3.0),
        cdga_ig=cdga.image_guided(model, x.to(model.dtype), x.flip(0).to(model.dtype), prompts, seeds, 0.6, steps,
                                  3.0),
        edsam=edsam.generate(model, z, prompts, [[s] for s in seeds], 0.5, steps, 1.0)[0],
        latent_prior=latent_prior.generate(model, x.to(model.dtype), "a seven", 2, lambda k: 100 + k, steps,
                                           steps - 1, 1.0, 0.0, (1.0, 90.0, 90.0), 4, 8).images,
    )


@pytest.fixture(scope="module")
def float32_outputs(pixels):
    return every_method(LatentDiffusion.from_pretrained("embedded", device="cpu", dtype="float32"), pixels)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_through_every_generator_method(dtype, pixels, float32_outputs):
    model = LatentDiffusion.from_pretrained("embedded", device="cpu", dtype=dtype)
    assert model.dtype == getattr(torch, dtype)
    for name, out in every_method(model, pixels).items():
        ref = float32_outputs[name]
        assert out.shape == ref.shape and out.dtype == torch.float32 and torch.isfinite(out).all(), name
        diff = (out - ref).abs()
        assert diff.mean() <= TOLERANCE[dtype]["mean"] and diff.max() <= TOLERANCE[dtype]["max"], \
            (name, diff.mean().item(), diff.max().item())


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gsd_forward_mode_derivative_in_half_precision(dtype, pixels):
    """GSD's gradient (jvp through the VAE encoder) in half precision: close to float32's, and to autograd's."""
    grads = {}
    t = torch.tensor([300, 600, 900])
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for precision in ("float32", dtype):
        model = LatentDiffusion.from_pretrained("embedded", device="cpu", dtype=precision)
        for method in ("jvp", "autograd"):
            logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(1)).requires_grad_()
            loss = gsd.gsd_loss(model, pixels, logits.softmax(1)[:, 7], ["a seven"] * 3, t,
                                noise.to(model.dtype), method=method)
            loss.backward()
            assert torch.isfinite(loss) and logits.grad.abs().sum() > 0
            grads[precision, method] = logits.grad
    ref = grads["float32", "jvp"]
    scale = ref.abs().max()
    assert torch.allclose(grads["float32", "autograd"], ref, rtol=1e-3, atol=1e-6 * scale)
    for method in ("jvp", "autograd"):
        assert (grads[dtype, method] - ref).abs().max() <= 0.1 * scale, (method, grads[dtype, method], ref)


def generate(data_dir, out, *extra, methods=("cdga-pg", "edsam")):
    argv = ["--dataset", "Tiny", "--data_dir", data_dir, "--synthetic_root", out, "--model", "embedded",
            "--methods", *methods, "--num_samples", "1", "--batch_size", "5",
            "--domain_descriptions", '{"a": "neon glow", "b": "ink", "c": "pencil"}', *extra]
    assert cli_main(argv) == 0
    images = {}
    for folder, _, files in os.walk(os.path.join(out, "Tiny")):
        for name in files:
            if name.endswith(".png"):
                path = os.path.join(folder, name)
                images[os.path.relpath(path, out)] = np.asarray(Image.open(path), dtype=np.int16)
    return images


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """Three envs of rendered digits (the embedded model's kind of image), two classes, two images each."""
    from domainbed_diffusion.benchmark import digitstyles
    data_dir = str(tmp_path_factory.mktemp("gpu-paths"))
    digits, targets = digitstyles.load_digits()
    for env, style in (("a", "neon"), ("b", "ink"), ("c", "sketch")):
        for name, digit in (("seven", 7), ("three", 3)):
            folder = os.path.join(data_dir, "Tiny", env, name)
            os.makedirs(folder)
            for k, index in enumerate(np.flatnonzero(targets == digit)[:2]):
                Image.fromarray(digitstyles.render_digit(digits, int(index), style)).save(f"{folder}/img{k}.png")
    return data_dir


@pytest.fixture(scope="module")
def eager_images(small_dataset, tmp_path_factory):
    return generate(small_dataset, str(tmp_path_factory.mktemp("eager")))


def test_compile_matches_eager_and_never_recompiles(small_dataset, eager_images, tmp_path):
    """12 sources: cdga-pg's batches of 4 images (8 UNet rows with guidance: a full and a short slice of 5) and
    edsam's 5, 5 and a short 2. After the first compilation any recompilation raises."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = generate(small_dataset, str(tmp_path), "--compile")
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert compiled.keys() == eager_images.keys() and len(compiled) == 36
    worst = max(np.abs(compiled[k] - eager_images[k]).max() for k in compiled)
    assert worst <= 1  # float rounding of a fused kernel can move a pixel by one level


def test_channels_last_gives_the_same_images(small_dataset, eager_images, tmp_path):
    images = generate(small_dataset, str(tmp_path), "--channels_last")
    assert images.keys() == eager_images.keys()
    assert max(np.abs(images[k] - eager_images[k]).max() for k in images) <= 1


def test_half_precision_through_the_generator_command(small_dataset, eager_images, tmp_path):
    """The command line's --dtype reaches the model and its half-precision output is written like float32's."""
    images = generate(small_dataset, str(tmp_path), "--dtype", "bfloat16", "--max_per_class", "1",
                      methods=("edsam",))
    assert len(images) == 6 and set(images) <= set(eager_images)
    diffs = np.concatenate([np.abs(images[k] - eager_images[k]).ravel() for k in images])
    assert diffs.mean() <= 255 * TOLERANCE["bfloat16"]["mean"]
