"""The catalogue: every algorithm the plugin adds to DomainBed, in the order tables show them, and for each one
that trains on generated images, its generation method's ``MethodSpec``.

Everything that lists algorithms or generation methods derives from here: DomainBed's registration and
hyperparameters, the generator's ``--methods``, the synthetic-data algorithms' mixing and split rules, the sweeps
and the tests. Online algorithms (MIRO, DomainFusion) are entries with no spec. A method of another package joins
with ``add`` in-process, or, so that every process of a sweep sees it, through the entry-point group
``domainbed_diffusion.catalogue`` (each entry point names a ``MethodSpec`` or an ``Entry``).
"""
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

from . import hparams_registry
from .generation.base import MethodSpec

ENTRY_POINT_GROUP = "domainbed_diffusion.catalogue"


@dataclass(frozen=True)
class Entry:
    """One DomainBed algorithm of the plugin."""
    algorithm: str  # DomainBed's name for it
    algorithm_class: Any  # the class, or "module:Class" (imported only when DomainBed registers it)
    hparams: Optional[Callable] = None  # its hyperparameter block: ``block(hparams, dataset)``
    spec: Optional[MethodSpec] = None  # the generation method it trains on (None: it generates online or not at all)
    control: bool = False  # a control of the ablation table (``sweeps/main_job.py --ablation``), not a method row
    generates_online: bool = False  # runs a diffusion model inside its steps: the cpu_parallel launcher starts it first
    reads: Optional[str] = None  # the generation method whose images it trains on (its own spec's, or another's)
    synthetic_mode: Optional[str] = None  # how it mixes them, where not as that method's spec says
    read_against: Tuple[str, ...] = ()  # the rows its row is read against in the ablation table, paired by trial

    @classmethod
    def of(cls, spec):
        return cls(spec.algorithm, spec.algorithm_class, spec.hparams, spec, spec.control, reads=spec.name,
                   read_against=spec.read_against)

    def reads_spec(self):
        """The ``MethodSpec`` of the method it trains on, or None."""
        return self.spec if self.spec is not None and self.spec.name == self.reads else \
            (spec(self.reads) if self.reads else None)

    @property
    def class_module(self):
        """The module its class is defined in (None: a class object given as is)."""
        if self.algorithm_class is None:
            return DERIVED_MODULE
        return self.algorithm_class.split(":")[0] if isinstance(self.algorithm_class, str) else None

    def load_class(self):
        if self.algorithm_class is None:
            return derived_class(self)
        if not isinstance(self.algorithm_class, str):
            return self.algorithm_class
        module, name = self.algorithm_class.split(":")
        return getattr(importlib.import_module(module), name)


DERIVED_MODULE = "domainbed_diffusion.algorithms"


def derived_class(entry):
    """The algorithm of a spec without a class: ``SyntheticERM`` under the spec's algorithm name, made once and
    set on ``algorithms`` so that it imports, pickles and prints like a written class."""
    algorithms = importlib.import_module(DERIVED_MODULE)
    cls = getattr(algorithms, entry.algorithm, None)
    if cls is None:
        doc = (f"ERM on real images plus the images of ``python -m offline_generation --methods {entry.reads}``, "
               f"mixed as {entry.reads_spec().synthetic_mode!r} (``SyntheticERM``; its spec: ``catalogue``).")
        cls = type(entry.algorithm, (algorithms.SyntheticERM,), dict(__doc__=doc, __module__=DERIVED_MODULE,
                                                                      __qualname__=entry.algorithm))
        setattr(algorithms, entry.algorithm, cls)
    return cls


def reads(algorithm_class):
    """The generation method an algorithm class trains on: its own catalogue entry's, else the nearest base
    class's with one (a subclass made by the options wrapper, or a user's subclass), else its ``METHOD``."""
    for cls in algorithm_class.__mro__:
        found = entry(cls.__name__)
        if found is not None and found.reads and found.load_class() is cls:
            return found.reads
    return getattr(algorithm_class, "METHOD", None)


# The plugin's own algorithms, in table order: an Entry, or the module of a generation method (its ``SPEC``).
BUILTIN = (
    Entry("MIRO", "domainbed_diffusion.algorithms:MIRO", hparams_registry.miro),
    "domainbed_diffusion.generation.cdga_pg",
    "domainbed_diffusion.generation.cdga_ig",
    "domainbed_diffusion.generation.edsam",
    "domainbed_diffusion.generation.latent_prior",
    Entry("DomainFusion", "domainbed_diffusion.algorithms:DomainFusion", hparams_registry.domainfusion,
          generates_online=True, read_against=("ERM_FusionMatched",)),
)
# Controls, in the ablation table's order: what a method's row is read against (``docs/results.md``).
CONTROLS = (
    Entry("ERM_Augment", "domainbed_diffusion.algorithms:ERM_Augment", hparams_registry.erm_augment, control=True,
          read_against=("ERM",)),
    Entry("ERM_RealMatched", "domainbed_diffusion.algorithms:ERM_RealMatched", hparams_registry.real_matched,
          control=True, read_against=("ERM",)),
    "domainbed_diffusion.generation.regenerate",
    Entry("Regenerated_Balanced", "domainbed_diffusion.algorithms:Regenerated_Balanced", control=True,
          reads="regenerate", synthetic_mode="balanced"),
    "domainbed_diffusion.generation.composite",
    Entry("ERM_FusionMatched", "domainbed_diffusion.algorithms:ERM_FusionMatched", hparams_registry.fusion_matched,
          control=True),
)
_added = []  # entries given to ``add`` in this process
_loaded = None  # the built-in and entry-point entries, read once


def _as_entry(item, where):
    if isinstance(item, str):
        item = importlib.import_module(item).SPEC
    if isinstance(item, MethodSpec):
        return Entry.of(item)
    if isinstance(item, Entry):
        return item
    raise TypeError(f"{where}: a catalogue entry is a MethodSpec or a catalogue.Entry, not {type(item).__name__}")


def _entry_points():
    from importlib.metadata import entry_points
    return [(f"entry point {ep.name} = {ep.value}", ep.load()) for ep in entry_points(group=ENTRY_POINT_GROUP)]


def entries():
    """Every entry: the built-in ones, those of installed packages' entry points, then those added here."""
    global _loaded
    if _loaded is None:
        _loaded = [_as_entry(item, "catalogue.BUILTIN") for item in BUILTIN + CONTROLS]
        _loaded += [_as_entry(item, where) for where, item in _entry_points()]
    return tuple(_loaded + _added)


def add(item):
    """Add a ``MethodSpec`` or ``Entry`` in this process (call ``domainbed_diffusion.register()`` afterwards if
    DomainBed's algorithms module is already imported); returns its entry."""
    entry = _as_entry(item, "catalogue.add")
    names = {e.algorithm for e in entries()}
    methods = {e.spec.name for e in entries() if e.spec is not None}
    if entry.algorithm in names or (entry.spec is not None and entry.spec.name in methods):
        raise ValueError(f"catalogue.add: {entry.algorithm} (method {entry.spec and entry.spec.name}) is already in "
                         f"the catalogue")
    _added.append(entry)
    return entry


def remove(algorithm):
    """Remove an entry given to ``add`` (built-in ones stay)."""
    _added[:] = [e for e in _added if e.algorithm != algorithm]


def algorithms(controls=False):
    """The plugin's DomainBed algorithm names, in table order; the controls too with ``controls=True``."""
    return tuple(e.algorithm for e in entries() if controls or not e.control)


def readings():
    """``(row, control)`` pairs of the ablation table, in table order: each entry's ``read_against``."""
    return tuple((e.algorithm, other) for e in entries() for other in e.read_against)


def controls():
    """The controls' DomainBed algorithm names, in the ablation table's order."""
    return tuple(e.algorithm for e in entries() if e.control)


def entry(algorithm):
    """The entry of a DomainBed algorithm name, or None (DomainBed's own algorithms)."""
    return next((e for e in entries() if e.algorithm == algorithm), None)


def specs():
    """``{generation method name: MethodSpec}``, in table order."""
    return {e.spec.name: e.spec for e in entries() if e.spec is not None}


def methods(controls=False):
    """The generation methods' names (the generator's ``--methods all``); the controls' too with ``controls=True``."""
    return tuple(name for name, spec in specs().items() if controls or not spec.control)


def spec(method):
    """The ``MethodSpec`` of a generation method name; an unknown one is an error listing the known ones."""
    found = specs().get(method)
    if found is None:
        raise KeyError(f"no generation method {method!r} in the catalogue: known are {', '.join(methods())}")
    return found
