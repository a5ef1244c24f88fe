"""What the plugin adds to DomainBed's ``networks.Featurizer``, for every algorithm alike (ERM included).

- ``pretrained_featurizer``: load pretrained weights (DigitStyles: ``"embedded"``, see ``pretrained``).
- ``channels_last``: lay the convolutions out channels-last; on a CPU, oneDNN's convolutions run faster in
  that layout (measured in ``docs/performance.md``), and the arithmetic is the same up to float rounding.
- ``autocast``: run the featurizer under ``torch.autocast`` to that dtype (``"bfloat16"``; ``""`` off), its
  features returned in float32, so the classifier, the losses and the optimizer's weights stay float32 (mixed
  precision, as on GPUs; on a CPU with bfloat16 instructions the convolutions take about half the time).
"""
import functools

import torch

from ..benchmark import pretrained

AUTOCAST_DTYPES = {"": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
_autocast_classes = {}  # featurizer class -> its autocast subclass


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
        if hparams.get("autocast"):
            autocast(network, hparams["autocast"])
        return network
    return Featurizer


def autocast(network, dtype_name):
    """Run ``network``'s forward under autocast to ``dtype_name``, returning float32: its class becomes a subclass
    whose forward does that (its modules, state dict and copies are those of the class it had)."""
    if dtype_name not in AUTOCAST_DTYPES:
        raise ValueError(f"hparam autocast={dtype_name!r}: use one of {sorted(AUTOCAST_DTYPES)}")
    base = type(network)
    if base not in _autocast_classes:
        def forward(self, *args, **kwargs):
            device = next(self.parameters()).device.type
            with torch.autocast(device, dtype=self.autocast_dtype):
                out = base.forward(self, *args, **kwargs)
            return out.float()
        _autocast_classes[base] = type(base.__name__, (base,), dict(forward=forward, __module__=base.__module__,
                                                                     __qualname__=base.__qualname__))
    network.__class__ = _autocast_classes[base]
    network.autocast_dtype = AUTOCAST_DTYPES[dtype_name]
    return network
