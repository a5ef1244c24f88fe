"""DigitStyles' pretrained featurizer: DomainBed's MNIST_CNN trained on styles outside the benchmark.

The papers' protocol starts every algorithm from an ImageNet ResNet-50, and ImageNet is outside PACS; MIRO's
oracle is that pretrained network. DigitStyles mirrors it: the featurizer is pretrained, by plain supervised
classification, on the pool's digits (disjoint from every benchmark image) drawn in the four pool styles that
are *not* benchmark domains (chalk, mosaic, pastel, stencil), so every benchmark domain, the held-out one
included, is a style the featurizer never saw. The weights ship in the package; the hparam
``pretrained_featurizer`` (DigitStyles: ``"embedded"``) loads them into DomainBed's ``Featurizer`` for every
algorithm, and ``""`` trains from scratch.

    python -m domainbed_diffusion.pretrained --data_dir ./data    # rebuild the shipped weights (about 2 min)
"""
import argparse
import functools
import os
import time

import numpy as np
import torch
import torch.nn.functional as F

from . import digitstyles

EMBEDDED = "embedded"
EMBEDDED_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded", "digitstyles-featurizer.pt")
PRETRAINING_STYLES = [s for s in digitstyles.POOL_STYLES if s not in digitstyles.DOMAINS]


def weights_path(value):
    return EMBEDDED_PATH if value == EMBEDDED else os.path.abspath(os.path.expanduser(str(value)))


def load_into(network, value):
    """Load the pretrained featurizer ``value`` (``"embedded"`` or a file) into ``network``; a missing file or
    a different architecture is an error naming the file and the fix."""
    path = weights_path(value)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained featurizer {path} (hparam pretrained_featurizer={value!r}) does not "
                                f"exist: rebuild it with `python -m domainbed_diffusion.pretrained --data_dir DIR`, "
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
def pretrain(data_dir, out=EMBEDDED_PATH, epochs=15, batch_size=64, lr=3e-4, seed=0, holdout=0.1):
    """Supervised pretraining of MNIST_CNN + a linear head on the pool's non-benchmark styles; saves the
    featurizer's (and head's) weights and returns the held-out pool accuracy."""
    from domainbed import networks
    torch.manual_seed(seed)
    x, labels = digitstyles.load_pool(data_dir, PRETRAINING_STYLES, digitstyles.network_transform(),
                                      digitstyles.CLASS_NAMES)
    y = torch.tensor([digitstyles.CLASS_NAMES.index(cls) for cls, _ in labels])
    order = np.random.RandomState(seed).permutation(len(x))
    n_val = int(len(x) * holdout)
    val, train = order[:n_val], order[n_val:]
    featurizer = networks.MNIST_CNN(tuple(x.shape[1:]))
    head = torch.nn.Linear(featurizer.n_outputs, len(digitstyles.CLASS_NAMES))
    model = torch.nn.Sequential(featurizer, head)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    start = time.time()
    for epoch in range(epochs):
        model.train()
        for batch in np.array_split(np.random.RandomState(seed + epoch).permutation(train),
                                    max(1, len(train) // batch_size)):
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        accuracy = evaluate(model, x[val], y[val])
        print(f"epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, held-out pool accuracy {accuracy:.3f} "
              f"({time.time() - start:.0f} s)", flush=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    torch.save({"featurizer": featurizer.state_dict(), "classifier": head.state_dict(),
                "styles": PRETRAINING_STYLES, "pool_accuracy": accuracy, "epochs": epochs, "seed": seed},
               out + ".tmp")
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
    parser = argparse.ArgumentParser(description="Pretrain DigitStyles' featurizer on the pool's non-benchmark "
                                                 f"styles ({', '.join(PRETRAINING_STYLES)}).")
    parser.add_argument("--data_dir", required=True, help="holds DigitStylesPool/ (written if missing)")
    parser.add_argument("--out", default=EMBEDDED_PATH)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    digitstyles.prepare(args.data_dir, pool=True)
    pretrain(args.data_dir, args.out, epochs=args.epochs, seed=args.seed)


if __name__ == "__main__":
    main()
