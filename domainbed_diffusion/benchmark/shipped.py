"""What ships inside the package, named ``"embedded"`` wherever a model or featurizer is chosen by name.

- the embedded diffusion models: tiny latent diffusion models in Stable Diffusion's diffusers format, trained on
  DigitStyles' pre-training pool: one per benchmark style that never saw it (what a run uses by default) and the
  all-styles model (an ablation) (``python -m offline_generation train-embedded``);
- the embedded featurizer: DomainBed's MNIST_CNN pretrained on the pool's non-benchmark styles
  (``python -m domainbed_diffusion.benchmark.pretrained``).
"""
import os

EMBEDDED = "embedded"  # the name that selects a shipped model: --model, diffusion_model, pretrained_featurizer
EMBEDDED_ALL_STYLES = "embedded-all-styles"  # the diffusion model trained on every style (an ablation)
PAPERS_MODEL = "CompVis/stable-diffusion-v1-4"  # the papers' diffusion model (a local folder or cached id)
FOLDER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "embedded")  # in the package
EMBEDDED_MODEL_PATH = os.path.join(FOLDER, "digitstyles-ldm")
EMBEDDED_FEATURIZER_PATH = os.path.join(FOLDER, "digitstyles-featurizer.pt")
MODEL_CARD = "trained_on.json"  # in a model folder: the DigitStyles styles the model was trained on


def held_out_model_path(style, folder=FOLDER):
    """The shipped DigitStyles model that never saw ``style``."""
    return os.path.join(folder, f"digitstyles-ldm-without-{style}")
