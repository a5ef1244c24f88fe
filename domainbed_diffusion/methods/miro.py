"""MIRO's math (Cha et al., ECCV 2022): mutual-information regularisation with an oracle featurizer.

The regulariser pulls the intermediate features ``f`` of the trained featurizer toward those ``f0`` of a frozen
copy of its initial weights, through a Gaussian with identity mean encoder and a learned per-channel variance:
``sum over layers of mean(0.5 * ((f - f0)^2 / var + log var))``.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def feature_modules(featurizer):
    """The modules whose outputs MIRO regularises, for DomainBed's featurizers; [] means the final features.

    ResNet: the stem after max-pooling and layer1..4. MNIST_CNN: its four GroupNorm outputs (its ReLUs are
    functional, so the norms are the hookable points). Wide_ResNet: conv1 and layer1..3.
    """
    net = getattr(featurizer, "network", None)
    if net is not None and all(hasattr(net, n) for n in ("maxpool", "layer1", "layer2", "layer3", "layer4")):
        return [net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4]
    if all(hasattr(featurizer, f"bn{i}") for i in range(4)):
        return [featurizer.bn0, featurizer.bn1, featurizer.bn2, featurizer.bn3]
    if all(hasattr(featurizer, n) for n in ("conv1", "layer1", "layer2", "layer3")):
        return [featurizer.conv1, featurizer.layer1, featurizer.layer2, featurizer.layer3]
    return []


class FeatureHooks:
    """Collects the outputs of ``modules`` during a forward pass; ``features`` is cleared by ``clear``."""

    def __init__(self, modules):
        self.features = []
        self._recording = False  # only inside __call__: prediction passes must not accumulate tensors
        self._handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, module, inputs, output):
        if self._recording:
            self.features.append(output.float())  # the penalty in float32, also under autocast

    def clear(self):
        self.features = []

    def __call__(self, net, x):
        """Run ``net(x)``; returns its output and the hooked features of that pass, in forward order."""
        self.clear()
        self._recording = True
        try:
            out = net(x)
        finally:
            self._recording = False
        features = self.features
        self.clear()
        return out, features


def inverse_softplus(y):
    return y + math.log(-math.expm1(-y))


class VarianceEncoder(nn.Module):
    """A learned per-channel variance ``softplus(b) + eps``; shape (1, C, 1, 1) for maps, (1, D) for vectors."""

    def __init__(self, feature_shape, init_variance=0.1, eps=1e-5):
        super().__init__()
        self.eps = eps
        shape = (1, feature_shape[0]) + (1,) * (len(feature_shape) - 1)
        self.b = nn.Parameter(torch.full(shape, inverse_softplus(init_variance - eps)))

    def forward(self):
        return F.softplus(self.b) + self.eps


def miro_penalty(features, oracle_features, variances):
    """``sum_layers mean(0.5 * ((f - f0)^2 / var + log var))``: the layers are summed, not averaged."""
    penalty = 0.0
    for f, f0, var in zip(features, oracle_features, variances):
        penalty = penalty + (0.5 * ((f - f0) ** 2 / var + torch.log(var))).mean()
    return penalty
