"""Finding and loading Stable Diffusion checkpoints in diffusers format, offline.

A model is named by a local folder, a Hugging Face id already in the local cache (``CompVis/stable-diffusion-v1-4``
is the papers' model), or ``embedded``: the tiny DigitStyles model shipped with the package. Nothing is ever
downloaded; a missing or malformed checkpoint gets an error that names the path and the fix.
"""
import os
import re

import torch

from ..benchmark.shipped import EMBEDDED, EMBEDDED_ALL_STYLES, EMBEDDED_MODEL_PATH, FOLDER

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


class CheckpointError(FileNotFoundError):
    """The named model is not a loadable Stable Diffusion checkpoint on this machine."""


def _looks_like_path(name):
    """A folder rather than a Hugging Face id ("org/name" that is not an existing path)."""
    if os.path.exists(name) or name.startswith((".", "~", os.sep)):
        return True
    return re.fullmatch(r"[\w.-]+/[\w.-]+", name) is None


def validate_checkpoint(folder):
    """Raise ``CheckpointError`` unless ``folder`` holds a diffusers Stable Diffusion checkpoint."""
    if os.path.isfile(folder):
        raise CheckpointError(
            f"{folder} is a single file, not a diffusers folder. Convert it once with diffusers: "
            f"StableDiffusionPipeline.from_single_file('{folder}').save_pretrained('<folder>'), "
            f"then pass <folder>.")
    index = os.path.join(folder, "model_index.json")
    if not os.path.isfile(index):
        raise CheckpointError(
            f"{folder} is not a Stable Diffusion checkpoint in diffusers format: it has no model_index.json. "
            f"Pass the folder that holds model_index.json and unet/, vae/, text_encoder/, tokenizer/, scheduler/ "
            f"(for example a snapshot folder of the Hugging Face cache).")
    missing = [c for c in COMPONENTS if not os.path.isdir(os.path.join(folder, c))]
    if missing:
        raise CheckpointError(f"{folder} is missing the component folder(s) {', '.join(missing)}: a Stable "
                              f"Diffusion checkpoint in diffusers format needs {', '.join(COMPONENTS)}.")
    return folder


def resolve_model(name_or_path):
    """The local folder of a model name: ``embedded`` (the all-styles model; ``generators`` picks the per-test-env
    one for a run), ``embedded-all-styles``, ``embedded-without-<style>``, a folder, or a cached Hugging Face id."""
    from .choice import embedded_folder
    name = (name_or_path or EMBEDDED).strip()
    folder = embedded_folder(name)
    if folder is not None:
        if not os.path.isdir(folder):
            known = sorted(_embedded_names())
            raise CheckpointError(f"the embedded model {name!r} is missing from {folder}: shipped ones are "
                                  f"{', '.join(known)}; reinstall the package, or train them with "
                                  f"`python -m offline_generation train-embedded --data_dir <dir>`")
        return validate_checkpoint(folder)
    if _looks_like_path(name):
        path = os.path.abspath(os.path.expanduser(name))
        if not os.path.exists(path):
            raise CheckpointError(f"model folder {path} does not exist. Pass a folder holding a diffusers "
                                  f"checkpoint (model_index.json), a Hugging Face id in the local cache, or "
                                  f"'{EMBEDDED}'.")
        return validate_checkpoint(path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import HF_HUB_CACHE
    try:
        path = snapshot_download(name, local_files_only=True)
    except Exception as error:  # the hub raises several types for "not cached"
        raise CheckpointError(
            f"'{name}' is not in the Hugging Face cache ({HF_HUB_CACHE}) and models are only loaded offline. "
            f"On a machine with internet run `huggingface-cli download {name}` and copy the cache here "
            f"(or set HF_HOME), or pass a local folder with the checkpoint. ({type(error).__name__})") from None
    return validate_checkpoint(path)


def _embedded_names():
    names = [EMBEDDED_ALL_STYLES] if os.path.isdir(EMBEDDED_MODEL_PATH) else []
    prefix = os.path.basename(EMBEDDED_MODEL_PATH) + "-"
    return names + [EMBEDDED + "-" + n[len(prefix):] for n in os.listdir(FOLDER) if n.startswith(prefix)]


def resolve_dtype(dtype, device):
    """``auto`` is fp16 on CUDA and fp32 elsewhere; half precision is allowed on a CPU when asked (PyTorch has
    CPU kernels for both; it is slower than fp32 there but runs the GPU's code path)."""
    device = torch.device(device)
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype in (None, "auto"):
        resolved = torch.float16 if device.type == "cuda" else torch.float32
    elif dtype in names:
        resolved = names[dtype]
    else:
        raise ValueError(f"unknown dtype {dtype!r}: use auto, float32, float16 or bfloat16")
    if resolved == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"bfloat16 was asked but {torch.cuda.get_device_name(device)} has no bfloat16 support "
                         f"(it needs an Ampere or newer GPU): use --dtype float16")
    return resolved


def resolve_device(device=None):
    """``auto``: CUDA if there is a GPU, else the CPU. Under torchrun or accelerate (``LOCAL_RANK`` set), ``auto``
    and a bare ``cuda`` mean this process's own GPU, ``cuda:<LOCAL_RANK>``: every rank on ``cuda:0`` would share
    one GPU and leave the others idle."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked but no CUDA GPU is available: use --device cpu")
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


# The weight files' names of each component (diffusers' and transformers' conventions), before any variant
WEIGHTS = {"unet": ("diffusion_pytorch_model",), "vae": ("diffusion_pytorch_model",),
           "text_encoder": ("model", "pytorch_model")}
_WEIGHT_FILE = re.compile(r"^(?P<base>[a-z_]+)(?:\.(?P<variant>[A-Za-z0-9]+))?(?:-\d+-of-\d+)?"
                          r"\.(?:safetensors|bin)(?:\.index(?:\.[A-Za-z0-9]+)?\.json)?$")


def weights_variant(folder, component):
    """The variant of a component's weights to load: None for the plain files, else the one variant present
    (``fp16`` first: caches made with ``variant="fp16"`` hold only those); an error naming the folder when it
    holds no weights at all."""
    path = os.path.join(folder, component)
    found = {}
    for name in sorted(os.listdir(path)):
        m = _WEIGHT_FILE.match(name)
        if m and m["base"] in WEIGHTS[component]:
            found.setdefault(m["variant"], []).append(name)
    if None in found:
        return None
    if found:
        return "fp16" if "fp16" in found else sorted(found)[0]
    raise CheckpointError(f"{path} holds no weights ({' or '.join(b + '[.<variant>].safetensors' for b in WEIGHTS[component])}"
                          f"; it has {', '.join(sorted(os.listdir(path))) or 'nothing'}): the checkpoint is "
                          f"incomplete; copy the component's weights there, or pass another checkpoint.")


def load_components(folder, dtype=torch.float32):
    """The five Stable Diffusion components of a validated folder (the plain weights, else a variant such as
    ``fp16`` when only that is there); the safety checker is never loaded."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    from transformers.utils import logging as transformers_logging
    transformers_logging.disable_progress_bar()  # a "Loading weights" bar per model load tells a user nothing

    def kwargs(component):
        return dict(local_files_only=True, torch_dtype=dtype, variant=weights_variant(folder, component))
    return dict(
        unet=UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **kwargs("unet")),
        vae=AutoencoderKL.from_pretrained(folder, subfolder="vae", **kwargs("vae")),
        text_encoder=CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **kwargs("text_encoder")),
        tokenizer=CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer", local_files_only=True),
        scheduler=DDIMScheduler.from_pretrained(folder, subfolder="scheduler", local_files_only=True),
    )


def model_id(folder):
    """A short identifier of a checkpoint for manifests: ``org/name@revision`` for a Hugging Face cache
    snapshot, ``embedded@<weights digest>`` for the shipped model, ``<folder>@<config digest>`` otherwise."""
    import hashlib
    folder = os.path.abspath(folder)
    parts = folder.split(os.sep)
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3][len("models--"):].replace("--", "/") + "@" + parts[-1][:12]
    digest = hashlib.sha256()
    for name in ("unet/config.json", "vae/config.json", "text_encoder/config.json"):
        with open(os.path.join(folder, name), "rb") as f:
            digest.update(f.read())
    weights = [os.path.join(folder, "unet", n) for n in sorted(os.listdir(os.path.join(folder, "unet")))
               if n.endswith((".safetensors", ".bin"))]
    base = os.path.basename(os.path.abspath(EMBEDDED_MODEL_PATH))
    if os.path.dirname(folder) == os.path.abspath(FOLDER) and os.path.basename(folder).startswith(base):
        for path in weights:
            with open(path, "rb") as f:
                digest.update(f.read())
        suffix = os.path.basename(folder)[len(base):]  # "" or "-without-<style>"
        return f"{EMBEDDED + suffix if suffix else EMBEDDED_ALL_STYLES}@{digest.hexdigest()[:12]}"
    for path in weights:  # sizes, not contents: hashing gigabytes on every run is not worth it
        digest.update(f"{os.path.basename(path)}:{os.path.getsize(path)}".encode())
    return f"{folder}@{digest.hexdigest()[:12]}"
