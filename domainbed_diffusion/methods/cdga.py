"""CDGA (Hemati et al., 2023): synthetic images in the vicinity of every ordered pair of training domains.

PG: img2img of each image of env i with the prompt "a {class}, {description of env j}".
IG: the same pairs, guided by an image of the same class from env j instead of text. Stable Diffusion v1.x has
no image conditioning, so the guide acts in pixel space (``style.transplant``): the source's foreground,
recoloured to the guide foreground's statistics, is set on the guide's own background, then img2img with the
class-only prompt redraws it onto the image manifold. It needs only the components every user of the other
methods has, and works where domains have no text (VLCS, TerraIncognita). Image-conditioned pipelines
(diffusers' image variation, unCLIP) are not supported.
"""
import json
import os
import random

from .style import transplant

PROMPT_TEMPLATE = "a {class_name}, {domain}"
CLASS_PROMPT_TEMPLATE = "a {class_name}"

# Default env -> description per dataset, keyed by DomainBed's env folder names.
DOMAIN_DESCRIPTIONS = {
    "PACS": {"art_painting": "art painting", "cartoon": "cartoon, cartoonish",
             "photo": "photorealistic, extremely detailed", "sketch": "sketch drawing, black and white, less details"},
    "OfficeHome": {"Art": "art painting, art", "Clipart": "clipart, schematic, simplified",
                   "Product": "product, merchandise", "Real World": "real world, extremely detailed"},
    "DomainNet": {"clipart": "cartoon, cartoonish, drawing", "infograph": "infographic, data visualization, poster",
                  "painting": "art painting", "quickdraw": "extremely simple drawing, black and white",
                  "real": "photorealistic, extremely detailed", "sketch": "sketch drawing, black and white, less details"},
    # VLCS' domains are source datasets: describe what sets their photos apart.
    "VLCS": {"Caltech101": "centered object photo, plain background", "LabelMe": "street scene photo",
             "SUN09": "cluttered indoor scene photo", "VOC2007": "consumer snapshot photo"},
    # TerraIncognita's domains are camera sites with no describable style: PG is then class-guided img2img.
    # Give descriptions of your own (--domain_descriptions) or use CDGA-IG there.
    "TerraIncognita": {"location_100": "camera trap photo", "location_38": "camera trap photo",
                       "location_43": "camera trap photo", "location_46": "camera trap photo"},
}


def _digitstyles_descriptions():
    from ..benchmark.digitstyles import DOMAINS, STYLE_DESCRIPTIONS
    return {d: STYLE_DESCRIPTIONS[d] for d in DOMAINS}


DOMAIN_DESCRIPTIONS["DigitStyles"] = _digitstyles_descriptions()


def class_text(class_name):
    """A class folder name as words: underscores and hyphens become spaces."""
    return class_name.replace("_", " ").replace("-", " ").strip()


def load_descriptions(dataset, env_names, override=None):
    """The env -> description map for ``dataset``: the defaults, updated by ``override`` (a dict, a JSON string
    or a JSON file). Raises with the missing env names when an env has no description."""
    descriptions = dict(DOMAIN_DESCRIPTIONS.get(dataset, {}))
    if override:
        if isinstance(override, str):
            if os.path.isfile(override):
                with open(override) as f:
                    override = json.load(f)
            else:
                try:
                    override = json.loads(override)
                except json.JSONDecodeError:
                    raise ValueError(f"--domain_descriptions {override!r} is neither a JSON file nor a JSON object "
                                     f"like '{{\"env\": \"description\"}}'") from None
        descriptions.update(override)
    missing = [e for e in env_names if e not in descriptions]
    if missing:
        example = json.dumps({e: "<description>" for e in missing})
        raise ValueError(f"CDGA-PG has no domain description for env(s) {missing} of {dataset}: pass "
                         f"--domain_descriptions '{example}', or use cdga-ig, which needs no text.")
    return descriptions


def pg_prompt(class_name, description, template=PROMPT_TEMPLATE):
    return template.format(class_name=class_text(class_name), domain=description)


def class_prompt(class_name, template=CLASS_PROMPT_TEMPLATE):
    return template.format(class_name=class_text(class_name))


def choose_guide(candidates, key, presorted=False):
    """A guide image among ``candidates`` (same class, guide env), chosen deterministically from ``key``
    (``presorted``: the caller passes them sorted, as a plan over a whole dataset does once per class)."""
    if not candidates:
        return None
    return (candidates if presorted else sorted(candidates))[random.Random(key).randrange(len(candidates))]


def prompt_guided(model, latents, prompts, seeds, strength, steps, guidance):
    """CDGA-PG images (B, 3, R, R) in [0, 1]: img2img of clean ``latents`` toward ``prompts``, a seed per image."""
    from ..diffusion.pipeline import generators_from_seeds
    out = model.img2img(latents, prompts, strength, steps, guidance, generators_from_seeds(seeds))
    return model.decode_latents(out)


def image_guided(model, pixels, guide_pixels, prompts, seeds, strength, steps, guidance, mix=1.0):
    """CDGA-IG images: source ``pixels`` (B, 3, R, R) in [0, 1] transplanted onto their guides
    (``style.transplant``), then img2img with the class-only ``prompts``."""
    latents = model.encode_images(transplant(pixels, guide_pixels, mix))
    return prompt_guided(model, latents, prompts, seeds, strength, steps, guidance)
