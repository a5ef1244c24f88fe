"""The suite runs against caches it controls, and each path that reads a cache is tested with the file present and
absent: the report's ResNet-50 (torch hub) and a model id in the Hugging Face cache."""
import os
import subprocess
import sys

import pytest
import torch

import caches
from conftest import CACHES, HERMETIC, subprocess_env


def test_torch_and_hugging_face_caches_point_at_this_sessions_empty_folder_here_and_in_subprocesses():
    import huggingface_hub.constants
    assert torch.hub.get_dir().startswith(CACHES) and huggingface_hub.constants.HF_HUB_CACHE.startswith(CACHES)
    assert not os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", caches.RESNET50_FILE))
    seen = subprocess.run([sys.executable, "-c", "import os, torch, huggingface_hub.constants as c; "
                           "print(torch.hub.get_dir()); print(c.HF_HUB_CACHE)"],
                          env=subprocess_env(), capture_output=True, text=True, check=True).stdout.split()
    assert seen == [os.path.join(HERMETIC["TORCH_HOME"], "hub"), HERMETIC["HF_HUB_CACHE"]]


def test_report_resnet50_reads_torch_hubs_file_when_present_and_names_it(tmp_path, monkeypatch):
    from offline_generation import features
    path = caches.write_resnet50(str(tmp_path / "torch"), seed=3)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    extractor = features.resnet50(None, "cpu", random_weights=True)  # weights on the machine win over random
    assert extractor.name == f"resnet50@{caches.RESNET50_FILE}"
    saved = torch.load(path, weights_only=True)
    assert torch.equal(extractor.network.conv1.weight, saved["conv1.weight"])


def test_report_resnet50_without_weights_is_random_only_when_asked_else_names_the_folder(tmp_path, monkeypatch):
    from offline_generation import features
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    assert features.resnet50(None, "cpu", random_weights=True).name == "resnet50@random"
    with pytest.raises(FileNotFoundError, match=f"--extractor_weights.*{tmp_path / 'empty' / 'hub' / 'checkpoints'}"):
        features.resnet50(None, "cpu")


def test_a_model_id_loads_from_the_hugging_face_cache_when_present_and_is_refused_when_absent(tmp_path, monkeypatch):
    import huggingface_hub.constants
    from domainbed_diffusion.diffusion import CheckpointError, LatentDiffusion, resolve_model
    from domainbed_diffusion.diffusion.loading import model_id
    hub = str(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", hub)  # read at import: patch the constant
    with pytest.raises(CheckpointError, match=f"not in the Hugging Face cache \\({hub}\\)"):
        resolve_model(caches.SD_ID)
    snapshot = caches.write_hub_model(hub)
    assert resolve_model(caches.SD_ID) == snapshot
    model = LatentDiffusion.from_pretrained(caches.SD_ID, device="cpu", dtype="float32")
    assert model_id(snapshot) == f"{caches.SD_ID}@{caches.REVISION[:12]}"
    assert tuple(model.unet.config.block_out_channels) == (32, 64)  # the cached tiny model, not another
