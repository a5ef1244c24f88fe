"""One diffusion model per test env: which model a job and a run use, what the manifests record, and a reader
that refuses images of a model that saw the run's test env unless the run opts in."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from domainbed_diffusion.diffusion import choice
from domainbed_diffusion.data import layout as synthetic
from domainbed_diffusion.data.provenance import UNSAFE, GeneratorLeakError
from domainbed_diffusion.benchmark.shipped import MODEL_CARD, held_out_model_path
from domainbed_diffusion.data.layout import ManifestWriter, SyntheticDomains, manifest_name

ENVS = ["a", "b", "c"]


def test_embedded_on_digitstyles_is_one_model_per_test_env():
    envs = ["blueprint", "ink", "neon", "sketch"]
    jobs = choice.generators("embedded", "DigitStyles", envs)
    assert [(g.model, g.tag, g.held_out) for g in jobs] == [
        (f"embedded-without-{e}", f"without-{e}", e) for e in envs]
    assert choice.embedded_folder("embedded-without-neon") == held_out_model_path("neon")
    assert choice.model_for_run("embedded", "DigitStyles", ["neon"]) == "embedded-without-neon"
    with pytest.raises(GeneratorLeakError, match="one test env at a time"):
        choice.model_for_run("embedded", "DigitStyles", ["neon", "ink"])
    # one model for every test env: the papers' model, the all-styles ablation, embedded elsewhere
    for model, dataset in (("CompVis/stable-diffusion-v1-4", "PACS"), ("embedded-all-styles", "DigitStyles"),
                           ("embedded", "Debug28")):
        assert [(g.model, g.tag, g.held_out) for g in choice.generators(model, dataset, envs)] == \
            [(model, None, None)]
        assert choice.model_for_run(model, dataset, ["neon"]) == model
    # a user's per-test-env models on the papers' datasets
    jobs = choice.generators("/models/sd-without-{test_env}", "PACS", ["photo", "sketch"])
    assert [g.model for g in jobs] == ["/models/sd-without-photo", "/models/sd-without-sketch"]


def test_every_shipped_digitstyles_model_says_what_it_saw():
    from domainbed_diffusion.benchmark.digitstyles import DOMAINS, POOL_STYLES
    from domainbed_diffusion.diffusion.loading import resolve_model
    assert choice.trained_on(resolve_model("embedded-all-styles")) == sorted(POOL_STYLES)
    for style in DOMAINS:
        seen = choice.trained_on(resolve_model(f"embedded-without-{style}"))
        assert seen == sorted(set(POOL_STYLES) - {style})


def _write(root, records):
    """A method's manifest and its images (tiny PNGs) under one dataset's synthetic folder."""
    with ManifestWriter(os.path.join(root, manifest_name("m"))) as manifest:
        for r in records:
            path = os.path.join(root, r["file"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(path)
            manifest.write([dict(dict(method="m", class_name="x", sample=0, params={}, seed=0), **r)])


def _records(model, trained_on, tag, envs=("b", "c")):
    extra = {} if trained_on == "absent" else {"model_trained_on": trained_on}
    return [dict(file=f"{tag}/m__{e}/x/{k}.png", source_env=e, model_id=model, **extra) for e in envs
            for k in range(2)]


def _models(selected):
    return {r["model_id"] for s in selected.values() for r in s.records()}


def test_the_reader_refuses_a_model_that_saw_the_test_env_unless_opted_in(tmp_path):
    domains = SyntheticDomains(str(tmp_path), "D")
    _write(domains.dataset_root, _records("all@1", ENVS, "all"))
    select = lambda **kw: domains.select("m", ENVS, ["x"], [0], **kw)  # noqa: E731
    with pytest.raises(GeneratorLeakError, match=rf"trained on its test env\(s\) \['a'\].*all@1.*{UNSAFE}"):
        select()
    assert _models(select(generator_saw_test_env=True)) == {"all@1"}
    # the same images for test env... none of the model's envs: accepted
    assert _models(SyntheticDomains(str(tmp_path), "D").select("m", ENVS + ["z"], ["x"], [3])) == {"all@1"}


def test_the_reader_takes_the_model_without_the_test_env_from_a_mixed_folder(tmp_path):
    domains = SyntheticDomains(str(tmp_path), "D")
    _write(domains.dataset_root, _records("all@1", ENVS, "all") + _records("no-a@1", ["b", "c"], "without-a")
           + _records("no-b@1", ["a", "c"], "without-b", envs=("a", "c")))
    selected = domains.select("m", ENVS, ["x"], [0])
    assert _models(selected) == {"no-a@1"} and sum(len(s) for s in selected.values()) == 4
    assert _models(domains.select("m", ENVS, ["x"], [1])) == {"no-b@1"}
    # opted in, every image of the training envs, whichever model made it
    assert _models(domains.select("m", ENVS, ["x"], [0], generator_saw_test_env=True)) == {"all@1", "no-a@1",
                                                                                            "no-b@1"}


def test_unknown_training_data_is_accepted_and_old_embedded_records_are_the_all_styles_model(tmp_path):
    sd = SyntheticDomains(str(tmp_path / "sd"), "D")
    _write(sd.dataset_root, _records("CompVis/stable-diffusion-v1-4@abc", None, "sd"))
    assert _models(sd.select("m", ENVS, ["x"], [0])) == {"CompVis/stable-diffusion-v1-4@abc"}
    old = SyntheticDomains(str(tmp_path / "old"), "D")  # written before models had cards
    _write(old.dataset_root, _records("embedded@0123", "absent", "old"))
    with pytest.raises(GeneratorLeakError):
        old.select("m", ["blueprint", "b", "c"], ["x"], [0])


def _held_out_checkpoints(tiny_checkpoint, folder, envs):
    """A copy of the tiny checkpoint per env, each with a card saying it saw every env but that one."""
    for env in envs:
        target = os.path.join(folder, f"sd-without-{env}")
        shutil.copytree(tiny_checkpoint, target)
        with open(os.path.join(target, MODEL_CARD), "w") as f:
            json.dump({"trained_on_envs": [e for e in envs if e != env]}, f)
    return os.path.join(folder, "sd-without-{test_env}")


def test_the_generator_makes_each_test_envs_images_with_the_model_that_excludes_it(tiny_checkpoint, tiny_dataset,
                                                                                   tmp_path):
    from offline_generation.cli import main
    envs = ["env a", "env_b", "env_c"]
    template = _held_out_checkpoints(tiny_checkpoint, str(tmp_path / "models"), envs)
    assert main(["--dataset", "Tiny", "--data_dir", tiny_dataset, "--methods", "cdga-ig", "--model", template,
                 "--resolution", "16", "--steps", "2", "--batch_size", "8"]) == 0
    root = os.path.join(synthetic.default_root(tiny_dataset), "Tiny")
    records = synthetic.read_manifests(root, "cdga-ig")
    by_model = {}
    for r in records:
        by_model.setdefault(tuple(r["model_trained_on"]), []).append(r)
    assert len(by_model) == 3
    for trained, made in by_model.items():
        (held_out,) = set(envs) - set(trained)
        assert all(r["file"].startswith(f"without-{held_out.replace(' ', '_')}/") for r in made)
        assert {r["source_env"] for r in made} | {r["guide_env"] for r in made} == set(trained)  # never held_out
    domains = SyntheticDomains(synthetic.default_root(tiny_dataset), "Tiny")
    for k, env in enumerate(envs):
        selected = domains.select("cdga-ig", envs, ["cat", "dog"], [k])
        used = [r for s in selected.values() for r in s.records()]
        assert used and all(r["file"].startswith(f"without-{env.replace(' ', '_')}/") for r in used)
