"""Registration of the plugin into DomainBed's modules, without editing DomainBed.

DomainBed looks algorithms up with ``globals()`` in ``domainbed.algorithms``, hyperparameters in
``domainbed.hparams_registry._hparams``, datasets with ``globals()`` in ``domainbed.datasets``, featurizers with
``domainbed.networks.Featurizer`` (wrapped to load a pretrained one) and launchers in
``domainbed.command_launchers.REGISTRY``. Each handler below extends one of those modules right after it has
executed; every handler is idempotent, so registering twice is harmless.
"""
import functools
import sys

from . import _autoload, context

_MARK = "_domainbed_diffusion_registered"


def _algorithms(module):
    from . import algorithms as ours
    for name in ours.ALGORITHMS:
        setattr(module, name, getattr(ours, name))
        if name not in module.ALGORITHMS:
            module.ALGORITHMS.append(name)


def _hparams_registry(module):
    from . import hparams_registry as ours
    stock = module._hparams

    @functools.wraps(stock)
    def _hparams(algorithm, dataset, random_seed):
        hparams = stock(algorithm, dataset, random_seed)
        ours.extend(hparams, algorithm, dataset, random_seed)
        return hparams

    module._hparams = _hparams


def _capture_context(init):
    """Wrap a dataset class's ``__init__(root, test_envs, hparams)`` to record the run context."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        root, test_envs, hparams = (list(args) + [None, None, None])[:3]
        root = kwargs.get("root", kwargs.get("root_dir", root))
        context.capture(self, root, kwargs.get("test_envs", test_envs), kwargs.get("hparams", hparams))
    __init__._captures_context = True
    return __init__


def _datasets(module):
    from . import datasets as ours
    for name in ours.DATASETS:
        setattr(module, name, getattr(ours, name))
        if name not in module.DATASETS:
            module.DATASETS.append(name)
    for name in module.DATASETS:
        cls = getattr(module, name, None)
        if isinstance(cls, type) and not getattr(cls.__init__, "_captures_context", False):
            cls.__init__ = _capture_context(cls.__init__)


def _misc(module):
    stock = module.split_dataset

    @functools.wraps(stock)
    def split_dataset(dataset, n, seed=0):
        validation, training = stock(dataset, n, seed)
        ctx = context.record_split(dataset, validation, training)
        if ctx is not None:
            from . import datasets as ours
            ours.check_split(ctx, dataset, training)
        return validation, training

    module.split_dataset = split_dataset


def _networks(module):
    from .networks import wrap_featurizer
    module.Featurizer = wrap_featurizer(module.Featurizer)


def _command_launchers(module):
    from . import launchers as ours
    for name, launcher in ours.REGISTRY.items():
        module.REGISTRY.setdefault(name, launcher)


_HANDLERS = {
    "domainbed.lib.misc": _misc,
    "domainbed.networks": _networks,
    "domainbed.datasets": _datasets,
    "domainbed.hparams_registry": _hparams_registry,
    "domainbed.algorithms": _algorithms,
    "domainbed.command_launchers": _command_launchers,
}


def on_import(module):
    """Extend one DomainBed module once; later calls for the same module do nothing."""
    if getattr(module, _MARK, False) or _autoload.disabled():
        return
    _HANDLERS[module.__name__](module)
    setattr(module, _MARK, True)


def register():
    """Register into the DomainBed modules imported so far and arm the hook for the others.

    Returns the names of the modules extended by this call. Honours ``DOMAINBED_DIFFUSION_DISABLE``.
    """
    if not _autoload.install():
        return []
    done = []
    for name in _autoload.WATCHED:
        module = sys.modules.get(name)
        if module is not None and not getattr(module, _MARK, False):
            on_import(module)
            done.append(name)
    return done
