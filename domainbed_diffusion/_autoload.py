"""Arms registration into DomainBed in every Python process.

Imported at interpreter start-up by the ``domainbed_diffusion.pth`` file that ``pip install`` puts in
site-packages (the mechanism coverage.py uses to reach subprocesses). DomainBed's sweep starts every run as a
fresh ``python -m domainbed.scripts.train`` process, so registration has to happen on import, not by a flag.
This module is standard library only: it must cost nothing in processes that never import DomainBed.
Set ``DOMAINBED_DIFFUSION_DISABLE=1`` to opt out.
"""
import importlib.abc
import os
import sys

OPT_OUT_VARIABLE = "DOMAINBED_DIFFUSION_DISABLE"

# The DomainBed modules the plugin extends once they have finished executing.
WATCHED = (
    "domainbed.lib.misc",
    "domainbed.networks",
    "domainbed.datasets",
    "domainbed.hparams_registry",
    "domainbed.algorithms",
    "domainbed.command_launchers",
)


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
        from domainbed_diffusion import registration
        registration.on_import(module)

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


install()
