"""Image features for the synthetic-domain report: pluggable extractors and a per-image cache.

An extractor maps images (B, 3, R, R) in [0, 1] to features (B, D). ``auto`` takes Inception where its weights
are on this machine (torchmetrics' FID network, ``--extractor_weights``), else the DomainBed featurizer in use:
the embedded pretrained MNIST_CNN for DigitStyles, an ImageNet ResNet-50 for the papers' datasets (its weights
from ``--extractor_weights`` or torchvision's local cache; nothing is downloaded).
"""
import glob
import os
import sys

import numpy as np
import torch

EXTRACTORS = ("auto", "featurizer", "resnet50", "inception")
INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's file name


class Extractor:
    """``name`` (part of the cache key), ``dim``, ``size`` (pixels the images are read at) and ``__call__``."""

    def __init__(self, name, network, size, mean, std, dim, device):
        self.name, self.size, self.dim, self.device = name, size, dim, device
        self.network = network.to(device).eval()
        self.mean = torch.tensor(mean).view(1, -1, 1, 1).to(device)
        self.std = torch.tensor(std).view(1, -1, 1, 1).to(device)

    @torch.no_grad()
    def __call__(self, pixels, batch_size=256):
        out = []
        for chunk in pixels.split(batch_size):
            x = (chunk.to(self.device).float() - self.mean) / self.std
            out.append(self.network(x).flatten(1).float().cpu())
        return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, self.dim), np.float32)


def _torch_cache(pattern):
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    found = sorted(glob.glob(os.path.join(folder, pattern)))
    return found[-1] if found else None


def digitstyles_featurizer(device):
    """The embedded pretrained MNIST_CNN (DomainBed's), on DigitStyles' 28 px normalised inputs."""
    from domainbed import networks

    from domainbed_diffusion.benchmark import digitstyles, pretrained
    network = pretrained.load_into(networks.MNIST_CNN(digitstyles.INPUT_SHAPE), pretrained.EMBEDDED)
    resize = torch.nn.Upsample(size=digitstyles.INPUT_SHAPE[1:], mode="bilinear", align_corners=False)
    return Extractor("digitstyles-featurizer", torch.nn.Sequential(resize, network), digitstyles.IMAGE_SIZE,
                     digitstyles.MEAN, digitstyles.STD, network.n_outputs, device)


def resnet50(weights, device, random_weights=False):
    """torchvision's ResNet-50 without its head (2048-d), ImageNet-normalised at 224 px."""
    import torchvision
    network = torchvision.models.resnet50()
    weights = weights or _torch_cache("resnet50-*.pth")
    if weights:
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        name = f"resnet50@{os.path.basename(weights)}"
    elif random_weights:
        print("warning: ResNet-50 with RANDOM weights: distances and probes mean little", file=sys.stderr)
        torch.manual_seed(0)
        network = torchvision.models.resnet50()
        name = "resnet50@random"
    else:
        raise FileNotFoundError("no ImageNet ResNet-50 weights on this machine: give --extractor_weights "
                                "<resnet50-*.pth> (torchvision's file), or put it in "
                                f"{os.path.join(torch.hub.get_dir(), 'checkpoints')}")
    network.fc = torch.nn.Identity()
    return Extractor(name, network, 224, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225], 2048, device)


def inception(weights, device):
    """torchmetrics' FID Inception (2048-d pool features) from a local weights file."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    class Pool(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                          feature_extractor_weights_path=weights)

        def forward(self, x):  # the network wants uint8-range pixels at any size
            return self.net((x * 255).clamp(0, 255).to(torch.uint8))
    return Extractor("inception-2048", Pool(), 299, [0.0] * 3, [1.0] * 3, 2048, device)


def inception_weights(given):
    if given and os.path.basename(given) == INCEPTION_WEIGHTS:
        return given
    return _torch_cache(INCEPTION_WEIGHTS)


def for_dataset(dataset, choice="auto", weights=None, device="cpu", random_weights=False):
    """The extractor a report uses, by ``--extractor`` (see the module's docstring)."""
    if choice not in EXTRACTORS:
        raise ValueError(f"--extractor {choice!r}: choose one of {', '.join(EXTRACTORS)}")
    if choice == "inception" or (choice == "auto" and inception_weights(weights)):
        path = inception_weights(weights)
        if not path:
            raise FileNotFoundError(f"--extractor inception needs {INCEPTION_WEIGHTS} on this machine: give "
                                    "--extractor_weights <path>")
        return inception(path, device)
    if choice in ("auto", "featurizer") and dataset == "DigitStyles":
        return digitstyles_featurizer(device)
    return resnet50(weights, device, random_weights)


class FeatureCache:
    """Features of image files under ``folder``, one extractor each, computed once: a rerun after more images
    were generated computes only the new ones. A key is the file's path (as given), size and modification time;
    rows are appended to a float32 file, keys after their rows, so a cut write leaves no key without its row."""

    def __init__(self, folder, extractor):
        self.extractor = extractor
        self.folder = os.path.join(folder, extractor.name.replace("/", "_"))
        os.makedirs(self.folder, exist_ok=True)
        self.rows_path = os.path.join(self.folder, "features.f32")
        self.keys_path = os.path.join(self.folder, "keys.tsv")
        self.rows = {}
        written = os.path.getsize(self.rows_path) // (4 * extractor.dim) if os.path.exists(self.rows_path) else 0
        if os.path.exists(self.keys_path):
            with open(self.keys_path, encoding="utf-8") as f:
                for line in f:
                    key, _, row = line.rstrip("\n").rpartition("\t")
                    if key and int(row) < written:
                        self.rows[key] = int(row)
        self.computed = 0  # features computed (not read from the cache) by this process

    @staticmethod
    def key(path):
        stat = os.stat(path)
        return f"{os.path.abspath(path)}\t{stat.st_size}\t{stat.st_mtime_ns}"

    def features(self, paths, load, progress=None):
        """Features of ``paths`` (N, D); ``load(paths) -> pixels`` reads the ones not cached yet."""
        keys = [self.key(p) for p in paths]
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        for start in range(0, len(missing), 256):
            chunk = missing[start:start + 256]
            features = self.extractor(load([paths[i] for i in chunk]))
            with open(self.rows_path, "ab") as f:
                first = f.tell() // (4 * self.extractor.dim)
                f.write(features.astype(np.float32).tobytes())
            with open(self.keys_path, "a", encoding="utf-8") as f:
                for k, i in enumerate(chunk):
                    self.rows[keys[i]] = first + k
                    f.write(f"{keys[i]}\t{first + k}\n")
            self.computed += len(chunk)
            if progress is not None:
                progress.update(len(chunk))
        if progress is not None:
            progress.update(len(keys) - len(missing))
        if not keys:
            return np.zeros((0, self.extractor.dim), np.float32)
        table = np.memmap(self.rows_path, dtype=np.float32, mode="r").reshape(-1, self.extractor.dim)
        return np.asarray(table[[self.rows[k] for k in keys]])
