"""SWAD (Cha et al., *SWAD: Domain Generalization by Seeking Flat Minima*, NeurIPS 2021): dense averaging of the
weights over the loss valley that the training envs' validation loss traces.

``LossValley`` is SWAD's schedule alone, on one validation loss per evaluation interval (a *segment*); ``Averager``
keeps each segment's running average and the final one with ``torch.optim.swa_utils.AveragedModel`` and
recomputes BatchNorm statistics with ``swa_utils.update_bn``. The plugin's ``<Algorithm>_SWAD`` rows use both
(``options``).
"""
import copy

import numpy as np
import torch
from torch.optim import swa_utils


class LossValley:
    """The paper's start and end rules over segment losses ``L_0, L_1, ...`` (each segment's averaged weights on
    the training envs' validation splits).

    Start ``t_s``: the first segment whose loss is the lowest of the ``n_converge`` from it. End ``t_e``: the first
    segment after ``t_s`` from which the next ``n_tolerance`` losses are all above ``(1 + tolerance_ratio)`` times
    the mean of the ``n_converge`` losses from ``t_s``. Averaged: segments ``t_s ... t_e - 1``, each once the
    ``n_tolerance`` losses from it are known; if the loss never leaves the valley, the run's end closes it (the
    segments still waiting join then)."""

    def __init__(self, n_converge=3, n_tolerance=6, tolerance_ratio=0.3):
        if n_converge < 1 or n_tolerance < 1 or tolerance_ratio < 0:
            raise ValueError(f"SWAD: n_converge ({n_converge}) and n_tolerance ({n_tolerance}) must be at least 1 "
                             f"and tolerance_ratio ({tolerance_ratio}) not negative")
        self.n_converge, self.n_tolerance, self.ratio = n_converge, n_tolerance, tolerance_ratio
        self.losses = []
        self.start = None  # t_s
        self.end = None  # t_e, once the loss has left the valley
        self.threshold = None
        self.joined = []  # segments averaged so far, in order
        self._next = None  # the next segment that may join

    @property
    def dead(self):
        return self.end is not None

    def add(self, loss):
        """Record segment ``len(losses)``'s loss; returns the segments that join the average now."""
        self.losses.append(float(loss))
        if self.dead:
            return []
        last = len(self.losses) - 1
        if self.start is None:
            first = last - self.n_converge + 1
            window = self.losses[first:]
            if first < 0 or window[0] > min(window):
                return []
            self.start = self._next = first
            self.threshold = (1 + self.ratio) * float(np.mean(window))
        return self._join(last)

    def _join(self, last):
        joined = []
        while self._next + self.n_tolerance - 1 <= last:
            k = self._next
            if min(self.losses[k:k + self.n_tolerance]) > self.threshold:
                self.end = k
                break
            joined.append(k)
            self._next += 1
        self.joined += joined
        return joined

    def close(self):
        """The run ended: the segments still waiting join if the valley is open. Returns them. With no start found,
        the last ``n_converge`` segments are the average (the loss never settled; said in the run's log)."""
        if self.start is None:
            waiting = list(range(max(0, len(self.losses) - self.n_converge), len(self.losses)))
        elif self.dead:
            waiting = []
        else:
            waiting = list(range(self._next, len(self.losses)))
        self.joined += waiting
        return waiting


class Averager:
    """Segment averages of a network (every update step) and SWAD's final average of the joined segments: equal
    segments, so their mean is the mean of every iterate they hold. Copies live outside the algorithm's module
    tree (not in its state dict, parameters or optimizer)."""

    def __init__(self, network, schedule):
        self.network, self.schedule = network, schedule
        self.segment = None  # the running segment's AveragedModel
        self.pending = {}  # segment index -> its AveragedModel, until the schedule decides
        self.final = None
        self.count = 0  # segments closed

    def step(self):
        """After an optimizer step: the iterate joins the running segment's average."""
        if self.segment is None:
            self.segment = swa_utils.AveragedModel(self.network)
        self.segment.update_parameters(self.network)

    def close_segment(self, loss):
        """The running segment ends with its validation ``loss``; the segments the schedule accepts are averaged."""
        self.pending[self.count] = self.segment
        self.segment = None
        self.count += 1
        self._average(self.schedule.add(loss))
        keep = max(self.schedule.n_converge, self.schedule.n_tolerance)
        for k in [k for k in self.pending if k < self.count - keep]:
            del self.pending[k]  # out of every window the schedule may still read

    def finish(self, bn_loader=None):
        """The run's end: the segments still waiting join; BatchNorm statistics are recomputed on ``bn_loader``
        (skipped when None). Returns the final averaged network."""
        self._average(self.schedule.close())
        if self.final is None:  # not one closed segment: the running one is all there is
            self.final = swa_utils.AveragedModel(self.network)
            self.final.update_parameters(self.segment.module if self.segment is not None else self.network)
        if bn_loader is not None:
            swa_utils.update_bn(bn_loader, self.final, device=next(self.final.parameters()).device)
        self.final.eval()
        return self.final

    def _average(self, segments):
        for k in segments:
            snapshot = self.pending.pop(k).module
            if self.final is None:
                self.final = swa_utils.AveragedModel(snapshot)
            self.final.update_parameters(snapshot)

    def segment_model(self):
        """The running segment's averaged network (for its validation loss)."""
        return self.segment.module if self.segment is not None else copy.deepcopy(self.network)


def validation_loss(network, loader, device):
    """Mean cross-entropy of ``network`` over ``loader``'s (x, y) batches, in eval mode, without gradients."""
    was_training = network.training
    network.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            total += float(torch.nn.functional.cross_entropy(network(x), y, reduction="sum"))
            count += len(y)
    network.train(was_training)
    return total / max(count, 1)
