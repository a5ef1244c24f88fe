"""The embedded model follows its prompts: a small classifier trained on real DigitStyles images recognises the
prompted digit in the model's text-to-image samples well above chance (10%)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from domainbed_diffusion import digitstyles
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


def test_samples_follow_the_prompted_digit(digitstyles_dir):
    x, y = _real_digitstyles(digitstyles_dir)
    net = _classifier(x, y)
    with torch.no_grad():
        assert (net((x - 0.5) / 0.25).argmax(1) == y).float().mean() > 0.9  # the judge knows real digits
    model = LatentDiffusion.from_pretrained("embedded", device="cpu")
    prompts, labels = [], []
    for label, cls in enumerate(digitstyles.CLASS_NAMES):
        for style in digitstyles.DOMAINS:
            prompts.append(digitstyles.prompt(cls, style))
            labels.append(label)
    images = text_to_image(model, prompts, list(range(len(prompts))), steps=20, guidance=3.0)
    with torch.no_grad():
        accuracy = (net((images - 0.5) / 0.25).argmax(1) == torch.tensor(labels)).float().mean().item()
    print(f"prompted digit recognised in {accuracy:.0%} of {len(prompts)} samples")
    assert accuracy >= 0.5
