"""DomainBed datasets of the plugin: DigitStyles, read from DomainBed's folder layout at 28x28.

At 28x28 DomainBed picks its MNIST_CNN featurizer, which starts from the embedded pretrained weights
(``pretrained``; no download) and trains on a CPU. Images are decoded once into memory (the dataset is small),
so a CPU step is spent on the network.
"""
import os

import torch
from PIL import Image
from domainbed.datasets import MultipleDomainDataset

from . import digitstyles
from ..data import splits

DATASETS = ["DigitStyles"]


class ImageFolderEnv(torch.utils.data.Dataset):
    """One env folder ``<env>/<class>/<image>``, with ImageFolder's attributes, decoded once into memory.

    ``transform`` maps a PIL image to the network's input tensor; it is also what readers of synthetic images
    of this env apply, so real and synthetic images reach the network the same way.
    """
    def __init__(self, root, transform):
        self.root = root
        self.transform = transform
        try:  # ImageFolder's own listing: the generator computes DomainBed's splits over the same order
            self.samples = splits.env_samples(root)
        except FileNotFoundError as error:
            raise FileNotFoundError(f"{root}: {error} Re-run the dataset's prepare command or remove the empty "
                                    "folder.") from None
        self.classes, self.class_to_idx = splits.find_classes(root)
        self.imgs = self.samples
        self.targets = [y for _, y in self.samples]
        self._x = torch.stack([transform(self.loader(p)) for p, _ in self.samples])
        self._y = torch.tensor(self.targets)

    @staticmethod
    def loader(path):
        with Image.open(path) as img:
            return img.convert("RGB")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        return self._x[index], self._y[index]


class DigitStyles(MultipleDomainDataset):
    """Four style domains of scikit-learn's digits (see ``domainbed_diffusion.benchmark.digitstyles``)."""
    ENVIRONMENTS = list(digitstyles.DOMAINS)
    INPUT_SHAPE = digitstyles.INPUT_SHAPE
    N_STEPS = 151          # ERM above 90% on its training envs' validation splits (docs/results.md)
    CHECKPOINT_FREQ = 25   # 7 checkpoints for training-domain validation to choose from (cost: docs/results.md)
    N_WORKERS = 0          # in-memory tensors: worker processes would only add start-up time

    def __init__(self, root, test_envs, hparams):
        super().__init__()
        if root is None:
            raise ValueError("DigitStyles needs --data_dir")
        self.dir = os.path.join(root, digitstyles.DATASET)
        if not os.path.isdir(self.dir):
            raise FileNotFoundError(
                f"{self.dir} does not exist. Write it with: python -m offline_generation prepare "
                f"--data_dir {root}")
        found = sorted(e.name for e in os.scandir(self.dir) if e.is_dir())
        if found != self.ENVIRONMENTS:
            raise FileNotFoundError(f"{self.dir} holds env folders {found}, expected {self.ENVIRONMENTS}; "
                                    f"re-run: python -m offline_generation prepare --data_dir {root}")
        self.datasets = [ImageFolderEnv(os.path.join(self.dir, env), digitstyles.network_transform())
                         for env in self.ENVIRONMENTS]
        self.input_shape = self.INPUT_SHAPE
        self.num_classes = len(self.datasets[0].classes)
        batch_size = (hparams or {}).get("batch_size", 0)
        for env, name in zip(self.datasets, self.ENVIRONMENTS):
            if len(env) < batch_size:
                raise ValueError(_too_small(self, name, len(env), batch_size, "images"))


def _too_small(dataset, env_name, n, batch_size, what):
    return (f"{type(dataset).__name__} env '{env_name}' has {n} {what}, fewer than batch_size={batch_size}: "
            f"DomainBed's InfiniteDataLoader would spin forever without yielding a batch. Lower the batch size "
            f"(--hparams '{{\"batch_size\": {max(1, n // 2)}}}') or --holdout_fraction.")


def check_split(ctx, env_dataset, training):
    """Refuse a training split of one of our datasets that is smaller than the batch size."""
    if ctx is None or type(ctx.dataset).__name__ not in DATASETS:
        return
    batch_size = ctx.hparams.get("batch_size", 0) if ctx.hparams else 0
    if len(training) < batch_size:
        index = next(i for i, e in enumerate(ctx.dataset.datasets) if e is env_dataset)
        raise ValueError(_too_small(ctx.dataset, ctx.env_names[index], len(training), batch_size,
                                    "training images after the validation split"))
