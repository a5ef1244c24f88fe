"""Results of any DomainBed sweep: DomainBed's tables under each of its selection methods, every row paired with a
baseline by trial seed (t-interval, Holm over a stated family, optional equivalence test), cost columns, plots, and
a tidy per-run file that the same command reads back.

    python -m domainbed_diffusion.results --input_dir SWEEP [SWEEP ...] [--output_dir DIR]

``records`` reads sweep folders without crashing on half-written runs, ``selection`` applies DomainBed's selection
methods, ``tidy`` writes and reads the per-run file, ``tables`` and ``plots`` present, ``comparisons`` holds the
statistics. ``load`` and ``analyse`` are the library's two steps, used by ``sweeps/main_job.py`` too.
"""
from . import plots, tables
from .comparisons import compare_to, equivalence, holm, paired
from .records import UnfinishedRuns, read_sweeps
from .selection import SELECTIONS
from .tidy import TidyError, load, read_tidy, write_tidy
from .tables import analyse

__all__ = ["SELECTIONS", "TidyError", "UnfinishedRuns", "analyse", "compare_to", "equivalence", "holm", "load",
           "paired", "read_sweeps", "read_tidy", "write_tidy"]
