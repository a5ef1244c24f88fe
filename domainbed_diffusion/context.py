"""The run context: what a DomainBed run knows that an ``Algorithm`` constructor is not given.

DomainBed builds an algorithm from ``(input_shape, num_classes, num_domains, hparams)`` only, but the
generation-based algorithms also need the dataset name, ``data_dir``, the test environments, environment and
class names, and the train/validation split. DomainBed builds the dataset with ``(root, test_envs, hparams)``
and splits it just before building the algorithm, in the same process, so the plugin records both there
(see ``registration``). Nothing here imports DomainBed.
"""
import argparse
import os
import sys
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
    env_labels: List[str] = field(default_factory=list)  # the dataset's ENVIRONMENTS (collect_results' columns)
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


_current: Optional[RunContext] = None


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


def capture(dataset, root, test_envs, hparams):
    """Record a freshly built DomainBed dataset as the current run's context."""
    global _current
    _current = RunContext(
        dataset_name=type(dataset).__name__,
        data_dir=root,
        test_envs=sorted(int(e) for e in (test_envs or [])),
        hparams=hparams,
        dataset=dataset,
        env_names=_env_names(dataset),
        env_labels=[str(e) for e in (getattr(dataset, "ENVIRONMENTS", None) or [])],
        class_names=_class_names(dataset),
        train_args=_train_script_args(),
    )
    return _current


def record_split(env_dataset, validation, training):
    """Record the train script's split of one env of the current dataset (other splits are ignored)."""
    if _current is None:
        return None
    for index, env in enumerate(getattr(_current.dataset, "datasets", [])):
        if env is env_dataset and index not in _current.splits:
            _current.splits[index] = (validation, training)
            return index
    return None


def set_run_context(context):
    """Set the context by hand, for building algorithms outside DomainBed's train script."""
    global _current
    _current = context
    return context


def clear():
    global _current
    _current = None


def current():
    return _current


class MissingRunContextError(RuntimeError):
    pass


def require(algorithm_name, input_shape=None, num_domains=None):
    """The current context, checked against what the algorithm was built with; a clear error otherwise."""
    ctx = _current
    how = ("Build the dataset first through DomainBed (`domainbed.datasets.get_dataset_class(name)(data_dir, "
           "test_envs, hparams)`, which the train script does), or call "
           "`domainbed_diffusion.context.set_run_context(...)`.")
    if ctx is None:
        raise MissingRunContextError(
            f"{algorithm_name} needs the run context (dataset name, data_dir, test envs, env and class names) "
            f"and none was recorded in this process. {how}")
    if input_shape is not None and ctx.input_shape and tuple(input_shape) != ctx.input_shape:
        raise MissingRunContextError(
            f"{algorithm_name} was built for input shape {tuple(input_shape)} but the last dataset built in this "
            f"process, {ctx.dataset_name}, has input shape {ctx.input_shape}. {how}")
    if num_domains is not None and ctx.env_names and num_domains != len(ctx.env_names) - len(ctx.test_envs):
        raise MissingRunContextError(
            f"{algorithm_name} was built for {num_domains} training domains but the run context of "
            f"{ctx.dataset_name} has {len(ctx.env_names)} envs with test envs {ctx.test_envs}. {how}")
    return ctx
