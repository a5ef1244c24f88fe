"""What ships inside the package, named ``"embedded"`` wherever a model or featurizer is chosen by name.

- the embedded diffusion model: a tiny latent diffusion model in Stable Diffusion's diffusers format, trained on
  DigitStyles' pre-training pool (``python -m offline_generation train-embedded``);
- the embedded featurizer: DomainBed's MNIST_CNN pretrained on the pool's non-benchmark styles
  (``python -m domainbed_diffusion.pretrained``).
"""
import os

EMBEDDED = "embedded"  # the name that selects a shipped model: --model, diffusion_model, pretrained_featurizer
PAPERS_MODEL = "CompVis/stable-diffusion-v1-4"  # the papers' diffusion model (a local folder or cached id)
FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embedded")
EMBEDDED_MODEL_PATH = os.path.join(FOLDER, "digitstyles-ldm")
EMBEDDED_FEATURIZER_PATH = os.path.join(FOLDER, "digitstyles-featurizer.pt")
