"""Which diffusion model may make a run's synthetic images: the model that never saw the run's test env.

A model folder may carry a card, ``trained_on.json`` (``shipped.MODEL_CARD``), naming the envs (for DigitStyles,
the styles) it was trained on. The generator writes that list into every manifest record it makes
(``model_trained_on``), and the reader refuses an image whose model saw a test env of the run, unless the
hparam ``UNSAFE_generator_saw_test_env`` is set (never a default; the all-styles ablation sets it).

Names of models, wherever a model is chosen (``--model``, the hparam ``diffusion_model``):

- ``embedded``: on DigitStyles, per test env: the shipped model trained without that env's style, so a run
  with test env ``neon`` reads images made by ``embedded-without-neon`` and DomainFusion loads that model;
  on any other dataset the all-styles model (it saw no image of them);
- ``embedded-all-styles`` (``embedded-without-<style>``): one shipped model;
- a folder or Hugging Face id: one model for every test env (the papers' Stable Diffusion, whose training data
  lists no benchmark: it has no card, which the reader takes as "saw none of the envs", the papers' premise);
- a name with ``{test_env}`` in it, e.g. ``/models/sd-without-{test_env}``: one model per test env, the env's
  name filled in (a user's per-test-env models on the papers' datasets).
"""
import json
import os
from dataclasses import dataclass
from typing import List, Optional

from ..benchmark import DIGITSTYLES
from ..data.provenance import GeneratorLeakError
from ..benchmark.shipped import EMBEDDED, EMBEDDED_ALL_STYLES, EMBEDDED_MODEL_PATH, MODEL_CARD, held_out_model_path

TEST_ENV = "{test_env}"


@dataclass(frozen=True)
class Generator:
    """One model of a generation job and the envs it makes images for."""
    model: str  # a name or folder for ``LatentDiffusion.from_pretrained``
    tag: Optional[str]  # the folder its images go under ("without-neon"); None for a dataset's single model
    held_out: Optional[str]  # the env it serves as test env (its images are never of that env)


def embedded_folder(name):
    """The shipped folder of an ``embedded...`` name, else None."""
    if name == EMBEDDED or name == EMBEDDED_ALL_STYLES:
        return EMBEDDED_MODEL_PATH
    prefix = EMBEDDED + "-without-"
    if name.startswith(prefix):
        return held_out_model_path(name[len(prefix):])
    return None


def per_test_env(model, dataset):
    """A ``{test_env}`` template of ``model`` when it names one model per test env on ``dataset``, else None."""
    model = model or EMBEDDED
    if model == EMBEDDED and dataset == DIGITSTYLES:
        return EMBEDDED + "-without-" + TEST_ENV
    return model if TEST_ENV in model else None


def generators(model, dataset, env_names):
    """The models of a generation job over ``env_names``: one per test env, or one for all."""
    template = per_test_env(model, dataset)
    if template is None:
        return [Generator(model or EMBEDDED, None, None)]
    return [Generator(template.replace(TEST_ENV, env), f"without-{env}", env) for env in env_names]


def model_for_run(model, dataset, test_env_names):
    """The model an online algorithm (DomainFusion) loads for a run with these test envs."""
    template = per_test_env(model, dataset)
    if template is None:
        return model or EMBEDDED
    if len(test_env_names) != 1:
        raise GeneratorLeakError(
            f"diffusion_model {model!r} names one model per test env, and this run has test envs "
            f"{list(test_env_names)}: run one test env at a time, or name one model in the hparam diffusion_model")
    return template.replace(TEST_ENV, test_env_names[0])


def trained_on(folder) -> Optional[List[str]]:
    """The envs a model folder's card says it was trained on; None when it has no card (unknown)."""
    path = os.path.join(folder, MODEL_CARD)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return list(json.load(f)["trained_on_envs"])
