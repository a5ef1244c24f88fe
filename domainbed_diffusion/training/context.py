"""The run context: what a DomainBed run knows that an ``Algorithm`` constructor is not given.

DomainBed builds an algorithm from ``(input_shape, num_classes, num_domains, hparams)`` only, but the
generation-based algorithms also need the dataset name, ``data_dir``, the test environments, environment and
class names, and the train/validation split. DomainBed builds the dataset with ``(root, test_envs, hparams)``
and splits it just before building the algorithm, in the same process, so the plugin records both there
(see ``registration``). Nothing here imports DomainBed.
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import weakref
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


@dataclass
class RunContext:
    dataset_name: str
    data_dir: Optional[str]
    test_envs: List[int]
    hparams: Dict[str, Any]
    dataset: Any = None
    env_names: List[str] = field(default_factory=list)  # folder names on disk where there are folders
    class_names: List[str] = field(default_factory=list)
    # env index -> (validation split, training split), as DomainBed's train script split it
    splits: Dict[int, Tuple[Any, Any]] = field(default_factory=dict)
    train_args: Optional[argparse.Namespace] = None  # the train script's parsed arguments, when inside one

    @property
    def train_envs(self):
        return [i for i in range(len(self.env_names)) if i not in self.test_envs]

    @property
    def input_shape(self):
        return tuple(getattr(self.dataset, "input_shape", ()) or ())

    @property
    def total_steps(self):
        """Steps of this run: the train script's ``--steps`` or the dataset's ``N_STEPS``."""
        steps = getattr(self.train_args, "steps", None)
        return steps or getattr(self.dataset, "N_STEPS", None)

    @property
    def output_dir(self):
        return getattr(self.train_args, "output_dir", None)

    def training_split(self, env_index):
        """The images this run trains on for one env: the in-split when the run split it, else the whole env."""
        if env_index in self.splits:
            return self.splits[env_index][1]
        return self.dataset[env_index]

    def training_keys(self, env_index):
        """Indices into the env of the images this run trains on."""
        split = self.training_split(env_index)
        return list(getattr(split, "keys", range(len(self.dataset[env_index]))))

    def validation_keys(self, env_index):
        """Indices into the env of the images of this run's validation split (none when it was not split)."""
        return list(self.splits[env_index][0].keys) if env_index in self.splits else []


def _train_script_args():
    """The parsed arguments of ``python -m domainbed.scripts.train`` when this process is one."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is None or spec.name != "domainbed.scripts.train":
        return None
    args = getattr(main, "args", None)
    return args if isinstance(args, argparse.Namespace) else None


def _env_names(dataset):
    names = []
    for env in getattr(dataset, "datasets", []):
        root = getattr(env, "root", None)
        names.append(os.path.basename(os.path.normpath(root)) if isinstance(root, str) else None)
    if names and all(names):
        return names
    return [str(e) for e in (getattr(dataset, "ENVIRONMENTS", None) or range(len(names)))]


def _class_names(dataset):
    envs = getattr(dataset, "datasets", [])
    classes = getattr(envs[-1], "classes", None) if envs else None
    if classes:
        return list(classes)
    return [str(c) for c in range(getattr(dataset, "num_classes", 0))]


# Every dataset built in this process (weakly: a dataset nobody holds drops out), newest last, and a context
# set by hand (``set_run_context`` / ``use``), which wins while it is set.
_registry: List[Tuple[Any, RunContext]] = []
_explicit: Optional[RunContext] = None


def _live():
    """``[(dataset, context)]`` of the datasets still alive, oldest first."""
    alive = [(ref(), ctx) for ref, ctx in _registry]
    _registry[:] = [(ref, ctx) for (ref, ctx), (dataset, _) in zip(_registry, alive) if dataset is not None]
    return [(dataset, ctx) for dataset, ctx in alive if dataset is not None]


def _with_dataset(ctx, dataset):
    return dataclasses.replace(ctx, dataset=dataset)


def capture(dataset, root, test_envs, hparams):
    """Record a freshly built DomainBed dataset's run context."""
    ctx = RunContext(
        dataset_name=type(dataset).__name__,
        data_dir=root,
        test_envs=sorted(int(e) for e in (test_envs or [])),
        hparams=hparams,
        dataset=None,  # held weakly by the registry; a context handed to an algorithm holds it
        env_names=_env_names(dataset),
        class_names=_class_names(dataset),
        train_args=_train_script_args(),
    )
    try:
        ref = weakref.ref(dataset)
    except TypeError:  # not weak-referenceable: held for the process's life
        ref = (lambda d: (lambda: d))(dataset)
    _live()
    _registry.append((ref, ctx))
    return _with_dataset(ctx, dataset)


def record_split(env_dataset, validation, training):
    """Record the train script's split of one env of a dataset built in this process (first split wins); the
    dataset's context when this split was recorded, else None."""
    for dataset, ctx in reversed(_live()):
        for index, env in enumerate(getattr(dataset, "datasets", [])):
            if env is env_dataset:
                if index not in ctx.splits:
                    ctx.splits[index] = (validation, training)
                    return _with_dataset(ctx, dataset)
                return None
    return None


def live_contexts():
    """The contexts of the datasets built in this process and still alive, oldest first."""
    return [ctx for _, ctx in _live()]


def set_run_context(context):
    """Set the context by hand, for building algorithms outside DomainBed's train script (None to unset)."""
    global _explicit
    _explicit = context
    return context


@contextlib.contextmanager
def use(dataset):
    """``with use(dataset): algorithm = ...`` builds algorithms for ``dataset`` (one built in this process),
    whatever else was built since."""
    for candidate, ctx in _live():
        if candidate is dataset:
            global _explicit
            previous, _explicit = _explicit, _with_dataset(ctx, dataset)
            try:
                yield _explicit
            finally:
                _explicit = previous
            return
    raise MissingRunContextError(f"{type(dataset).__name__} was not built through DomainBed's dataset classes "
                                 f"in this process, so it has no run context")


def clear():
    global _explicit
    _explicit = None
    _registry.clear()


def current():
    """The explicit context, else that of the newest dataset still alive, else None."""
    if _explicit is not None:
        return _explicit
    live = _live()
    return _with_dataset(live[-1][1], live[-1][0]) if live else None


class MissingRunContextError(RuntimeError):
    pass


def synthetic_methods(hparams):
    """The generation methods a run's ``synthetic_methods`` hparam names (a list, or one name; ``options``)."""
    value = (hparams or {}).get("synthetic_methods") or []
    return [value] if isinstance(value, str) else list(value)


def extra_environments(hparams):
    """How many synthetic training environments an algorithm is built with beyond the real ones (``options``)."""
    return len(synthetic_methods(hparams)) if (hparams or {}).get("synthetic_as") == "environments" else 0


def _describe(ctx):
    return f"{ctx.dataset_name} (data_dir {ctx.data_dir}, test envs {ctx.test_envs})"


def require(algorithm_name, input_shape=None, num_domains=None, hparams=None):
    """The run context the algorithm is built for; a clear error when there is none, or when datasets built in
    this process leave it ambiguous.

    The context is, in order: one set by hand (``set_run_context`` / ``use``); that of the dataset built with
    this very ``hparams`` dict (DomainBed's train script and unit tests pass one dict to both); else that of
    the live datasets whose input shape and number of training envs fit. Two candidates that disagree on
    dataset, data_dir or test envs are an error, never a guess: an algorithm filtering synthetic images
    against another run's test env would leak.
    """
    how = ("Build the dataset first through DomainBed (`domainbed.datasets.get_dataset_class(name)(data_dir, "
           "test_envs, hparams)`, which the train script does), or call "
           "`domainbed_diffusion.training.context.set_run_context(...)`.")

    built_for = (f"{algorithm_name} was built for input shape {tuple(input_shape or ())} and {num_domains} "
                 f"training domains")
    if num_domains is not None:
        num_domains -= extra_environments(hparams)  # synthetic environments are not envs of the dataset

    def fits(ctx, dataset):
        shape = tuple(getattr(dataset, "input_shape", ()) or ())
        if input_shape is not None and shape and tuple(input_shape) != shape:
            return False
        return num_domains is None or not ctx.env_names or num_domains == len(ctx.env_names) - len(ctx.test_envs)

    if _explicit is not None:
        ctx = _explicit
        if not fits(ctx, ctx.dataset):
            raise MissingRunContextError(
                f"{built_for}, which the run context set by hand, {_describe(ctx)}, does not have. {how}")
        return ctx
    live = _live()
    if not live:
        raise MissingRunContextError(
            f"{algorithm_name} needs the run context (dataset name, data_dir, test envs, env and class names) "
            f"and none was recorded in this process. {how}")
    same = [(d, c) for d, c in live if hparams is not None and c.hparams is hparams]
    candidates = same if same else [(d, c) for d, c in live if fits(c, d)]
    if not candidates:
        ctx = live[-1][1]
        raise MissingRunContextError(
            f"{built_for}, but no dataset built in this process has them (the newest is {_describe(ctx)}). {how}")
    keys = {(c.dataset_name, c.data_dir, tuple(c.test_envs)) for _, c in candidates}
    if len(keys) > 1:
        names = "; ".join(sorted({_describe(c) for _, c in candidates}))
        raise MissingRunContextError(
            f"{algorithm_name}: more than one dataset built in this process could be the one it is for ({names}), "
            f"and they differ, so the synthetic images it may use are ambiguous. Build it inside `with "
            f"domainbed_diffusion.training.context.use(dataset): ...`, or pass it the hparams dict its dataset was built "
            f"with, or drop the other datasets.")
    dataset, ctx = candidates[-1]
    if not fits(ctx, dataset):
        raise MissingRunContextError(
            f"{built_for} but the dataset built with its hparams, {_describe(ctx)}, has input shape "
            f"{tuple(getattr(dataset, 'input_shape', ()))} and {len(ctx.env_names)} envs. {how}")
    return _with_dataset(ctx, dataset)
