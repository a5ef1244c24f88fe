"""The catalogue: every algorithm the plugin adds to DomainBed, in the order tables show them, and for each one
that trains on generated images, its generation method's ``MethodSpec``. It is data: nothing here imports
DomainBed or the algorithms; ``registration`` makes the classes.

Everything that lists algorithms or generation methods derives from here: DomainBed's registration and
hyperparameters, the generator's ``--methods``, the synthetic-data algorithms' mixing and split rules, the sweeps
and the tests. Online algorithms (MIRO, DomainFusion) are entries with no spec. A method of another package joins
with ``add`` in-process, or, so that every process of a sweep sees it, through the entry-point group
``domainbed_diffusion.catalogue`` (each entry point names a ``MethodSpec`` or an ``Entry``).
"""
import importlib
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

from . import hparams_registry
from .generation.base import MethodSpec

ENTRY_POINT_GROUP = "domainbed_diffusion.catalogue"


@dataclass(frozen=True)
class Entry:
    """One DomainBed algorithm of the plugin. Its class is ``algorithm_class`` when given (a class object), else
    the class of that name in ``domainbed_diffusion.algorithms`` (or in its spec's runner's module), else one
    ``registration`` derives from ``SyntheticERM`` for an entry that reads a generation method's images."""
    algorithm: str  # DomainBed's name for it
    hparams: Optional[Callable] = None  # its hyperparameter block: ``block(hparams, dataset)``
    spec: Optional[MethodSpec] = None  # the generation method it trains on (None: it generates online or not at all)
    control: bool = False  # a control of the ablation table (``sweeps/main_job.py --ablation``), not a method row
    generates_online: bool = False  # runs a diffusion model inside its steps: the cpu_parallel launcher starts it first
    reads: Optional[str] = None  # the generation method whose images it trains on (its own spec's, or another's)
    synthetic_mode: Optional[str] = None  # how it mixes them, where not as that method's spec says
    read_against: Tuple[str, ...] = ()  # the rows its row is read against in the ablation table, paired by trial
    algorithm_class: Optional[type] = None  # a class given in-process (none: found by its name, or derived)

    @classmethod
    def of(cls, spec):
        return cls(spec.algorithm, spec.hparams, spec, spec.control, reads=spec.name, read_against=spec.read_against)

    def reads_spec(self):
        """The ``MethodSpec`` of the method it trains on, or None."""
        return self.spec if self.spec is not None and self.spec.name == self.reads else \
            (spec(self.reads) if self.reads else None)

    @property
    def mode(self):
        """How it mixes the images it reads: its own ``synthetic_mode``, else its method's (None: it reads none)."""
        read = self.reads_spec()
        return self.synthetic_mode or (read.synthetic_mode if read else None)


# The plugin's own algorithms, in table order: an Entry, or the module of a generation method (its ``SPEC``).
BUILTIN = (
    Entry("MIRO", hparams_registry.miro),
    "domainbed_diffusion.generation.cdga_pg",
    "domainbed_diffusion.generation.cdga_ig",
    "domainbed_diffusion.generation.edsam",
    "domainbed_diffusion.generation.latent_prior",
    Entry("DomainFusion", hparams_registry.domainfusion, generates_online=True, read_against=("ERM_FusionMatched",)),
)
# Controls, in the ablation table's order: what a method's row is read against (``docs/results.md``).
CONTROLS = (
    Entry("ERM_Augment", hparams_registry.erm_augment, control=True, read_against=("ERM",)),
    Entry("ERM_RealMatched", hparams_registry.real_matched, control=True, read_against=("ERM",)),
    "domainbed_diffusion.generation.regenerate",
    Entry("Regenerated_Balanced", control=True, reads="regenerate", synthetic_mode="balanced"),
    "domainbed_diffusion.generation.composite",
    Entry("ERM_FusionMatched", hparams_registry.fusion_matched, control=True),
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
