"""What the plugin adds to DomainBed's ``networks.Featurizer``, for every algorithm alike (ERM included).

- ``pretrained_featurizer``: load pretrained weights (DigitStyles: ``"embedded"``, see ``pretrained``).
- ``channels_last``: lay the convolutions out channels-last; on a CPU, oneDNN's convolutions run faster in
  that layout (measured in ``docs/performance.md``), and the arithmetic is the same up to float rounding.
"""
import functools

import torch

from ..benchmark import pretrained


def wrap_featurizer(stock_featurizer):
    """DomainBed's ``networks.Featurizer``, honouring the hparams above when they are set."""
    @functools.wraps(stock_featurizer)
    def Featurizer(input_shape, hparams):
        network = stock_featurizer(input_shape, hparams)
        value = hparams.get("pretrained_featurizer")
        if value:
            pretrained.load_into(network, value)
        if hparams.get("channels_last") and len(input_shape) == 3:
            network = network.to(memory_format=torch.channels_last)
        return network
    return Featurizer
