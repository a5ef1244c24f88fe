"""A new generation method is its math module, its generation module and one catalogue line: no algorithm class, no
hparams block, no file of the plugin. The method here (written as those two modules by the test) makes several
VAE round trips of each training image and lets a run choose how many it reads with an hparam; it is added to
the catalogue, generated with the embedded model by the generator's command line, and trained on by DomainBed's
stock train script, which reads only its training envs' images made from their training splits, and only the
round trips its hparam selects."""
import importlib
import json
import os
import runpy
import sys

import numpy as np
import pytest
from PIL import Image

from domainbed_diffusion import catalogue

from conftest import needs_domainbed

METHOD, ALGORITHM = "toy-vae", "TOY_VAE"
MATH_MODULE = '''
def round_trip(model, latents):
    """The toy method's math: latents back to pixels."""
    return model.decode_latents(latents)
'''
GENERATION_MODULE = '''
import torch

from domainbed_diffusion.generation import MethodSpec, Option, Runner, Unit, stem, to_uint8
from toy_math import round_trip

class VAERoundTrip(Runner):
    """Each training image through the VAE and back, ``copies`` times."""

    def params(self):
        return dict(resolution=self.cfg.resolution)

    def plan(self, sources, envs):
        for image in sources.images:
            if image.env in envs:
                yield Unit([self.item(image.env, image.class_name, f"{stem(image.rel_path)}_{k}", (image.rel_path, k),
                                      source=image.rel_path, sample=k) for k in range(self.cfg.copies)], image.rel_path)

    def run(self, model, units, sources, report):
        units, latents = self.encode_sources(model, units, sources, report)
        if not units:
            return []
        latents = latents.repeat_interleave(torch.tensor([u.size for u in units]), 0)
        return list(zip([it for u in units for it in u.items], to_uint8(round_trip(model, latents))))

SAMPLING = dict(steps=1, strength=1.0, guidance=1.0, resolution=32)
SPEC = MethodSpec("toy-vae", "TOY_VAE", VAERoundTrip, SAMPLING, SAMPLING,
                  options=(Option("copies", 2, int, "toy: round trips per image", hparam="toy_copies",
                                  select="count"),))
'''


@pytest.fixture
def toy_method(tmp_path, monkeypatch):
    package = tmp_path / "toy"
    package.mkdir()
    (package / "toy_math.py").write_text(MATH_MODULE)
    (package / "toy_generation.py").write_text(GENERATION_MODULE)
    monkeypatch.syspath_prepend(str(package))
    spec = catalogue.add(importlib.import_module("toy_generation").SPEC).spec  # the one catalogue line
    yield spec
    catalogue.remove(ALGORITHM)
    for name in ("toy_generation", "toy_math"):
        sys.modules.pop(name, None)
    module = sys.modules.get("domainbed.algorithms")
    if module is not None and ALGORITHM in module.ALGORITHMS:
        module.ALGORITHMS.remove(ALGORITHM)
        delattr(module, ALGORITHM)
    ours = sys.modules.get("domainbed_diffusion.algorithms")
    if ours is not None and hasattr(ours, ALGORITHM):
        delattr(ours, ALGORITHM)  # the derived class, made when DomainBed registered it


def generate(data_dir, out):
    from offline_generation.cli import main
    assert main(["--dataset", "DigitStyles", "--data_dir", data_dir, "--methods", METHOD, "--synthetic_root", out,
                 "--max_per_class", "2", "--batch_size", "16"]) == 0
    with open(os.path.join(out, "DigitStyles", f"manifest.{METHOD}.shard-00000-of-00001.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_a_method_added_to_the_catalogue_is_listed_and_generated(toy_method, digitstyles_dir, tmp_path):
    assert catalogue.algorithms()[-1] == ALGORITHM and catalogue.spec(METHOD) is toy_method
    assert METHOD in catalogue.methods()
    with pytest.raises(ValueError, match="already in the catalogue"):
        catalogue.add(toy_method)
    records = generate(digitstyles_dir, str(tmp_path / "synthetic"))
    # each of the four per-test-env models: the other three envs' images, two round trips each (--max_per_class 2)
    assert len(records) == 4 * 3 * 10 * 2 * 2 and {r["sample"] for r in records} == {0, 1}
    assert {r["method"] for r in records} == {METHOD} and all(r["params"] == {"resolution": 32} for r in records)
    assert {r["model_id"].split("@")[0] for r in records} == {f"embedded-without-{e}" for e in
                                                              ("blueprint", "ink", "neon", "sketch")}
    # a VAE round trip: each output is nearer its own source than any other source of its env (not noise, not
    # another image); how near depends on the model's autoencoder, so it is compared, not thresholded
    def pixels(path):
        return np.asarray(Image.open(path).convert("RGB"), dtype=float)
    sources = sorted({(r["source_env"], r["source"]) for r in records})
    for r in records[:20]:
        made = pixels(tmp_path / "synthetic" / "DigitStyles" / r["file"])
        errors = {s: np.abs(made - pixels(os.path.join(digitstyles_dir, "DigitStyles", s))).mean()
                  for env, s in sources if env == r["source_env"]}
        assert min(errors, key=errors.get) == r["source"], (r["file"], sorted(errors.values())[:3])


@needs_domainbed
def test_the_stock_train_script_trains_on_a_method_added_to_the_catalogue(toy_method, digitstyles_dir, tmp_path,
                                                                          monkeypatch):
    import domainbed_diffusion
    from domainbed import algorithms
    from domainbed_diffusion.algorithms import SyntheticERM
    built, init = [], SyntheticERM.__init__

    def recording(self, *args):
        init(self, *args)
        built.append(self)
    monkeypatch.setattr(SyntheticERM, "__init__", recording)
    synthetic = str(tmp_path / "synthetic")
    records = generate(digitstyles_dir, synthetic)
    domainbed_diffusion.register()  # DomainBed may be imported already (earlier tests): add the new algorithm
    out = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["train.py", "--dataset", "DigitStyles", "--algorithm", ALGORITHM, "--data_dir",
                                      digitstyles_dir, "--test_envs", "0", "--steps", "3", "--output_dir", str(out),
                                      "--hparams", json.dumps({"synthetic_root": synthetic, "toy_copies": 1})])
    from domainbed_diffusion.registration import algorithm_class
    derived = algorithm_class(catalogue.entry(ALGORITHM))
    assert derived.__name__ == ALGORITHM and issubclass(derived, SyntheticERM) and "toy-vae" in derived.__doc__
    assert issubclass(algorithms.get_algorithm_class(ALGORITHM), derived)
    from domainbed import hparams_registry
    assert hparams_registry.default_hparams(ALGORITHM, "DigitStyles")["toy_copies"] == 2  # the option's twin
    runpy.run_module("domainbed.scripts.train", run_name="__main__")
    with open(out / "results.jsonl") as f:
        last = [json.loads(line) for line in f][-1]
    assert last["args"]["algorithm"] == ALGORITHM and last["step"] == 2
    assert last["hparams"]["toy_copies"] == 1 and last["hparams"]["synthetic_mode"] == "union"
    assert last["images"] == 3 * 8  # ERM's images per step: three training envs, batch 8
    assert np.isfinite(last["loss"])
    # what it trained on: toy images of its training envs only (test env 0, blueprint, was generated too), each
    # made from an image of that env's training split, and of the two round trips made only the one its hparam asks
    run = built[-1]
    assert type(run).__name__ == ALGORITHM and run.method == METHOD
    used = [d.selection.records() for d in run.mixer.datasets]
    assert {r["sample"] for env in used for r in env} == {0} and {r["sample"] for r in records} == {0, 1}
    assert [{r["source_env"] for r in env} for env in used] == [{"ink"}, {"neon"}, {"sketch"}]
    for i, env in zip(run.run_context.train_envs, used):
        training = run.run_context.dataset[i]
        keys = set(run.run_context.training_keys(i))
        trained = {os.path.relpath(training.samples[k][0], os.path.join(digitstyles_dir, "DigitStyles"))
                   for k in keys}
        made = {r["source"] for r in records if r["source_env"] == env[0]["source_env"]}
        assert {r["source"] for r in env} == made & trained and made - trained  # the validation split's dropped


TOY_PACKAGE = '''
from domainbed_diffusion.generation import MethodSpec, Runner

class Nothing(Runner):
    pass

SAMPLING = dict(steps=1, strength=1.0, guidance=1.0, resolution=32)
SPEC = MethodSpec("toy-entry-point", "TOY_ENTRY_POINT", Nothing, SAMPLING, SAMPLING)
'''


def test_an_installed_package_joins_the_catalogue_of_every_process_through_its_entry_point(tmp_path):
    import subprocess
    (tmp_path / "toy_package.py").write_text(TOY_PACKAGE)
    info = tmp_path / "toy_package-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-package\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[domainbed_diffusion.catalogue]\ntoy = toy_package:SPEC\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", "from domainbed_diffusion import catalogue; "
                          "print(catalogue.algorithms()[-1], catalogue.methods()[-1])"],
                         env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["TOY_ENTRY_POINT", "toy-entry-point"]


def test_a_runner_serving_two_specs_takes_each_specs_name_for_its_seeds_folders_and_records():
    """The name a runner writes under is its spec's: a control reusing a method's runner (``regenerate`` runs
    ED-SAM's) can neither take that method's seeds and folders nor land in its manifests."""
    from domainbed_diffusion.generation import SourceImage
    edsam, regenerate = catalogue.spec("edsam"), catalogue.spec("regenerate")
    assert regenerate.runner is edsam.runner
    image = SourceImage("ink", "two", "ink/two/0001.png")

    class Sources:
        images, name = [image], "DigitStyles"

    made = {}
    for spec in (edsam, regenerate):
        runner = spec.make(spec.config(embedded=True, dataset="DigitStyles", num_samples=1))
        item = next(iter(runner.plan(Sources, ["ink"]))).items[0]
        made[spec.name] = item
        assert runner.name == spec.name and item.method == spec.name and f"{spec.name}__ink" in item.file
    assert made["edsam"].seed != made["regenerate"].seed
