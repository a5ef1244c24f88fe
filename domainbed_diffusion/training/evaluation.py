"""What the plugin changes in DomainBed's evaluation at each checkpoint, when a run's hparams ask for it.

DomainBed's train script measures the accuracy of every split of every env at each checkpoint. No model selection
method reads the accuracy of a training env's training split (training-domain validation reads the training envs'
validation splits, the oracle and the reported test accuracy the test envs' splits), yet on DigitStyles those
splits are most of the evaluated images. With ``eval_training_splits`` False their accuracy is recorded as NaN
(not measured) and their forward passes are skipped; the loader is still iterated, so torch's global random
generator (DomainBed's evaluation loaders draw from it) advances exactly as before and every other number of the
run is unchanged, bit for bit.
"""
import functools
import math

from . import context

HPARAM = "eval_training_splits"


def _is_skipped_training_split(dataset):
    """Whether ``dataset`` is the training split of a training env of a run whose hparams skip those splits."""
    for ctx in context.live_contexts():
        if (ctx.hparams or {}).get(HPARAM, True):
            continue
        if any(ctx.splits.get(i, (None, None))[1] is dataset for i in ctx.train_envs):
            return True
    return False


def lean_accuracy(stock):
    """DomainBed's ``misc.accuracy``, returning NaN without forward passes for the splits above."""
    @functools.wraps(stock)
    def accuracy(network, loader, weights, device):
        dataset = getattr(loader, "dataset", None)
        if dataset is not None and _is_skipped_training_split(dataset):
            for _ in loader:  # the same draws of the global generator as an evaluation makes
                pass
            return math.nan
        return stock(network, loader, weights, device)
    accuracy._lean = True
    return accuracy


def remember_dataset(init):
    """DomainBed's ``FastDataLoader.__init__``, also keeping the dataset it reads (``lean_accuracy`` asks)."""
    @functools.wraps(init)
    def __init__(self, dataset, *args, **kwargs):
        init(self, dataset, *args, **kwargs)
        self.dataset = dataset
    __init__._remembers = True
    return __init__
