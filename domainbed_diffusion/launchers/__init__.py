"""Command launchers the plugin adds to ``domainbed.command_launchers.REGISTRY``: ``cpu_parallel`` (parallel CPU
lanes, DomainBed's train runs forked from the train server) and ``slurm`` (one job array per sweep)."""
from . import cpu_parallel, slurm

REGISTRY = {"cpu_parallel": cpu_parallel.launcher, "slurm": slurm.launcher}
