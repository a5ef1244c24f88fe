"""Loading and the shared diffusion operations, on a tiny random Stable-Diffusion-shaped checkpoint."""
import json
import os

import pytest
import torch

from domainbed_diffusion.diffusion import CheckpointError, LatentDiffusion, generators_from_seeds, resolve_model
from domainbed_diffusion.diffusion.loading import model_id, resolve_dtype
from domainbed_diffusion.methods import gsd


def test_folder_that_is_not_a_checkpoint_is_named_in_the_error(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(CheckpointError, match=str(tmp_path)) as error:
        resolve_model(str(tmp_path))
    assert "model_index.json" in str(error.value)


def test_checkpoint_missing_components(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    (tmp_path / "unet").mkdir()
    with pytest.raises(CheckpointError, match="vae, text_encoder, tokenizer, scheduler"):
        resolve_model(str(tmp_path))


def test_missing_folder_and_uncached_id_and_single_file(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_model(str(tmp_path / "nowhere"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="huggingface-cli download someone/not-cached"):
        resolve_model("someone/not-cached")
    single = tmp_path / "model.safetensors"
    single.write_bytes(b"0")
    with pytest.raises(CheckpointError, match="from_single_file"):
        resolve_model(str(single))


def test_dtypes_resolve_on_a_cpu():
    assert resolve_dtype("float16", "cpu") == torch.float16 and resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "cpu") == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", "cpu")


def test_loads_from_a_folder_with_from_pretrained(tiny_checkpoint, tiny_model):
    assert tiny_model.device.type == "cpu" and tiny_model.dtype == torch.float32
    assert tiny_model.model_id.startswith(tiny_checkpoint)
    assert model_id(tiny_checkpoint) == tiny_model.model_id
    for module in (tiny_model.unet, tiny_model.vae, tiny_model.text_encoder):
        assert not any(p.requires_grad for p in module.parameters())


def test_tokenizer_keeps_our_words_whole(tiny_model):
    tokens = tiny_model.tokenizer.tokenize("a cat, painting of a dog")
    assert tokens == ["a</w>", "cat</w>", ",</w>", "painting</w>", "of</w>", "a</w>", "dog</w>"]
    assert tiny_model.tokenizer.tokenize("zebra")  # unknown words still tokenize (into pieces)


def _images(n, seed=0):
    return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_batching_does_not_change_results(tiny_model):
    """Per-image generators: an image's result is the same alone or in a batch (fp32, small tolerance)."""
    m = tiny_model
    z = m.encode_images(_images(6))
    prompts = ["a cat", "a dog", "a bird", "a cat", "a dog", "a bird"]
    seeds = [11, 12, 13, 14, 15, 16]
    full = m.img2img(z, prompts, 0.75, 8, 3.0, generators_from_seeds(seeds))
    part = m.img2img(z[2:4], prompts[2:4], 0.75, 8, 3.0, generators_from_seeds(seeds[2:4]))
    assert torch.allclose(full[2:4], part, atol=1e-4)
    stochastic = m.denoise(z, prompts, 8, 5, 1.0, eta=0.5, generators=generators_from_seeds(seeds))
    alone = m.denoise(z[5:], prompts[5:], 8, 5, 1.0, eta=0.5, generators=generators_from_seeds(seeds[5:]))
    assert torch.allclose(stochastic[5:], alone, atol=1e-4)
    other_seed = m.img2img(z[2:3], prompts[2:3], 0.75, 8, 3.0, generators_from_seeds([99]))
    assert not torch.allclose(full[2:3], other_seed, atol=1e-3)


def test_img2img_runs_int_steps_times_strength(tiny_model):
    m = tiny_model
    z = m.encode_images(_images(2))
    assert torch.equal(m.img2img(z, ["a cat"] * 2, 0.05, 10, 1.0, generators_from_seeds([1, 2])), z)
    assert m.strength_steps(50, 0.75) == 37 and m.strength_steps(10, 1.0) == 10


def test_inversion_then_denoising_starts_where_it_ended(tiny_model):
    """Inverting k of n steps lands on the noise level the last k denoising steps start from."""
    m = tiny_model
    m.inverse_scheduler.set_timesteps(10)
    assert int(m.inverse_scheduler.timesteps[5]) == int(m.timesteps(10)[10 - 6])


def test_decode_returns_pixels_in_unit_range(tiny_model):
    out = tiny_model.decode_latents(tiny_model.encode_images(_images(3)))
    assert out.shape == (3, 3, 32, 32) and out.min() >= 0 and out.max() <= 1


def _gsd_inputs(m, n=3):
    images = _images(n, seed=3)
    t = torch.tensor([100, 500, 900])[:n]
    noise = torch.randn(n, 4, 32 // m.vae_scale_factor, 32 // m.vae_scale_factor,
                        generator=torch.Generator().manual_seed(5))
    return images, t, noise


def test_gsd_gradient_is_the_score_residual_pushed_through_x(tiny_model):
    """Autograd through VAE encoder and confidence, with the UNet Jacobian dropped by hand, equals GSD's."""
    m = tiny_model
    images, t, noise = _gsd_inputs(m)
    prompts = ["a cat", "a dog", "a bird"]
    logits = torch.randn(3, 5, requires_grad=True)
    p = logits.softmax(1)[:, 0]
    gsd.gsd_loss(m, images, p, prompts, t, noise, method="autograd").backward()
    ours = logits.grad.clone()

    # by hand: z(theta) = E(p x0); L = sum(stopgrad(w (eps_hat(z_t) - eps)) * z) / B
    logits.grad = None
    p = logits.softmax(1)[:, 0]
    x0 = images * 2 - 1
    z = m.vae.encode(p.view(-1, 1, 1, 1) * x0).latent_dist.mean * m.latent_scale
    with torch.no_grad():
        noisy = m.scheduler.add_noise(z, noise, t)
        eps_hat = m.unet(noisy, t, encoder_hidden_states=m.encode_prompts(prompts)).sample
        w = (1 - m.scheduler.alphas_cumprod[t]).view(-1, 1, 1, 1)
        residual = w * (eps_hat - noise)
    torch.autograd.backward(z, residual / 3)
    assert torch.allclose(ours, logits.grad, atol=1e-6)
    assert ours.abs().sum() > 0


def test_gsd_forward_mode_gives_the_same_gradient(tiny_model):
    m = tiny_model
    images, t, noise = _gsd_inputs(m)
    prompts = ["a cat", "a dog", "a bird"]
    grads = {}
    for method in ("autograd", "jvp"):
        logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
        gsd.gsd_loss(m, images, logits.softmax(1)[:, 1], prompts, t, noise, method=method).backward()
        grads[method] = logits.grad
    assert torch.allclose(grads["autograd"], grads["jvp"], rtol=1e-3, atol=1e-6)


def test_gsd_leaves_diffusion_weights_unchanged(tiny_model):
    m = tiny_model
    before = {k: v.clone() for k, v in m.unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in m.vae.state_dict().items()}
    classifier = torch.nn.Linear(3 * 32 * 32, 3)
    opt = torch.optim.SGD(classifier.parameters(), lr=0.1)
    images, t, noise = _gsd_inputs(m)
    for _ in range(2):
        p = classifier(images.flatten(1)).softmax(1)[:, 0]
        loss = gsd.gsd_loss(m, images, p, ["a cat"] * 3, t, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in m.unet.state_dict().items())
    assert all(torch.equal(vae_before[k], v) for k, v in m.vae.state_dict().items())
    assert all(p.grad is None for p in list(m.unet.parameters()) + list(m.vae.parameters()))
    assert classifier.weight.grad is not None


def test_embedded_model_is_shipped_and_loads():
    folder = resolve_model("embedded")
    assert os.path.isfile(os.path.join(folder, "model_index.json"))
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs)
    assert total < 15 * 2 ** 20  # a few MB
    m = LatentDiffusion.from_pretrained("embedded", device="cpu")
    assert m.model_id.startswith("embedded-all-styles@")  # "embedded" outside DigitStyles runs
    assert m.tokenizer.tokenize("a seven, neon glow on a dark background") == [
        "a</w>", "seven</w>", ",</w>", "neon</w>", "glow</w>", "on</w>", "a</w>", "dark</w>", "background</w>"]
