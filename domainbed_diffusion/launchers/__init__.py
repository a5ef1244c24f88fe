"""Command launchers the plugin adds to ``domainbed.command_launchers.REGISTRY``: ``cpu_parallel`` (parallel CPU
lanes, DomainBed's train runs forked from the train server) and ``slurm`` (one job array per sweep); and DomainBed's
own ``local`` and ``multi_gpu``, made to run this interpreter (``with_this_python``)."""
import functools
import shlex
import sys


def this_python(command):
    """DomainBed's jobs start with a bare ``python``, whichever one is first on PATH (perhaps one without the plugin,
    or without torch): run them with the interpreter that launches them."""
    return shlex.quote(sys.executable) + command[len("python"):] if command.startswith("python ") else command


def with_this_python(launcher):
    """A DomainBed launcher whose commands run this interpreter."""
    if getattr(launcher, "_this_python", False):
        return launcher

    @functools.wraps(launcher)
    def launch(commands, *args, **kwargs):
        return launcher([this_python(c) for c in commands], *args, **kwargs)
    launch._this_python = True
    return launch


from . import cpu_parallel, slurm  # noqa: E402  (they use this_python)

REGISTRY = {"cpu_parallel": cpu_parallel.launcher, "slurm": slurm.launcher}
