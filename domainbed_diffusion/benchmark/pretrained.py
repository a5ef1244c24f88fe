"""DigitStyles' pretrained featurizer: DomainBed's MNIST_CNN trained on styles outside the benchmark.

The papers' protocol starts every algorithm from an ImageNet ResNet-50, and ImageNet is outside PACS; MIRO's
oracle is that pretrained network. DigitStyles mirrors it: the featurizer is pretrained, by plain supervised
classification, on the pool's digits (disjoint from every benchmark image) drawn in the four pool styles that
are *not* benchmark domains (chalk, mosaic, pastel, stencil), so every benchmark domain, the held-out one
included, is a style the featurizer never saw. The weights ship in the package; the hparam
``pretrained_featurizer`` (DigitStyles: ``"embedded"``) loads them into DomainBed's ``Featurizer`` for every
algorithm, and ``""`` trains from scratch.

    python -m domainbed_diffusion.benchmark.pretrained    # rebuild the shipped weights (time: docs/performance.md)
"""
import argparse
import functools
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import digitstyles
from .shipped import EMBEDDED, EMBEDDED_FEATURIZER_PATH
PRETRAINING_STYLES = digitstyles.PRETRAIN_STYLES


def weights_path(value):
    return EMBEDDED_FEATURIZER_PATH if value == EMBEDDED else os.path.abspath(os.path.expanduser(str(value)))


def load_into(network, value):
    """Load the pretrained featurizer ``value`` (``"embedded"`` or a file) into ``network``; a missing file or
    a different architecture is an error naming the file and the fix."""
    path = weights_path(value)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained featurizer {path} (hparam pretrained_featurizer={value!r}) does not "
                                f"exist: rebuild it with `python -m domainbed_diffusion.benchmark.pretrained`, "
                                f"or set the hparam to \"\" to train from scratch")
    try:
        network.load_state_dict(_featurizer_weights(path))
    except RuntimeError as error:
        raise RuntimeError(f"pretrained featurizer {path} does not fit {type(network).__name__} (hparam "
                           f"pretrained_featurizer={value!r}; it was trained for DomainBed's MNIST_CNN at "
                           f"3x28x28): {error}") from None
    return network


@functools.lru_cache(maxsize=4)
def _featurizer_weights(path):
    """Read once per process: MIRO and every algorithm built in a process load the same file."""
    return torch.load(path, map_location="cpu", weights_only=True)["featurizer"]


# -- pretraining ---------------------------------------------------------------------------------------------
def pretraining_images(variants, holdout=0.1, seed=0):
    """The pool's digits in the pretraining styles, rendered in memory: ``variants`` renderings (each its own
    rotation, scale, shift and colours) of the training digits, one of the held-out digits (a ``holdout``
    fraction of the pool's digits, so held-out accuracy is on digits never trained on)."""
    from PIL import Image
    images, targets = digitstyles.load_digits()
    _, pool = digitstyles.split_indices(targets)
    pool = np.random.RandomState(seed).permutation(pool)
    n_val = int(len(pool) * holdout)
    transform = digitstyles.network_transform()

    def render(indices, renderings):
        x = [transform(Image.fromarray(digitstyles.render_digit(images, i, style, v)))
             for i in indices for style in PRETRAINING_STYLES for v in renderings]
        y = [int(targets[i]) for i in indices for _ in PRETRAINING_STYLES for _ in renderings]
        return torch.stack(x), torch.tensor(y)
    return render(pool[n_val:], range(variants)), render(pool[:n_val], [0])


def pretrain(out=EMBEDDED_FEATURIZER_PATH, epochs=6, variants=6, batch_size=64, lr=2e-3, seed=0):
    """Supervised pretraining of MNIST_CNN + a linear head on the pool's digits in the non-benchmark styles
    (Adam, one-cycle schedule); saves the featurizer's (and head's) weights and returns the held-out accuracy."""
    from domainbed import networks
    torch.manual_seed(seed)
    start = time.time()
    (x, y), (x_val, y_val) = pretraining_images(variants, seed=seed)
    print(f"{len(x)} training and {len(x_val)} held-out images ({time.time() - start:.0f} s)", flush=True)
    featurizer = networks.MNIST_CNN(tuple(x.shape[1:]))
    head = torch.nn.Linear(featurizer.n_outputs, len(digitstyles.CLASS_NAMES))
    model = torch.nn.Sequential(featurizer, head)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = len(x) // batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * per_epoch)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for k in range(per_epoch):
            batch = order[k * batch_size:(k + 1) * batch_size]
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        accuracy = evaluate(model, x_val, y_val)
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out digits {accuracy:.3f} "
              f"({time.time() - start:.0f} s)", flush=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.save({"featurizer": featurizer.state_dict(), "classifier": head.state_dict(),
                "styles": PRETRAINING_STYLES, "held_out_accuracy": accuracy, "epochs": epochs,
                "variants": variants, "seed": seed}, out + ".tmp")
    os.replace(out + ".tmp", out)
    print(f"wrote {out}")
    return accuracy


@torch.no_grad()
def evaluate(model, x, y, batch_size=256):
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / max(1, len(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description="Pretrain DigitStyles' featurizer on the pool's digits in the "
                                                 f"non-benchmark styles ({', '.join(PRETRAINING_STYLES)}).")
    parser.add_argument("--out", default=EMBEDDED_FEATURIZER_PATH)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--variants", type=int, default=6, help="renderings of each pool digit in each style")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pretrain(args.out, epochs=args.epochs, variants=args.variants, seed=args.seed)


if __name__ == "__main__":
    main()
