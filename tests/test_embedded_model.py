"""The embedded models follow their prompts: a small classifier trained on real DigitStyles images recognises the
prompted digit in each model's text-to-image samples well above chance (10%); the per-test-env models are what
their recipe makes, byte for byte."""
import filecmp
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed_diffusion.benchmark import digitstyles
from domainbed_diffusion.diffusion import LatentDiffusion
from offline_generation.preview import text_to_image


def _real_digitstyles(data_dir):
    import os

    import numpy as np
    from PIL import Image
    xs, ys = [], []
    root = os.path.join(data_dir, digitstyles.DATASET)
    for env in digitstyles.DOMAINS:
        for label, cls in enumerate(digitstyles.CLASS_NAMES):
            folder = os.path.join(root, env, cls)
            for name in sorted(os.listdir(folder)):
                xs.append(np.asarray(Image.open(os.path.join(folder, name)).convert("RGB")))
                ys.append(label)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor(ys)


def _classifier(x, y, steps=400):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 8 * 8, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(len(x), (64,), generator=g)
        loss = F.cross_entropy(net((x[idx] - 0.5) / 0.25), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def judge(digitstyles_dir):
    x, y = _real_digitstyles(digitstyles_dir)
    net = _classifier(x, y)
    with torch.no_grad():
        assert (net((x - 0.5) / 0.25).argmax(1) == y).float().mean() > 0.9  # the judge knows real digits
    return net


@pytest.mark.parametrize("name", ["embedded-all-styles"] + [f"embedded-without-{s}" for s in digitstyles.DOMAINS])
def test_samples_follow_the_prompted_digit(judge, name):
    """Prompts in the four benchmark styles, the held-out model's unseen one included."""
    net = judge
    model = LatentDiffusion.from_pretrained(name, device="cpu")
    prompts, labels = [], []
    for label, cls in enumerate(digitstyles.CLASS_NAMES):
        for style in digitstyles.DOMAINS:
            prompts.append(digitstyles.prompt(cls, style))
            labels.append(label)
    images = text_to_image(model, prompts, list(range(len(prompts))), steps=20, guidance=3.0)
    with torch.no_grad():
        accuracy = (net((images - 0.5) / 0.25).argmax(1) == torch.tensor(labels)).float().mean().item()
    print(f"{name}: prompted digit recognised in {accuracy:.0%} of {len(prompts)} samples")
    assert accuracy >= 0.5


def test_the_held_out_recipe_is_byte_reproducible_and_resumes(tmp_path, monkeypatch):
    """A short version of the recipe (a few steps per stage, every 8th pool image) twice from scratch, then once
    more resumed from the cached base: every file of the models is the same bytes; the card says which styles each
    saw."""
    from domainbed_diffusion.diffusion.choice import trained_on
    from offline_generation import train_embedded
    from offline_generation.train_embedded import train_held_out
    load_pool = digitstyles.load_pool
    monkeypatch.setattr(train_embedded.digitstyles, "load_pool", lambda data_dir: (
        lambda images, labels: (images[::8], labels[::8]))(*load_pool(data_dir)))
    data_dir = str(tmp_path / "data")
    steps = dict(vae_steps=2, base_steps=2, finetune_steps=2)
    runs = []
    for k in range(2):
        out = str(tmp_path / f"models{k}")
        train_held_out(data_dir, out, ("neon", "ink"), work_dir=str(tmp_path / f"base{k}"), **steps)
        runs.append(out)
    resumed = str(tmp_path / "resumed")
    train_held_out(data_dir, resumed, ("ink",), work_dir=str(tmp_path / "base0"), **steps)
    for style in ("neon", "ink"):
        folders = [os.path.join(r, f"digitstyles-ldm-without-{style}") for r in runs + [resumed]][:3 if style ==
                                                                                                  "ink" else 2]
        files = sorted(os.path.relpath(os.path.join(d, f), folders[0]) for d, _, fs in os.walk(folders[0])
                       for f in fs)
        assert any(f.endswith(".safetensors") for f in files)
        for other in folders[1:]:
            match, mismatch, errors = filecmp.cmpfiles(folders[0], other, files, shallow=False)
            assert not mismatch and not errors, (style, mismatch, errors)
        assert trained_on(folders[0]) == sorted(set(digitstyles.POOL_STYLES) - {style})


def test_a_training_stage_interrupted_and_resumed_ends_with_the_same_weights(tmp_path, capsys):
    """Both stages of the recipe, four steps straight versus two, an interruption, and two more from the saved
    state: the same weights to the bit."""
    from domainbed_diffusion.diffusion import tiny
    from offline_generation.train_embedded import prompt_ids, train_denoiser, train_vae, vocabulary

    def fresh():
        return tiny.build_components(vocabulary(), str(tmp_path / "tokenizer"), seed=0)

    images = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    straight = train_vae(fresh()["vae"], images, 4, 4, 1e-3)
    state = str(tmp_path / "vae.state")
    halfway = train_vae(fresh()["vae"], images, 4, 4, 1e-3, state=state, every=2, stop_at=2)
    assert torch.load(state, weights_only=False)["step"] == 2
    assert not all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), halfway.state_dict().values()))
    capsys.readouterr()
    resumed = train_vae(fresh()["vae"], images, 4, 4, 1e-3, state=state, every=2)
    assert "at step 2" in capsys.readouterr().out  # it ran the last two steps only
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))

    parts = fresh()
    latents = torch.randn(16, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    ids = prompt_ids(parts["tokenizer"], [("seven", "neon")] * 16)
    a = train_denoiser(parts["unet"], parts["text_encoder"], parts["scheduler"], latents, ids, 4, 4, 5e-4)
    state = str(tmp_path / "unet.state")
    parts = fresh()
    train_denoiser(parts["unet"], parts["text_encoder"], parts["scheduler"], latents, ids, 4, 4, 5e-4, state=state,
                   every=2, stop_at=2)
    parts = fresh()
    b = train_denoiser(parts["unet"], parts["text_encoder"], parts["scheduler"], latents, ids, 4, 4, 5e-4,
                       state=state, every=2)
    assert "at step 2" in capsys.readouterr().out
    for x, y in zip(a, b):  # the EMA copies of the UNet and the text encoder
        assert all(torch.equal(p, q) for p, q in zip(x.state_dict().values(), y.state_dict().values()))
