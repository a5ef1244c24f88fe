"""The plugin's DomainBed algorithms: one short class each; their hyperparameters are in ``hparams_registry``.

Each method's math lives in a module of its own (``miro``, ...), imported here and by the generator.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from domainbed.algorithms import ERM

from .miro import FeatureHooks, VarianceEncoder, feature_modules, miro_penalty

ALGORITHMS = ["MIRO"]


class MIRO(ERM):
    """MIRO (Cha et al., ECCV 2022): ERM plus a mutual-information regulariser toward the initial featurizer.

    The oracle is a frozen deep copy of the featurizer as built (the same pretrained weights), run without
    gradients and always in eval mode; one Adam updates the network at ``lr`` and the variance encoders at
    ``lr * lr_mult``, with weight decay on both groups.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.oracle = copy.deepcopy(self.featurizer)  # copied before any hook is attached
        self.oracle.requires_grad_(False)
        self.oracle.eval()
        self._hooks = FeatureHooks(feature_modules(self.featurizer))
        self._oracle_hooks = FeatureHooks(feature_modules(self.oracle))
        with torch.no_grad():
            out, features = self._oracle_hooks(self.oracle, torch.zeros(2, *input_shape))
        shapes = [f.shape[1:] for f in features] or [out.shape[1:]]
        self.variance_encoders = nn.ModuleList(VarianceEncoder(s) for s in shapes)
        self.optimizer = torch.optim.Adam(
            [{"params": self.network.parameters()},
             {"params": self.variance_encoders.parameters(), "lr": hparams["lr"] * hparams["lr_mult"]}],
            lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def train(self, mode=True):
        super().train(mode)
        self.oracle.eval()  # DomainBed calls .train() after every evaluation: the oracle's BN must not follow
        return self

    def update(self, minibatches, unlabeled=None):
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])
        features, inter = self._hooks(self.featurizer, all_x)
        ce = F.cross_entropy(self.classifier(features), all_y)
        with torch.no_grad():
            oracle_features, oracle_inter = self._oracle_hooks(self.oracle, all_x)
        if not inter:
            inter, oracle_inter = [features], [oracle_features]
        reg = miro_penalty(inter, oracle_inter, [v() for v in self.variance_encoders])
        loss = ce + self.hparams["ld"] * reg
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "ce": ce.item(), "miro": reg.item()}
