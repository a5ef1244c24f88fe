"""Registration of the plugin into DomainBed's modules, without editing DomainBed.

DomainBed looks algorithms up with ``globals()`` in ``domainbed.algorithms``, hyperparameters in
``domainbed.hparams_registry._hparams``, datasets with ``globals()`` in ``domainbed.datasets``, featurizers with
``domainbed.networks.Featurizer`` (wrapped to load a pretrained one) and launchers in
``domainbed.command_launchers.REGISTRY``. Each handler below extends one of those modules right after it has
executed; every handler is idempotent, so registering twice is harmless.

DomainBed's sweep starts every run as a fresh ``python -m domainbed.scripts.train`` process, so registration
happens on import, not by a flag: ``install`` puts a finder first on ``sys.meta_path`` that wraps the loader of
each watched module (the mechanism coverage.py uses to reach subprocesses), and the ``domainbed_diffusion.pth``
that ``pip install`` puts in site-packages calls it at interpreter start-up (through ``_autoload``). This module
imports only the standard library at the top: it costs nothing in processes that never import DomainBed.
Set ``DOMAINBED_DIFFUSION_DISABLE=1`` to opt out.
"""
import functools
import importlib.abc
import os
import sys

_MARK = "_domainbed_diffusion_registered"


def _algorithms(module):
    from . import catalogue
    if _initializing(OURS):
        return  # ``algorithms`` imported DomainBed first; it calls ``register`` once its classes exist
    for entry in catalogue.entries():
        cls = algorithm_class(entry)
        if cls is None:
            continue  # its module is being imported; it calls ``register`` when done
        setattr(module, entry.algorithm, cls)
        if entry.algorithm not in module.ALGORITHMS:
            module.ALGORITHMS.append(entry.algorithm)
    if not getattr(module.get_algorithm_class, "_with_options", False):
        module.get_algorithm_class = _get_algorithm_class(module.get_algorithm_class)


OURS = "domainbed_diffusion.algorithms"  # where the plugin's written algorithm classes live


def _initializing(name):
    module = sys.modules.get(name)
    return module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False)


def algorithm_class(entry):
    """A catalogue entry's class: the one it was given, else the class of its name in
    ``domainbed_diffusion.algorithms`` or, for a method of another package, in its runner's module, else
    ``SyntheticERM`` derived under its name for an entry that reads a generation method (made once, set on
    ``algorithms`` so that it imports, pickles and prints like a written class). None while the module that
    would define it is still being imported."""
    if entry.algorithm_class is not None:
        return entry.algorithm_class
    names = [OURS]
    runner = getattr(entry.spec, "runner", None)
    if runner is not None and not runner.__module__.startswith("domainbed_diffusion."):
        names.append(runner.__module__)  # a method of another package may define its class beside its runner
    for name in names:
        if _initializing(name):
            return None
        found = getattr(importlib.import_module(name), entry.algorithm, None)
        if isinstance(found, type):
            return found
    if entry.reads is None:
        raise LookupError(f"catalogue entry {entry.algorithm}: no class of that name in {' or '.join(names)}, and it "
                          f"reads no generation method to derive one from: define the class, or give the entry "
                          f"algorithm_class=")
    ours = importlib.import_module(OURS)
    doc = (f"ERM on real images plus the images of ``python -m offline_generation --methods {entry.reads}``, "
           f"mixed as {entry.mode!r} (``SyntheticERM``, derived from its catalogue entry).")
    cls = type(entry.algorithm, (ours.SyntheticERM,), dict(__doc__=doc, __module__=OURS, __qualname__=entry.algorithm))
    setattr(ours, entry.algorithm, cls)
    return cls


def method_of(algorithm):
    """The generation method an algorithm class trains on: its own catalogue entry's, else the nearest base
    class's with one (a subclass made by the options wrapper, or a user's subclass); None if none reads one."""
    from . import catalogue
    for cls in algorithm.__mro__:
        found = catalogue.entry(cls.__name__)
        if found is not None and found.reads and algorithm_class(found) is cls:
            return found.reads
    return None


def _get_algorithm_class(stock):
    """DomainBed's lookup, returning each class with the options of every algorithm (``options``), and
    ``<Name>_SWAD`` for any ``<Name>`` it knows (not added to ``ALGORITHMS``: a sweep runs them only by name)."""
    from .training import options

    @functools.wraps(stock)
    def get_algorithm_class(algorithm_name):
        base, swad_on = algorithm_name, False
        if algorithm_name.endswith(options.SWAD_SUFFIX):
            try:
                stock(algorithm_name)  # a class of that very name comes first
            except NotImplementedError:
                base, swad_on = algorithm_name[:-len(options.SWAD_SUFFIX)], True
        return options.with_options(stock(base), swad_on)
    get_algorithm_class._with_options = True
    return get_algorithm_class


def _hparams_registry(module):
    from . import catalogue
    from . import hparams_registry as ours
    stock = module._hparams

    @functools.wraps(stock)
    def _hparams(algorithm, dataset, random_seed):
        base = ours.swad_base(algorithm)  # "<Name>_SWAD": <Name>'s hparams and SWAD's
        hparams = stock(base or algorithm, dataset, random_seed)
        ours.extend(hparams, base or algorithm, dataset, random_seed, catalogue.entry(base or algorithm),
                    swad_on=base is not None)
        return hparams

    module._hparams = _hparams


def _capture_context(init):
    """Wrap a dataset class's ``__init__(root, test_envs, hparams)`` to record the run context."""
    from .training import context

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        root, test_envs, hparams = (list(args) + [None, None, None])[:3]
        root = kwargs.get("root", kwargs.get("root_dir", root))
        context.capture(self, root, kwargs.get("test_envs", test_envs), kwargs.get("hparams", hparams))
    __init__._captures_context = True
    return __init__


def _datasets(module):
    from .benchmark import datasets as ours
    for name in ours.DATASETS:
        setattr(module, name, getattr(ours, name))
        if name not in module.DATASETS:
            module.DATASETS.append(name)
    for name in module.DATASETS:
        cls = getattr(module, name, None)
        if isinstance(cls, type) and not getattr(cls.__init__, "_captures_context", False):
            cls.__init__ = _capture_context(cls.__init__)


def _misc(module):
    from .training import context, evaluation
    module.accuracy = evaluation.lean_accuracy(module.accuracy)  # hparam eval_training_splits
    stock = module.split_dataset

    @functools.wraps(stock)
    def split_dataset(dataset, n, seed=0):
        validation, training = stock(dataset, n, seed)
        ctx = context.record_split(dataset, validation, training)
        if ctx is not None:
            from .benchmark import datasets as ours
            ours.check_split(ctx, dataset, training)
        return validation, training

    module.split_dataset = split_dataset


def _fast_data_loader(module):
    from .training import evaluation
    module.FastDataLoader.__init__ = evaluation.remember_dataset(module.FastDataLoader.__init__)


def _networks(module):
    from .training.networks import wrap_featurizer
    module.Featurizer = wrap_featurizer(module.Featurizer)


def _command_launchers(module):
    from .launchers import REGISTRY, with_this_python
    for name in ("local", "multi_gpu"):  # DomainBed's: their jobs' bare ``python`` becomes this interpreter
        if name in module.REGISTRY:
            module.REGISTRY[name] = with_this_python(module.REGISTRY[name])
    for name, launcher in REGISTRY.items():
        module.REGISTRY.setdefault(name, launcher)


# The DomainBed modules the plugin extends once they have finished executing, in DomainBed's import order.
_HANDLERS = {
    "domainbed.lib.misc": _misc,
    "domainbed.lib.fast_data_loader": _fast_data_loader,
    "domainbed.networks": _networks,
    "domainbed.datasets": _datasets,
    "domainbed.hparams_registry": _hparams_registry,
    "domainbed.algorithms": _algorithms,
    "domainbed.command_launchers": _command_launchers,
}
WATCHED = tuple(_HANDLERS)


def on_import(module):
    """Extend one DomainBed module once; later calls for the same module do nothing."""
    if getattr(module, _MARK, False) or disabled():
        return
    _HANDLERS[module.__name__](module)
    setattr(module, _MARK, True)


def register():
    """Register into the DomainBed modules imported so far and arm the hook for the others.

    Returns the names of the modules extended by this call. Honours ``DOMAINBED_DIFFUSION_DISABLE``. Algorithms
    added to the catalogue after ``domainbed.algorithms`` was extended are added by calling this again.
    """
    if not install():
        return []
    done = []
    for name in WATCHED:
        module = sys.modules.get(name)
        if module is None:
            continue
        if not getattr(module, _MARK, False):
            on_import(module)
            done.append(name)
        elif name == "domainbed.algorithms":
            _algorithms(module)  # idempotent: picks up catalogue entries added since
    return done


# -- the import hook ------------------------------------------------------------------------------------------
OPT_OUT_VARIABLE = "DOMAINBED_DIFFUSION_DISABLE"


def disabled():
    return os.environ.get(OPT_OUT_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


class _RegisteringLoader(importlib.abc.Loader):
    """Runs the real loader, then registers the plugin into the freshly executed module."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        on_import(module)

    def __getattr__(self, name):  # get_source, get_filename, ... of the wrapped loader
        return getattr(self._loader, name)


class PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds the watched modules with the other finders and wraps their loader."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


def install():
    """Put the finder first on ``sys.meta_path`` (idempotent); returns whether it is armed."""
    if disabled():
        return False
    if not any(isinstance(finder, PostImportFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, PostImportFinder())
    return True
