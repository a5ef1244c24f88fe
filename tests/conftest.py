"""Shared fixtures. DomainBed is found through ``DOMAINBED_DIR`` (a checkout) or an importable ``domainbed``;
tests that need it skip, with that reason printed, when it is absent.

Every cache the code reads (torch hub checkpoints, the Hugging Face hub, torch.compile's, matplotlib's) points at an
empty folder of this session before anything is imported, in this process and in every subprocess a test starts:
a test never depends on what the user's caches hold. A test that wants a populated cache makes one and points
there."""
import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

CACHES = tempfile.mkdtemp(prefix="domainbed-diffusion-test-caches-")
atexit.register(shutil.rmtree, CACHES, ignore_errors=True)
HERMETIC = {
    "XDG_CACHE_HOME": os.path.join(CACHES, "xdg"),  # torch hub's and others' default root
    "TORCH_HOME": os.path.join(CACHES, "torch"),
    "HF_HOME": os.path.join(CACHES, "huggingface"),
    "HF_HUB_CACHE": os.path.join(CACHES, "huggingface", "hub"),
    "HUGGINGFACE_HUB_CACHE": os.path.join(CACHES, "huggingface", "hub"),
    "HF_HUB_OFFLINE": "1",
    "MPLCONFIGDIR": os.path.join(CACHES, "matplotlib"),
    "TORCHINDUCTOR_CACHE_DIR": os.path.join(CACHES, "torchinductor"),  # torch.compile's, else /tmp/torchinductor_<user>
    "TRITON_CACHE_DIR": os.path.join(CACHES, "triton"),
}
os.environ.update(HERMETIC)  # before torch, huggingface_hub and matplotlib read them (some at import)

import numpy as np
import pytest
from PIL import Image

from domainbed_diffusion import registration

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOMAINBED_DIR = os.environ.get("DOMAINBED_DIR")
if DOMAINBED_DIR:
    DOMAINBED_DIR = os.path.abspath(DOMAINBED_DIR)
    sys.path.insert(0, DOMAINBED_DIR)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [DOMAINBED_DIR, REPO, os.environ.get("PYTHONPATH")] if p)
registration.install()  # an install from source (no .pth in site-packages) still registers

HAVE_DOMAINBED = importlib.util.find_spec("domainbed") is not None
DOMAINBED_REASON = ("DomainBed not found: set DOMAINBED_DIR to a DomainBed checkout "
                    "(git clone https://github.com/facebookresearch/DomainBed) and pip install .[domainbed]")
needs_domainbed = pytest.mark.skipif(not HAVE_DOMAINBED, reason=DOMAINBED_REASON)


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long benchmarks and end-to-end jobs, run with -m slow")


def subprocess_env(**extra):
    """Environment for subprocesses: this repo and DomainBed importable, quiet, single-threaded per process."""
    env = dict(os.environ)
    paths = [p for p in [DOMAINBED_DIR, REPO, env.get("PYTHONPATH")] if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    # DomainBed's sweep runs jobs with a bare `python`: it must be this interpreter
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """A randomly initialised Stable-Diffusion-shaped checkpoint (tiny configs) in diffusers format."""
    from domainbed_diffusion.diffusion import tiny
    folder = str(tmp_path_factory.mktemp("tiny-sd"))
    words = ["a", "cat", "dog", "bird", "style", "domain", "photo", "of", "painting", "sketch", "seven"]
    cfg = dict(tiny.TINY, unet_channels=(32, 64), vae_channels=(32, 32), text_width=32, max_tokens=16)
    components = tiny.build_components(words, folder, cfg=cfg, seed=0)
    return tiny.save_checkpoint(components, folder)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    from domainbed_diffusion.diffusion import LatentDiffusion
    return LatentDiffusion.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")


def write_image_dataset(root, envs, classes, per_class, size=(20, 24), seed=0):
    rng = np.random.RandomState(seed)
    for env in envs:
        for cls in classes:
            folder = os.path.join(root, env, cls)
            os.makedirs(folder, exist_ok=True)
            for k in range(per_class):
                Image.fromarray((rng.rand(size[0], size[1], 3) * 255).astype(np.uint8)).save(
                    os.path.join(folder, f"img{k}.png"))
    return root


@pytest.fixture
def tiny_dataset(tmp_path):
    """A three-env, two-class image dataset in DomainBed's layout, with an env name that has a space."""
    data_dir = tmp_path / "data"
    write_image_dataset(str(data_dir / "Tiny"), ["env a", "env_b", "env_c"], ["cat", "dog"], per_class=3)
    return str(data_dir)


@pytest.fixture(scope="session")
def digitstyles_dir(tmp_path_factory):
    """DigitStyles written once per session (without the pre-training pool)."""
    from domainbed_diffusion.benchmark import digitstyles
    data_dir = str(tmp_path_factory.mktemp("digitstyles"))
    digitstyles.prepare(data_dir, pool=False, verbose=False)
    return data_dir
