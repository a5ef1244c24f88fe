"""Caches as a DomainBed user's machine holds them: torchvision's ImageNet ResNet-50 file in torch's hub folder and a
Stable Diffusion checkpoint under ``CompVis/stable-diffusion-v1-4`` in the Hugging Face hub cache (both tiny or
random: their presence is what matters). Tests use these writers to test the cache-present paths in a temporary
folder; CI runs ``python tests/caches.py HOME`` to fill a home folder's usual places and then runs the suite with
that home, so a test that reads the real caches instead of its own fails there.
"""
import os
import sys

RESNET50_FILE = "resnet50-0676ba61.pth"  # torchvision's ImageNet weights, by the name torch hub saves them under
SD_ID = "CompVis/stable-diffusion-v1-4"
REVISION = "0" * 40  # a snapshot's commit hash, as the hub cache names its folders


def write_resnet50(torch_home, seed=0):
    """A ResNet-50 state dict of random weights at ``<torch_home>/hub/checkpoints/resnet50-0676ba61.pth``."""
    import torch
    import torchvision
    folder = os.path.join(torch_home, "hub", "checkpoints")
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    path = os.path.join(folder, RESNET50_FILE)
    torch.save(torchvision.models.resnet50().state_dict(), path)
    return path


def write_hub_model(hub_cache, repo_id=SD_ID, seed=0):
    """A tiny random Stable-Diffusion-shaped checkpoint in the hub cache's layout
    (``models--org--name/snapshots/<revision>`` and ``refs/main``); returns the snapshot folder."""
    from domainbed_diffusion.diffusion import tiny
    repo = os.path.join(hub_cache, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", REVISION)
    os.makedirs(snapshot, exist_ok=True)
    cfg = dict(tiny.TINY, unet_channels=(32, 64), vae_channels=(32, 32), text_width=32, max_tokens=16)
    tiny.save_checkpoint(tiny.build_components(["a", "photo", "of", "dog"], snapshot, cfg=cfg, seed=seed), snapshot)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(REVISION)
    return snapshot


def populate_home(home):
    """Both files where torch and huggingface_hub look by default under ``home`` (``~/.cache/...``)."""
    cache = os.path.join(home, ".cache")
    return write_resnet50(os.path.join(cache, "torch")), write_hub_model(os.path.join(cache, "huggingface", "hub"))


if __name__ == "__main__":
    for path in populate_home(sys.argv[1]):
        print("wrote", path)
