"""Synthetic images into a run's minibatches: the one place that mixes them, for the generation methods'
algorithms (``SyntheticERM``) and the options of every algorithm (``options``).

Each training env's minibatch of ``batch_size`` real images gets synthetic ones by ``mode``:

- ``union``: each slot is synthetic with the synthetic share of the env's real + synthetic union (CDGA's ERM on
  real + synthetic data): ERM's images per step;
- ``balanced``: half real, half synthetic (ED-SAM's Eq. 11, two equally weighted terms): ERM's images per step;
- ``paired``: a whole synthetic minibatch beside each real one: twice ERM's images per step;
- ``environments``: each synthetic stream is one more environment, its minibatch after the real ones (the new
  domains CDGA's paper calls them, for env-aware algorithms).
"""
import torch

MINIBATCH_MODES = ("union", "balanced", "paired")  # synthetic images inside each env's minibatch
MODES = MINIBATCH_MODES + ("environments",)


def union_slots(batch_size, share, generator):
    """How many of a minibatch's slots are synthetic when each is drawn from the union of real and synthetic
    images: each slot is synthetic with the synthetic share of that union."""
    return int((torch.rand(batch_size, generator=generator) < share).sum())


class SyntheticStream:
    """Per stream (a training env, or a method's environment), an endless stream of synthetic minibatches."""

    def __init__(self, datasets, batch_size, num_workers):
        from domainbed.lib.fast_data_loader import InfiniteDataLoader
        self.datasets = datasets
        # uniform weights: DomainBed's loader then samples with replacement, whatever the dataset's size
        self.loaders = [iter(InfiniteDataLoader(d, torch.ones(len(d)), batch_size, num_workers)) for d in datasets]

    def __len__(self):
        return len(self.loaders)

    def next(self):
        return [next(loader) for loader in self.loaders]


class Mixer:
    """Mixes one synthetic stream per training env (or per extra environment) into each step's minibatches.

    ``datasets``: a synthetic dataset per stream; ``real_sizes``: the images of each training env's training split
    (for ``union``'s shares; unused by ``environments``); ``generator``: the run's own draws of ``union``'s slots.
    """

    def __init__(self, datasets, real_sizes, batch_size, num_workers, mode, generator):
        if mode not in MODES:
            raise ValueError(f"synthetic mode {mode!r}: use one of {MODES}")
        self.mode, self.generator = mode, generator
        self.stream = SyntheticStream(datasets, batch_size, num_workers)
        self.shares = [len(d) / (len(d) + n) for d, n in zip(datasets, real_sizes)]

    @property
    def datasets(self):
        return self.stream.datasets

    def slots(self, batch_size, share):
        """How many of an env's ``batch_size`` slots are synthetic this step (``union`` and ``balanced``)."""
        if self.mode == "balanced":
            return batch_size // 2
        return union_slots(batch_size, share, self.generator)

    def mix(self, minibatches):
        """``[(x, y, k)]``: each env's minibatch with its ``k`` synthetic images last; with ``environments``, the
        real minibatches (``k`` 0) and then one all-synthetic minibatch per stream."""
        synthetic = self.stream.next()
        device = minibatches[0][0].device
        if self.mode == "environments":
            return [(x, y, 0) for x, y in minibatches] + [(sx.to(device), sy.to(device), len(sx))
                                                          for sx, sy in synthetic]
        out = []
        for (x, y), (sx, sy), share in zip(minibatches, synthetic, self.shares):
            k = len(x) if self.mode == "paired" else self.slots(len(x), share)
            n_real = len(x) if self.mode == "paired" else len(x) - k
            out.append((torch.cat([x[:n_real], sx[:k].to(device)]), torch.cat([y[:n_real], sy[:k].to(device)]), k))
        return out
