"""domainbed-diffusion: diffusion-based domain generalization as a DomainBed plugin.

Importing this package is cheap (no torch): interpreter start-up imports it through the installed
``domainbed_diffusion.pth`` to arm registration into DomainBed. ``register()`` does the same by hand.
"""
__version__ = "0.1.0"


def register():
    """Register the plugin's algorithms, hyperparameters, datasets and launchers into DomainBed."""
    from .registration import register as _register
    return _register()
