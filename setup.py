"""domainbed-diffusion: diffusion-based domain generalization methods as a DomainBed plugin.

Besides the packages, the install puts ``domainbed_diffusion.pth`` in site-packages: one line that imports
``domainbed_diffusion._autoload`` at interpreter start-up, so that every process (DomainBed's sweep starts one
per run) registers the plugin when it imports DomainBed.
"""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "domainbed_diffusion.pth"
PTH_LINE = "import domainbed_diffusion._autoload\n"


class BuildPyWithPth(build_py):
    """Also write the start-up ``.pth`` at the root of the built tree (it lands in site-packages)."""

    def run(self):
        super().run()
        path = os.path.join(self.build_lib, PTH_NAME)
        with open(path, "w") as f:
            f.write(PTH_LINE)


class EditableWheelWithPth(editable_wheel):
    """``pip install -e .`` gets the same start-up ``.pth`` in site-packages."""

    def _run_build_commands(self, dist_name, unpacked_wheel, build_lib, tmp_dir):
        files, mapping = super()._run_build_commands(dist_name, unpacked_wheel, build_lib, tmp_dir)
        with open(os.path.join(unpacked_wheel, PTH_NAME), "w") as f:
            f.write(PTH_LINE)
        return files, mapping


def _readme():
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "README.md"), encoding="utf-8") as f:
        return f.read()


setup(
    name="domainbed-diffusion",
    version="0.1.0",
    description="Diffusion-based domain generalization (DomainFusion, CDGA, ED-SAM, latent-prior sampling) "
                "and MIRO for DomainBed",
    long_description=_readme(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["domainbed_diffusion", "domainbed_diffusion.*",
                                    "offline_generation", "offline_generation.*"]),
    package_data={"domainbed_diffusion": ["embedded/*/*.json", "embedded/*/*/*.json", "embedded/*/*/*.txt",
                                          "embedded/*/*/*.safetensors", "embedded/*.pt"]},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "diffusers>=0.30",
        "transformers>=4.40",
        "accelerate",  # diffusers then loads checkpoints without first initialising random weights
        "numpy",
        "pillow",
        "tqdm",
        "scikit-learn",
        "safetensors",
        "scipy",  # statistics
        "torchmetrics",  # FID and KID in the synthetic-domain report
        "matplotlib",  # the results command's plots
    ],
    extras_require={
        # what DomainBed's own import and unit tests need (DomainBed itself is a checkout on PYTHONPATH)
        "domainbed": ["wilds", "timm", "parameterized"],
        "test": ["pytest", "parameterized"],
        "slurm": ["submitit"],
    },
    entry_points={"console_scripts": [
        "domainbed-diffusion-generate=offline_generation.cli:main",
        "digitstyles-prepare=domainbed_diffusion.benchmark.digitstyles:main",
    ]},
    cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth},
)
