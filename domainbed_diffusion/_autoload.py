"""Imported at interpreter start-up by the ``domainbed_diffusion.pth`` file that ``pip install`` puts in
site-packages: arms registration into DomainBed in every Python process (see ``registration``)."""
from domainbed_diffusion import registration

registration.install()
