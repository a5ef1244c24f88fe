"""The plugin inside a real DomainBed checkout (``DOMAINBED_DIR``): registration in fresh processes, run context,
DigitStyles, every algorithm in DomainBed's unit-test style and in the stock train script, sweep and
collect_results. Skipped, with the reason printed, when DomainBed is absent."""
import copy
import gc
import glob
import json
import math
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
import torch
from PIL import Image

from domainbed_diffusion import catalogue
from domainbed_diffusion.data.provenance import GeneratorLeakError
from domainbed_diffusion.data.layout import SyntheticDataError

from conftest import HAVE_DOMAINBED, REPO, needs_domainbed, subprocess_env

pytestmark = needs_domainbed

OURS = list(catalogue.algorithms(controls=True))  # the table's rows and the ablation's controls
INSTALLED = os.path.isfile(os.path.join(sysconfig.get_paths()["purelib"], "domainbed_diffusion.pth"))
needs_install = pytest.mark.skipif(not INSTALLED, reason="the package is not installed (pip install -e .), so "
                                   "fresh processes cannot register it")

SYNTHETIC = {}  # algorithm -> the generation method whose images it reads
if HAVE_DOMAINBED:
    from domainbed import algorithms, datasets, hparams_registry
    from domainbed.lib import misc

    from domainbed_diffusion import registration as _registration
    from domainbed_diffusion.training import context
    SYNTHETIC = {name: _registration.method_of(algorithms.get_algorithm_class(name)) for name in OURS
                 if _registration.method_of(algorithms.get_algorithm_class(name))}


def stock_script(module, argv, monkeypatch):
    """One of DomainBed's scripts in this process (it replaces sys.stdout and sys.stderr with its Tee files: they
    are put back after the test)."""
    import runpy
    monkeypatch.setattr(sys, "argv", [module.rsplit(".", 1)[-1] + ".py", *argv])
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    runpy.run_module(module, run_name="__main__")


def collect_results(sweep_dir, monkeypatch):
    """Stock collect_results' tables of a sweep folder (what it prints, from the file it writes beside)."""
    stock_script("domainbed.scripts.collect_results", ["--input_dir", sweep_dir], monkeypatch)
    with open(os.path.join(sweep_dir, "results.txt")) as f:
        return f.read()


def run(args, **env):
    return subprocess.run([sys.executable, *args], cwd=REPO, env=subprocess_env(**env), capture_output=True,
                          text=True, timeout=900)


def test_registered_in_the_stock_modules():
    for name in OURS:
        assert name in algorithms.ALGORITHMS and algorithms.get_algorithm_class(name).__name__ == name
    assert "DigitStyles" in datasets.DATASETS and datasets.num_environments("DigitStyles") == 4
    from domainbed import command_launchers
    assert {"cpu_parallel", "slurm", "local"} <= set(command_launchers.REGISTRY)


def test_registering_twice_is_harmless():
    import domainbed_diffusion
    n = len(algorithms.ALGORITHMS)
    before = hparams_registry.default_hparams("MIRO", "PACS")
    domainbed_diffusion.register()
    domainbed_diffusion.register()
    assert len(algorithms.ALGORITHMS) == n and hparams_registry.default_hparams("MIRO", "PACS") == before


@needs_install
def test_fresh_processes_register_and_the_opt_out_works():
    code = ("import json; from domainbed import algorithms, hparams_registry as h;"
            "print(json.dumps(['MIRO' in algorithms.ALGORITHMS] + [h.default_hparams(a, d) for a in "
            "['ERM', 'DANN', 'SagNet'] for d in ['PACS', 'RotatedMNIST', 'DomainNet']]))")
    on = json.loads(run(["-c", code]).stdout)
    off = json.loads(run(["-c", code], DOMAINBED_DIFFUSION_DISABLE="1").stdout)
    assert on[0] is True and off[0] is False
    # DomainBed's own algorithms and datasets keep their hparams; the plugin adds only the options of every
    # algorithm, off (``options``)
    added = dict(synthetic_methods=[], synthetic_as="minibatch", synthetic_root="", synthetic_filter="",
                 UNSAFE_generator_saw_test_env=False)
    assert on[1:] == [dict(stock, **added) for stock in off[1:]]


def test_hparams_are_deterministic_and_random_search_varies():
    for algorithm in OURS + ["ERM"]:
        for dataset in datasets.DATASETS:
            a = hparams_registry.random_hparams(algorithm, dataset, 0)
            assert a == hparams_registry.random_hparams(algorithm, dataset, 0)
    seeds = [hparams_registry.random_hparams("MIRO", "PACS", misc.seed_hash(s, 0))["ld"] for s in range(1, 30)]
    assert set(seeds) <= {0.001, 0.01, 0.1, 1.0} and len(set(seeds)) > 1
    assert hparams_registry.default_hparams("MIRO", "OfficeHome")["ld"] == 0.1
    assert hparams_registry.default_hparams("MIRO", "PACS")["ld"] == 0.01
    edsam = hparams_registry.default_hparams("EDSAM", "PACS")
    assert edsam["edsam_rho"] == 0.5 and edsam["edsam_m"] == 10
    df = hparams_registry.default_hparams("DomainFusion", "PACS")
    assert (df["batch_size"], df["image_size"], df["n_candidates"]) == (16, 320, 2)
    assert hparams_registry.default_hparams("DomainFusion", "DomainNet")["batch_size"] == 8
    assert df["diffusion_model"] == "CompVis/stable-diffusion-v1-4"


def test_run_context_is_captured_by_dataset_construction(digitstyles_dir):
    hparams = hparams_registry.default_hparams("ERM", "DigitStyles")
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [2], hparams)
    ctx = context.current()
    assert ctx.dataset is dataset and ctx.dataset_name == "DigitStyles" and ctx.test_envs == [2]
    assert ctx.env_names == ["blueprint", "ink", "neon", "sketch"] and ctx.data_dir == digitstyles_dir
    assert len(ctx.class_names) == 10 and ctx.train_envs == [0, 1, 3]
    out, training = misc.split_dataset(dataset[1], 66, 7)
    assert ctx.splits[1][1] is training and len(training) == 264


def test_algorithms_built_without_a_run_context_say_what_is_missing():
    context.clear()
    hparams = hparams_registry.default_hparams("CDGA_PG", "DigitStyles")
    with pytest.raises(context.MissingRunContextError, match="needs the run context"):
        algorithms.get_algorithm_class("CDGA_PG")((3, 28, 28), 10, 3, hparams)


def test_digitstyles_refuses_splits_smaller_than_the_batch(digitstyles_dir):
    hparams = dict(hparams_registry.default_hparams("ERM", "DigitStyles"), batch_size=400)
    with pytest.raises(ValueError, match="InfiniteDataLoader would spin forever"):
        datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], hparams)
    hparams["batch_size"] = 300
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], hparams)
    with pytest.raises(ValueError, match="'ink' has 264 training images after the validation split"):
        misc.split_dataset(dataset[1], 66, 0)


def test_digitstyles_missing_folder_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m offline_generation prepare"):
        datasets.get_dataset_class("DigitStyles")(str(tmp_path), [0], {"batch_size": 8})


def _minibatches(dataset, n, envs=None):
    envs = range(len(dataset)) if envs is None else envs
    return [(torch.stack([dataset[e][i][0] for i in range(n)]),
             torch.stack([torch.as_tensor(dataset[e][i][1]) for i in range(n)])) for e in envs]


def test_miro_oracle_never_changes_and_regularises_mnist_cnn_groupnorms(digitstyles_dir):
    hparams = hparams_registry.default_hparams("MIRO", "DigitStyles")
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], hparams)
    miro = algorithms.get_algorithm_class("MIRO")(dataset.input_shape, 10, 3, hparams)
    assert [tuple(v.b.shape) for v in miro.variance_encoders] == [(1, 64, 1, 1)] + [(1, 128, 1, 1)] * 3
    assert miro.optimizer.param_groups[1]["lr"] == pytest.approx(hparams["lr"] * 10)
    oracle = copy.deepcopy(miro.oracle.state_dict())
    featurizer = copy.deepcopy(miro.featurizer.state_dict())
    miro.train()
    assert not miro.oracle.training
    # the featurizer starts as the oracle (both the pretrained one): only the log-variance term, 0.5 log 0.1 a layer
    first = miro.update(_minibatches(dataset, 8, [1, 2, 3]))["miro"]
    assert first == pytest.approx(4 * 0.5 * math.log(0.1), rel=1e-4)
    for _ in range(2):
        out = miro.update(_minibatches(dataset, 8, [1, 2, 3]))
    assert out["miro"] > first  # features moved away from the oracle's
    assert all(torch.equal(oracle[k], v) for k, v in miro.oracle.state_dict().items())
    assert any(not torch.equal(featurizer[k], v) for k, v in miro.featurizer.state_dict().items())
    assert all(p.grad is None for p in miro.oracle.parameters())


@pytest.fixture
def resnet_without_download(monkeypatch):
    """DomainBed's ResNet without ImageNet weights (nothing can be downloaded here; the architecture matters)."""
    import torchvision
    for name in ("resnet18", "resnet50"):
        build = getattr(torchvision.models, name)
        monkeypatch.setattr(torchvision.models, name, lambda *a, build=build, **k: build(weights=None))


# Debug224 runs a ResNet per step: there the online algorithms, and one that reads generated images (its in-memory
# images resized to 224 px); the others share that code path and run on Debug28, with every control
_FIRST_OFFLINE = next(a for a in OURS if catalogue.entry(a).spec is not None)
DEBUG_CASES = [(d, a) for a in OURS for d in ("Debug28", "Debug224") if d == "Debug28" or (
    not catalogue.entry(a).control and (catalogue.entry(a).spec is None or a == _FIRST_OFFLINE))]


@pytest.mark.parametrize("dataset_name,algorithm_name", DEBUG_CASES)
def test_init_update_predict_on_debug_datasets(dataset_name, algorithm_name, resnet_without_download):
    """DomainBed's own unit test, on the CPU: Debug datasets have no files, so synthetic sets are made in memory."""
    hparams = hparams_registry.default_hparams(algorithm_name, dataset_name)
    hparams["resnet50_augmix"] = False
    hparams["resnet18"] = True  # DomainBed's ResNet featurizer at a fraction of ResNet-50's cost on a CPU
    if algorithm_name == "EDSAM":
        hparams["edsam_m"] = 2
    if algorithm_name == "DomainFusion":
        hparams.update(refresh_every=1, img2img_steps=4)
    dataset = datasets.get_dataset_class(dataset_name)("", [], hparams)
    minibatches = _minibatches(dataset, 8)
    algorithm = algorithms.get_algorithm_class(algorithm_name)(dataset.input_shape, dataset.num_classes,
                                                               len(dataset), hparams)
    for _ in range(2):
        assert algorithm.update(minibatches)["loss"] > 0
    algorithm.eval()
    assert list(algorithm.predict(minibatches[0][0]).shape) == [8, dataset.num_classes]
    if algorithm_name == "MIRO" and dataset_name == "Debug224":  # stem + layer1..4 of the ResNet(-18)
        assert [v.b.shape[1] for v in algorithm.variance_encoders] == [64, 64, 128, 256, 512]


@pytest.fixture(scope="module")
def synthetic_digitstyles(digitstyles_dir):
    """Every method's synthetic DigitStyles, made with the embedded per-test-env models from 3 images per (env,
    class), one sample each; latent-prior's priors for trial 0 only (the train script's default), as they are
    fitted per trial."""
    from offline_generation.cli import main
    common = ["--dataset", "DigitStyles", "--data_dir", digitstyles_dir, "--max_per_class", "3", "--batch_size", "64"]
    others = [m for m in catalogue.methods(controls=True) if m != "latent-prior"]
    assert main(common + ["--methods", *others, "--num_samples", "1"]) == 0
    assert main(common + ["--methods", "latent-prior", "--trial_seeds", "0", "--bandwidth_references", "8"]) == 0
    return digitstyles_dir


def test_synthetic_algorithms_never_read_a_test_env_or_validation_image(synthetic_digitstyles):
    data_dir = synthetic_digitstyles
    for name, method in SYNTHETIC.items():
        hparams = hparams_registry.default_hparams(name, "DigitStyles")
        dataset = datasets.get_dataset_class("DigitStyles")(data_dir, [1], hparams)
        splits = [misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(0, i)) for i, env in enumerate(dataset)]
        algorithm = algorithms.get_algorithm_class(name)(dataset.input_shape, 10, 3, hparams)
        training = {i: {os.path.relpath(dataset[i].samples[k][0], dataset.dir) for k in splits[i][1].keys}
                    for i in range(4)}
        seen = 0
        for env_index, synthetic_set in zip([0, 2, 3], algorithm.mixer.datasets):
            for record in synthetic_set.selection.records():
                assert "ink" not in (record["source_env"], record.get("guide_env")), record["file"]
                assert record["source_env"] == dataset.ENVIRONMENTS[env_index]
                if record.get("source"):
                    assert record["source"] in training[env_index]
                if record.get("guide"):
                    assert record["guide"] in training[dataset.ENVIRONMENTS.index(record["guide_env"])]
                seen += 1
        assert seen > 0
        algorithm.update(_minibatches(dataset, 8, [0, 2, 3]))


def test_stock_train_script_runs_use_the_model_without_their_test_style(synthetic_digitstyles, tmp_path,
                                                                        monkeypatch):
    """The stock train script, test env 0 then 2: every synthetic image a run reads (every method's) was made by
    the shipped model that never saw its test style; with the all-styles model's images only, it refuses."""
    import runpy
    for test_env, style in ((0, "blueprint"), (2, "neon")):
        for name in SYNTHETIC:
            monkeypatch.setattr(sys, "argv", [
                "train.py", "--dataset", "DigitStyles", "--algorithm", name, "--data_dir", synthetic_digitstyles,
                "--test_envs", str(test_env), "--steps", "1", "--output_dir", str(tmp_path / f"{name}{test_env}"),
                "--hparams", json.dumps({"edsam_m": 2})])
            run = runpy.run_module("domainbed.scripts.train", run_name="__main__")["algorithm"]
            models = {r["model_id"].split("@")[0] for d in run.mixer.datasets for r in d.selection.records()}
            assert models == {f"embedded-without-{style}"}, (name, test_env, models)
    all_styles = str(tmp_path / "all-styles")
    from offline_generation.cli import main
    assert main(["--dataset", "DigitStyles", "--data_dir", synthetic_digitstyles, "--methods", "edsam",
                 "--max_per_class", "2", "--num_samples", "2", "--model", "embedded-all-styles", "--synthetic_root",
                 all_styles]) == 0
    for opt_in in (False, True):
        hparams = dict(hparams_registry.default_hparams("EDSAM", "DigitStyles"), synthetic_root=all_styles,
                       edsam_m=2, UNSAFE_generator_saw_test_env=opt_in)
        dataset = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [0], hparams)
        if opt_in:
            algorithm = algorithms.get_algorithm_class("EDSAM")(dataset.input_shape, 10, 3, hparams)
            assert {r["model_id"].split("@")[0] for d in algorithm.mixer.datasets
                    for r in d.selection.records()} == {"embedded-all-styles"}
        else:
            with pytest.raises(GeneratorLeakError, match=r"test env\(s\) \['blueprint'\].*embedded-all-styles"):
                algorithms.get_algorithm_class("EDSAM")(dataset.input_shape, 10, 3, hparams)


def test_cdga_ig_images_take_their_guides_style_and_keep_the_class(synthetic_digitstyles, tmp_path):
    """The synthetic-domain report on the fixture's CDGA sets (4 images per env and class, every model): most
    CDGA-IG images are attributed to their guide's env, and their label fidelity is close to CDGA-PG's."""
    from offline_generation.cli import main
    out = str(tmp_path / "report")
    assert main(["report", "--dataset", "DigitStyles", "--data_dir", synthetic_digitstyles, "--methods", "cdga-ig",
                 "cdga-pg", "--output", out, "--no_map"]) == 0
    with open(os.path.join(out, "report.json")) as f:
        methods = json.load(f)["methods"]
    ig, pg = methods["cdga-ig"], methods["cdga-pg"]
    assert ig["to_target"] >= 0.5, ig["to_target"]
    assert ig["label_fidelity"] >= pg["label_fidelity"] - 0.1, (ig["label_fidelity"], pg["label_fidelity"])


def test_missing_synthetic_data_gives_the_generator_command(digitstyles_dir, tmp_path):
    hparams = dict(hparams_registry.default_hparams("EDSAM", "DigitStyles"), synthetic_root=str(tmp_path))
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], hparams)
    with pytest.raises(RuntimeError, match="python -m offline_generation --dataset DigitStyles --data_dir .* "
                                           "--methods edsam"):
        algorithms.get_algorithm_class("EDSAM")(dataset.input_shape, 10, 3, hparams)
    os.makedirs(tmp_path / "DigitStyles" / "edsam__ink__to__neon" / "one")  # images, but no manifest
    with pytest.raises(RuntimeError, match="(?s)has 1 edsam image folder.*but no manifest.*--methods edsam"):
        algorithms.get_algorithm_class("EDSAM")(dataset.input_shape, 10, 3, hparams)


def test_edsam_rho_must_match_a_generated_rho(synthetic_digitstyles):
    hparams = dict(hparams_registry.default_hparams("EDSAM", "DigitStyles"), edsam_rho=0.25)
    dataset = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [0], hparams)
    with pytest.raises(RuntimeError, match="no usable edsam image"):
        algorithms.get_algorithm_class("EDSAM")(dataset.input_shape, 10, 3, hparams)


def test_domainfusion_keeps_a_one_to_one_set_that_refreshes_and_leaves_diffusion_alone(digitstyles_dir):
    hparams = dict(hparams_registry.default_hparams("DomainFusion", "DigitStyles"), refresh_every=1,
                   refresh_order="drawn")
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], hparams)
    splits = [misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(0, i)) for i, env in enumerate(dataset)]
    algorithm = algorithms.get_algorithm_class("DomainFusion")(dataset.input_shape, 10, 3, hparams)
    assert len(algorithm.pool) == sum(len(splits[i][1]) for i in (1, 2, 3))  # 1:1 with the training images
    out = algorithm.update(_minibatches(dataset, 8, [1, 2, 3]))
    assert out["refreshed"] == 24 and out["loss_gsd"] != 0
    changed = algorithm.pool.store.refreshed()
    assert len(changed) > 0 and len(algorithm.pool) == sum(len(splits[i][1]) for i in (1, 2, 3))
    index = changed[0]
    assert not torch.equal(algorithm.pool.uint8(index), algorithm.pool._original(index))
    unet = copy.deepcopy(algorithm._diffusion.unet.state_dict())
    algorithm.update(_minibatches(dataset, 8, [1, 2, 3]))
    assert all(torch.equal(unet[k], v) for k, v in algorithm._diffusion.unet.state_dict().items())
    assert not any("unet" in k or "vae" in k for k in algorithm.state_dict())


def test_domainfusion_regenerates_its_whole_set_within_a_digitstyles_run(digitstyles_dir, capsys):
    """DigitStyles' default cadence (a cycle through the set, refresh_every and turnover_steps as registered) over
    the dataset's N_STEPS; GSD off and one one-step candidate, only to keep the test short."""
    hparams = dict(hparams_registry.default_hparams("DomainFusion", "DigitStyles"), lambda_gsd=0.0, n_candidates=1,
                   img2img_steps=2)
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [2], hparams)
    algorithm = algorithms.get_algorithm_class("DomainFusion")(dataset.input_shape, 10, 3, hparams)
    assert algorithm.diffusion_model == "embedded-without-neon"  # the model that never saw the test style
    fractions = [algorithm.update(_minibatches(dataset, 8, [0, 1, 3]))["refreshed_fraction"]
                 for _ in range(dataset.N_STEPS)]
    assert algorithm._diffusion.model_id.startswith("embedded-without-neon@")
    turnover = hparams["turnover_steps"]
    assert fractions[turnover // 2] < 0.6 and fractions[turnover] == 1.0 == fractions[-1]
    assert (algorithm.pool.store.versions >= 1).all() and algorithm.pool.store.versions.max() == 2
    assert f"100.0% of the synthetic set ({len(algorithm.pool)} images) was regenerated in {dataset.N_STEPS} " \
           f"steps" in capsys.readouterr().out


def test_domainfusion_refuses_a_model_that_saw_the_test_env_unless_opted_in(digitstyles_dir):
    for opt_in in (False, True):
        hparams = dict(hparams_registry.default_hparams("DomainFusion", "DigitStyles"),
                       diffusion_model="embedded-all-styles", UNSAFE_generator_saw_test_env=opt_in)
        dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [1], hparams)
        algorithm = algorithms.get_algorithm_class("DomainFusion")(dataset.input_shape, 10, 3, hparams)
        if opt_in:
            assert algorithm.diffusion("cpu").model_id.startswith("embedded-all-styles@")
        else:
            with pytest.raises(GeneratorLeakError, match=r"trained on this run's test env\(s\) \['ink'\]"):
                algorithm.diffusion("cpu")
        del algorithm, dataset
    gc.collect()  # the refusal's traceback holds the test-env-1 dataset in a cycle: later tests must not see it


def test_domainfusion_ablations_are_hparams(digitstyles_dir):
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0],
                                                        hparams_registry.default_hparams("ERM", "DigitStyles"))
    for change in ({"lambda_gsd": 0.0}, {"lambda_gen": 0.0}, {"n_candidates": 1}, {"sampling_strategy": False}):
        hparams = dict(hparams_registry.default_hparams("DomainFusion", "DigitStyles"), refresh_every=1, **change)
        with context.use(dataset):  # its dataset, whatever else earlier tests left alive
            algorithm = algorithms.get_algorithm_class("DomainFusion")(dataset.input_shape, 10, 3, hparams)
        out = algorithm.update(_minibatches(dataset, 4, [1, 2, 3]))
        assert ("loss_gsd" in out) == (hparams["lambda_gsd"] > 0)
        assert ("loss_gen" in out) == (hparams["lambda_gen"] > 0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_domainfusion_step_in_half_precision(digitstyles_dir, dtype):
    """A whole DomainFusion step (GSD's forward-mode derivative, the refresh and its candidate selection) with the
    diffusion model in half precision, as on a GPU: finite losses within 10% of float32's, every image refreshed."""
    losses = {}
    for precision in ("float32", dtype):
        hparams = dict(hparams_registry.default_hparams("DomainFusion", "DigitStyles"), refresh_every=1,
                       refresh_order="drawn", gsd_every=1, diffusion_dtype=precision)
        dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], hparams)
        torch.manual_seed(0)
        algorithm = algorithms.get_algorithm_class("DomainFusion")(dataset.input_shape, 10, 3, hparams)
        out = algorithm.update(_minibatches(dataset, 4, [1, 2, 3]))
        assert algorithm._diffusion.dtype == getattr(torch, precision) and out["refreshed"] == 12
        assert all(torch.isfinite(torch.tensor(v)) for k, v in out.items() if k.startswith("loss")), out
        losses[precision] = out
        del algorithm, dataset
    for key in ("loss_raw", "loss_gen", "loss_gsd"):
        assert abs(losses[dtype][key] - losses["float32"][key]) <= 0.1 * abs(losses["float32"][key]), (key, losses)


@needs_install
def test_stock_train_script_runs_every_algorithm(synthetic_digitstyles, tmp_path, monkeypatch):
    """Every algorithm through DomainBed's train script, two at a time through the cpu_parallel launcher (its
    forked runs are the stock script: ``test_cpu_parallel_forks_runs_that_match_a_process_per_run``)."""
    import io
    import shlex

    from domainbed_diffusion.launchers import cpu_parallel
    monkeypatch.setenv("PATH", os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]))

    def train(name, out, *extra):
        return " ".join(shlex.quote(a) for a in [
            "python", "-m", "domainbed.scripts.train", "--dataset", "DigitStyles", "--algorithm", name, "--data_dir",
            synthetic_digitstyles, "--output_dir", out, "--test_envs", "0", *extra])
    names = ["ERM"] + OURS
    commands = [train(name, str(tmp_path / name), "--steps", "3", "--checkpoint_freq", "2", "--hparams",
                      json.dumps({"edsam_m": 2})) for name in names]
    # DigitStyles' own checkpoint frequency: training-domain validation has several checkpoints to choose from
    commands.append(train("ERM", str(tmp_path / "checkpoints"), "--steps", "51"))
    failed = cpu_parallel.launcher(commands, lanes=2, stream=io.StringIO())
    errors = {n: (tmp_path / n / "err.txt").read_text()[-3000:] for n in names + ["checkpoints"]
              if not (tmp_path / n / "done").exists()}
    assert failed == 0 and not errors, errors
    for name in names:
        with open(tmp_path / name / "results.jsonl") as f:
            last = json.loads(f.readlines()[-1])
        assert last["step"] == 2 and "env1_in_acc" in last, name
    with open(tmp_path / "checkpoints" / "results.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [0, 25, 50]


@needs_install
def test_stock_sweep_and_collect_results(digitstyles_dir, tmp_path, monkeypatch):
    sweep_dir = str(tmp_path / "sweep")
    result = run(["-m", "domainbed.scripts.sweep", "launch", "--datasets", "DigitStyles", "--algorithms", "MIRO",
                  "--data_dir", digitstyles_dir, "--output_dir", sweep_dir, "--command_launcher", "local",
                  "--n_trials", "1", "--n_hparams", "1", "--steps", "3", "--single_test_envs",
                  "--skip_confirmation"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(glob.glob(os.path.join(sweep_dir, "*", "done"))) == 4  # the plugin's MIRO x 4 test envs
    tables = collect_results(sweep_dir, monkeypatch)
    assert "Dataset: DigitStyles" in tables and "MIRO" in tables
    assert "blueprint" in tables and "sketch" in tables


def test_an_algorithm_never_filters_against_another_datasets_test_env(synthetic_digitstyles):
    """A notebook that builds DigitStyles for test env 0 and then for test env 1 with one hparams dict: the
    algorithm refuses to guess, and ``context.use`` (or a dict of its own) picks the dataset."""
    hparams = hparams_registry.default_hparams("CDGA_PG", "DigitStyles")
    first = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [0], hparams)
    second = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [1], hparams)
    cls = algorithms.get_algorithm_class("CDGA_PG")
    with pytest.raises(context.MissingRunContextError, match="more than one dataset"):
        cls(first.input_shape, 10, 3, hparams)
    with context.use(first):
        algorithm = cls(first.input_shape, 10, 3, hparams)
    assert algorithm.run_context.test_envs == [0] and algorithm.run_context.dataset is first
    envs = {r["source_env"] for s in algorithm.mixer.datasets for r in s.selection.records()} | \
        {r["guide_env"] for s in algorithm.mixer.datasets for r in s.selection.records()}
    assert "blueprint" not in envs and "ink" in envs
    own = dict(hparams)
    third = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [3], own)
    assert cls(third.input_shape, 10, 3, own).run_context.test_envs == [3]
    assert second is not None


# -- a fair comparison: compute matching, leak-free priors, the pretrained featurizer --------------------------
def test_generator_split_is_domainbeds_split(digitstyles_dir):
    """``splits`` (no DomainBed) gives the train script's validation split of every env, for any trial seed."""
    from domainbed_diffusion.data import splits
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], {})
    validation = splits.validation_paths(dataset.dir, dataset.ENVIRONMENTS, [0, 1, 7], 0.2)
    for i, env in enumerate(dataset):
        assert [p for p, _ in env.samples] == [p for p, _ in splits.env_samples(env.root)]
        for trial in (0, 1, 7):
            out, _ = misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(trial, i))
            assert validation[trial][dataset.ENVIRONMENTS[i]] == {
                os.path.relpath(env.samples[k][0], dataset.dir) for k in out.keys}
    assert validation[0]["ink"] != validation[1]["ink"]


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_synthetic_algorithms_see_erms_images_per_step_by_default(synthetic_digitstyles, name):
    hparams = hparams_registry.default_hparams(name, "DigitStyles")
    dataset = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [0], hparams)
    misc_splits = [misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(0, i)) for i, env in enumerate(dataset)]
    minibatches = _minibatches(dataset, hparams["batch_size"], [1, 2, 3])
    erm = algorithms.get_algorithm_class("ERM")(dataset.input_shape, 10, 3, hparams)
    erm_images = sum(len(x) for x, _ in minibatches)  # what ERM's update puts through the network
    with context.use(dataset):  # datasets an earlier test left for the garbage collector are not candidates
        algorithm = algorithms.get_algorithm_class(name)(dataset.input_shape, 10, 3, hparams)
    balanced = hparams["synthetic_mode"] == "balanced"
    assert balanced == (name in ("EDSAM", "Regenerated_Balanced"))  # ED-SAM's Eq. 11; CDGA's union elsewhere
    assert algorithm.update(minibatches)["images"] == erm_images == 3 * hparams["batch_size"]
    erm.update(minibatches)
    # union: each slot is synthetic with the synthetic share of the env's union; balanced: exactly half
    share = algorithm.mixer.shares[0]
    n_synthetic = len(algorithm.mixer.datasets[0])
    assert share == pytest.approx(n_synthetic / (n_synthetic + len(misc_splits[1][1])))
    slots = [algorithm.mixer.slots(8, share) for _ in range(3000)]
    expected = 4 if balanced else 8 * share
    assert abs(sum(slots) / len(slots) - expected) < 0.1
    with context.use(dataset):
        paired = algorithms.get_algorithm_class(name)(dataset.input_shape, 10, 3,
                                                      dict(hparams, synthetic_mode="paired"))
        assert paired.update(minibatches)["images"] == 2 * erm_images
        with pytest.raises(ValueError, match="synthetic_mode='concat'"):
            algorithms.get_algorithm_class(name)(dataset.input_shape, 10, 3, dict(hparams, synthetic_mode="concat"))


def _copy_tree(src, dst, per_class):
    """DigitStyles with the first ``per_class`` images of each (env, class)."""
    import shutil
    for env in sorted(os.listdir(src)):
        if not os.path.isdir(os.path.join(src, env)):
            continue
        for cls in sorted(os.listdir(os.path.join(src, env))):
            os.makedirs(os.path.join(dst, env, cls))
            for name in sorted(os.listdir(os.path.join(src, env, cls)))[:per_class]:
                shutil.copy(os.path.join(src, env, cls, name), os.path.join(dst, env, cls, name))


def test_latent_prior_is_fitted_on_its_trials_training_split_only(digitstyles_dir, tmp_path):
    """Changing a validation image of trial 0 changes no trial-0 prior image; changing a training image does;
    a run takes the images of its own split, and a trial that was not generated is an error naming it."""
    from offline_generation.cli import main
    from domainbed_diffusion.data import splits
    from domainbed_diffusion.data.layout import SyntheticDataError, read_manifests
    data = str(tmp_path / "data")
    _copy_tree(os.path.join(digitstyles_dir, "DigitStyles"), os.path.join(data, "DigitStyles"), per_class=5)
    root = os.path.join(data, "DigitStyles")
    validation = splits.validation_paths(root, sorted(os.listdir(root)), [0], 0.2)[0]["ink"]
    # one model for every test env: this test is about splits, and its runs hold out three envs at once
    args = ["--dataset", "DigitStyles", "--data_dir", data, "--methods", "latent-prior", "--envs", "ink",
            "--trial_seeds", "0", "--tolerance", "1", "90", "90", "--max_tries", "2", "--batch_size", "16",
            "--model", "embedded-all-styles"]

    def made(name):
        assert main(args + ["--synthetic_root", str(tmp_path / name)]) == 0
        out = {}
        for record in read_manifests(str(tmp_path / name / "DigitStyles"), "latent-prior"):
            assert record["params"]["trial_seed"] == 0
            with open(str(tmp_path / name / "DigitStyles" / record["file"]), "rb") as f:
                out[record["file"]] = f.read()
        return out

    def scribble(rel_path, seed):  # other pixels at the same path
        pixels = np.random.RandomState(seed).randint(0, 255, (32, 32, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, rel_path))

    before = made("before")
    scribble(sorted(validation)[0], 0)
    assert made("validation_changed") == before
    ink = splits.relative_paths([p for p, _ in splits.env_samples(os.path.join(root, "ink"))], root)
    trained = next(p for p in ink if p not in validation)
    scribble(trained, 1)
    changed = made("training_changed")
    assert any(changed[f] != before[f] for f in before if f"/{trained.split('/')[1]}/" in f)

    # the reader: a run split as trial 0 takes these images; a run split as trial 1 has none and says so
    hparams = dict(hparams_registry.default_hparams("LatentPrior", "DigitStyles"),
                   synthetic_root=str(tmp_path / "before"), batch_size=4, UNSAFE_generator_saw_test_env=True)
    latent_prior = algorithms.get_algorithm_class("LatentPrior")
    for trial in (0, 1):
        dataset = datasets.get_dataset_class("DigitStyles")(data, [0, 2, 3], hparams)  # trains on ink only
        for i, env in enumerate(dataset):
            misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(trial, i))
        if trial == 0:
            records = latent_prior(dataset.input_shape, 10, 1, hparams).mixer.datasets[0].selection.records()
            assert {r["file"] for r in records} == set(before)
        else:
            with pytest.raises(SyntheticDataError, match="fitted on this run's train/validation split"):
                latent_prior(dataset.input_shape, 10, 1, hparams)
        del dataset


def test_cdga_ig_reads_its_own_trials_pairs_and_refuses_a_trial_not_made(synthetic_digitstyles):
    """CDGA-IG's pairs are made per trial: a run of a planned trial reads only its trial's, none lost to a guide in
    its validation split; a run of a trial the generator did not make is refused with the generator command."""
    hparams = hparams_registry.default_hparams("CDGA_IG", "DigitStyles")
    for trial in (0, 1, 2):  # the generator's default --trial_seeds
        dataset = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [3], hparams)
        for i, env in enumerate(dataset):
            misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(trial, i))
        algorithm = algorithms.get_algorithm_class("CDGA_IG")(dataset.input_shape, 10, 3, hparams)
        assert sum(d.selection.guides_not_trained for d in algorithm.mixer.datasets) == 0
        assert {r["params"]["trial_seed"] for d in algorithm.mixer.datasets for r in d.selection.records()} \
            == {trial}
        del algorithm, dataset
    dataset = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [3], hparams)
    for i, env in enumerate(dataset):
        misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(5, i))
    with pytest.raises(SyntheticDataError, match="fitted on this run's train/validation split"):
        algorithms.get_algorithm_class("CDGA_IG")(dataset.input_shape, 10, 3, hparams)


def test_every_algorithm_starts_from_the_pretrained_featurizer_and_miro_uses_it_as_oracle(digitstyles_dir):
    from domainbed_diffusion.benchmark import pretrained
    shipped = torch.load(pretrained.EMBEDDED_FEATURIZER_PATH, weights_only=True)["featurizer"]
    for name in ["ERM", *OURS]:
        hparams = hparams_registry.default_hparams(name, "DigitStyles")
        assert hparams["pretrained_featurizer"] == "embedded"
        if name in SYNTHETIC:
            continue  # needs synthetic data: the train-script test below covers every algorithm
        dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], hparams)
        algorithm = algorithms.get_algorithm_class(name)(dataset.input_shape, 10, 3, hparams)
        assert all(torch.equal(v, shipped[k]) for k, v in algorithm.featurizer.state_dict().items())
        if name == "MIRO":
            assert all(torch.equal(v, shipped[k]) for k, v in algorithm.oracle.state_dict().items())
    scratch = algorithms.get_algorithm_class("ERM")((3, 28, 28), 10, 3, dict(hparams, pretrained_featurizer=""))
    assert not torch.equal(scratch.featurizer.state_dict()["conv1.weight"], shipped["conv1.weight"])
    with pytest.raises(FileNotFoundError, match="pretrained_featurizer='/nonexistent.pt'.*python -m "
                                                "domainbed_diffusion.benchmark.pretrained"):
        algorithms.get_algorithm_class("ERM")((3, 28, 28), 10, 3, dict(hparams, pretrained_featurizer="/nonexistent.pt"))
    # DomainBed's own datasets are untouched: no such hparam, a featurizer from scratch
    assert "pretrained_featurizer" not in hparams_registry.default_hparams("ERM", "PACS")


def test_channels_last_featurizer_computes_what_the_default_layout_computes():
    """The hparam changes the memory layout of every algorithm's featurizer, not its arithmetic."""
    from domainbed import networks
    hparams = dict(hparams_registry.default_hparams("ERM", "DigitStyles"), autocast="")  # the layout alone
    assert hparams["channels_last"] is True
    fast = networks.Featurizer((3, 28, 28), hparams)
    plain = networks.Featurizer((3, 28, 28), dict(hparams, channels_last=False))
    assert fast.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert plain.conv1.weight.is_contiguous() and not plain.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    x = torch.randn(16, 3, 28, 28)
    torch.testing.assert_close(fast(x), plain(x), rtol=1e-4, atol=1e-5)
    assert "channels_last" not in hparams_registry.default_hparams("ERM", "PACS")


def test_stock_train_script_loads_the_pretrained_featurizer(digitstyles_dir, tmp_path, monkeypatch):
    from domainbed_diffusion.benchmark import pretrained
    shipped = torch.load(pretrained.EMBEDDED_FEATURIZER_PATH, weights_only=True)["featurizer"]
    for name, hparams in (("MIRO", {}), ("ERM", {"pretrained_featurizer": ""})):
        out = str(tmp_path / name)
        stock_script("domainbed.scripts.train", ["--dataset", "DigitStyles", "--algorithm", name, "--data_dir",
                                                 digitstyles_dir, "--output_dir", out, "--test_envs", "0", "--steps",
                                                 "1", "--hparams", json.dumps(hparams)], monkeypatch)
        state = torch.load(os.path.join(out, "model.pkl"), weights_only=False)["model_dict"]
        # one Adam step at lr 1e-3 from the shipped weights, or from a random initialisation
        drift = max((state[f"featurizer.{k}"] - v).abs().max().item() for k, v in shipped.items())
        if name == "MIRO":
            assert drift < 1e-2
            assert all(torch.equal(state[f"oracle.{k}"], v) for k, v in shipped.items())
        else:
            assert drift > 0.05


def _run_record(out):
    """A run's records without what differs between two executions of it (timing, memory, its own folder)."""
    with open(os.path.join(out, "results.jsonl")) as f:
        records = [json.loads(line) for line in f]
    for r in records:
        assert r["args"].pop("output_dir") == str(out)
        del r["step_time"], r["mem_gb"]
    return records


def test_cpu_parallel_forks_runs_that_match_a_process_per_run(digitstyles_dir, tmp_path, monkeypatch):
    """The preloaded lanes run the stock script: the same records as one process per run, failures counted."""
    import io

    from domainbed_diffusion.launchers import cpu_parallel, train_server
    served = []
    submit = train_server.TrainServer.submit
    monkeypatch.setattr(train_server.TrainServer, "submit", lambda self, a: served.append(a) or submit(self, a))
    names = ["ERM", "MIRO"]
    records = {}
    for mode, preload in (("forked", "1"), ("processes", "0")):
        monkeypatch.setenv("DOMAINBED_DIFFUSION_PRELOAD", preload)
        commands = [f"python -m domainbed.scripts.train --algorithm {name} --data_dir {digitstyles_dir} --dataset "
                    f"DigitStyles --hparams '{{\"lr\": 0.002}}' --output_dir {tmp_path / mode / name} --steps 3 "
                    "--checkpoint_freq 2 --test_envs 1" for name in names]
        commands.append(f"python -m domainbed.scripts.train --dataset NoSuch --output_dir {tmp_path / mode / 'bad'}")
        assert cpu_parallel.launcher(commands, lanes=2, stream=io.StringIO()) == 1
        records[mode] = [_run_record(tmp_path / mode / name) for name in names]
        assert all(os.path.exists(tmp_path / mode / name / "done") for name in names)
        assert "env1_in_acc" in (tmp_path / mode / "ERM" / "out.txt").read_text()  # the script's own Tee log
    assert len(served) == 3  # the forked mode served every command, the other none
    assert [[r["step"] for r in run] for run in records["forked"]] == [[0, 2], [0, 2]]
    assert records["forked"] == records["processes"]
    assert records["forked"][0][0]["hparams"]["lr"] == 0.002  # the quoted JSON argument arrived intact


# -- the ablation's controls ------------------------------------------------------------------------------
def test_erm_real_matched_sees_the_union_rows_real_images_per_step_and_is_erm_at_share_one(digitstyles_dir):
    hparams = hparams_registry.default_hparams("ERM_RealMatched", "DigitStyles")
    assert hparams["real_share"] == pytest.approx(1 / 3)
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], hparams)
    minibatches = _minibatches(dataset, 8, [1, 2, 3])
    cls = algorithms.get_algorithm_class("ERM_RealMatched")
    control = cls(dataset.input_shape, 10, 3, hparams)
    images = [control.update(minibatches)["images"] for _ in range(60)]
    assert abs(np.mean(images) - 8) < 1.0 and len(set(images)) > 3  # Binomial(24, 1/3): 8 on average
    torch.manual_seed(0)
    erm = algorithms.get_algorithm_class("ERM")(dataset.input_shape, 10, 3, hparams)
    torch.manual_seed(0)
    everything = cls(dataset.input_shape, 10, 3, dict(hparams, real_share=1.0))
    assert everything.update(minibatches)["images"] == 24
    erm.update(minibatches)
    assert all(torch.equal(a, b) for a, b in zip(erm.parameters(), everything.parameters()))


def test_erm_augment_draws_one_augmentation_per_image(digitstyles_dir):
    hparams = hparams_registry.default_hparams("ERM_Augment", "DigitStyles")
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], hparams)
    with context.use(dataset):
        algorithm = algorithms.get_algorithm_class("ERM_Augment")(dataset.input_shape, 10, 3, hparams)
    x, y = dataset[1][0]
    seen = []
    network = algorithm.predict
    algorithm.predict = lambda inputs: (seen.append(inputs.detach()), network(inputs))[1]
    out = algorithm.update([(x.expand(16, -1, -1, -1), torch.full((16,), int(y)))])
    augmented = seen[0]
    assert out["images"] == 16 and augmented.shape == (16, *x.shape)
    flat = augmented.flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(16) * 1e9).min() > 1e-3  # sixteen different draws of one image
    assert not torch.allclose(augmented[0], x)
    pixels = algorithm.mapping.to_pixels(augmented)
    original = algorithm.mapping.to_pixels(x[None])
    # a crop of at least 70% and a jitter keep the image recognisable: still correlated with the original
    corr = [np.corrcoef(p.mean(0).flatten(), original[0].mean(0).flatten())[0, 1] for p in pixels]
    assert np.median(corr) > 0.3, corr


def test_regenerations_are_ed_sams_pipeline_at_rho_zero_read_by_both_mixings(synthetic_digitstyles):
    from domainbed_diffusion.data.layout import env_folder
    union, balanced = [], []
    for name, out in (("Regenerated", union), ("Regenerated_Balanced", balanced)):
        hparams = hparams_registry.default_hparams(name, "DigitStyles")
        dataset = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [0], hparams)
        with context.use(dataset):
            algorithm = algorithms.get_algorithm_class(name)(dataset.input_shape, 10, 3, hparams)
        out += [r for d in algorithm.mixer.datasets for r in d.selection.records()]
        assert hparams["synthetic_mode"] == ("union" if name == "Regenerated" else "balanced")
    assert union == balanced and len(union) > 0
    for record in union:
        assert record["file"].split("/")[-3] == env_folder("regenerate", record["source_env"])
        assert record["sample"] in (0, 1)
        assert record["params"]["rho"] == 0.0 and record["params"]["alpha"] == 0.0, record
        assert record["model_id"].startswith("embedded-without-blueprint")
    # --methods all makes the methods' images only: a control is generated when named
    assert "regenerate" not in catalogue.methods() and "regenerate" in catalogue.methods(controls=True)


@needs_install
def test_a_random_search_of_two_hparams_sets_is_selected_by_stock_collect_results(tmp_path, monkeypatch):
    """``--n_hparams 2`` on Debug28 (cpu_parallel launcher; DomainBed's local one runs in
    ``test_stock_sweep_and_collect_results``): two hparams sets per (algorithm, test env), which DomainBed's
    training-domain validation and the results command choose between alike."""
    sweep_dir = str(tmp_path / "sweep")
    result = run(["-m", "domainbed.scripts.sweep", "launch", "--datasets", "Debug28", "--algorithms", "MIRO",
                  "--data_dir", str(tmp_path), "--output_dir", sweep_dir, "--command_launcher", "cpu_parallel",
                  "--n_trials", "1", "--n_hparams", "2", "--steps", "3", "--single_test_envs",
                  "--skip_confirmation", "--hparams", json.dumps({"batch_size": 8})])  # Debug envs train on 13 images
    # (a random batch_size above that would make DomainBed's InfiniteDataLoader spin without yielding a batch)
    assert result.returncode == 0, result.stderr[-3000:]
    from domainbed import model_selection
    from domainbed.lib import reporting
    records = reporting.load_records(sweep_dir)
    for algorithm in ("MIRO",):  # DomainBed's lr draws and the plugin's ld draws
        runs = {(tuple(r["args"]["test_envs"]), r["args"]["hparams_seed"]): r["hparams"]
                for r in records if r["args"]["algorithm"] == algorithm}
        assert sorted({seed for _, seed in runs}) == [0, 1] and len(runs) == 6  # 3 test envs x 2 sets
        assert all(runs[e, 0]["lr"] != runs[e, 1]["lr"] for e, _ in runs)
    assert "MIRO" in collect_results(sweep_dir, monkeypatch)
    from domainbed_diffusion import results
    tidy = results.load(sweep_dir, selections=("training",))
    chosen = {(c["row"], c["test_env"]): c for c in tidy["choices"]}
    assert all(len({r["hparams_seed"] for r in tidy["runs"] if r["row"] == a and r["test_envs"] == [e]}) == 2
               for a, e in chosen)
    for group in reporting.get_grouped_records(records):
        best = model_selection.IIDAccuracySelectionMethod.hparams_accs(group["records"])[0][1][0]["args"]
        choice = chosen[group["algorithm"], group["test_env"]]
        assert choice["hparams_seed"] == best["hparams_seed"]
        assert choice["test_acc"] == model_selection.IIDAccuracySelectionMethod.sweep_acc(group["records"])


# -- options of every algorithm: synthetic data for any algorithm, SWAD ---------------------------------------
def test_with_no_option_an_algorithm_is_the_stock_object_and_a_stock_run_is_unchanged(digitstyles_dir, tmp_path,
                                                                                       monkeypatch):
    """DomainBed's lookup returns a class that builds the stock object when a run asks for no option, and the
    stock train script's accuracies through it equal those through DomainBed's own lookup."""
    import runpy
    from domainbed import algorithms as stock
    hparams = hparams_registry.default_hparams("CORAL", "Debug28")
    assert type(algorithms.get_algorithm_class("CORAL")((3, 28, 28), 2, 2, hparams)) is stock.CORAL
    accuracies = []
    for lookup in (stock.get_algorithm_class, stock.get_algorithm_class.__wrapped__):
        monkeypatch.setattr(stock, "get_algorithm_class", lookup)
        out = str(tmp_path / f"run{len(accuracies)}")
        monkeypatch.setattr(sys, "argv", ["train.py", "--dataset", "DigitStyles", "--algorithm", "CORAL", "--data_dir",
                                          digitstyles_dir, "--test_envs", "0", "--steps", "3", "--output_dir", out])
        runpy.run_module("domainbed.scripts.train", run_name="__main__")
        with open(os.path.join(out, "results.jsonl")) as f:
            accuracies.append([{k: v for k, v in json.loads(line).items() if k.endswith("_acc")} for line in f])
    assert accuracies[0] == accuracies[1] and accuracies[0]


def test_coral_trains_with_a_methods_images_as_extra_environments(synthetic_digitstyles, tmp_path, monkeypatch):
    """The stock train script, CORAL, test env ink, CDGA-PG's images as one extra environment: CORAL is built
    with 4 domains and each step gets a fourth minibatch of those images, none from a validation split or by a
    model that saw ink; results.jsonl keeps DigitStyles' four envs and their indices."""
    import runpy
    from domainbed_diffusion.training import options
    seen = []
    original = options._Extras.minibatches

    def recording(self, minibatches):
        out = original(self, minibatches)
        seen.append([len(x) for x, _ in out])
        return out
    monkeypatch.setattr(options._Extras, "minibatches", recording)
    out = str(tmp_path / "coral")
    monkeypatch.setattr(sys, "argv", [
        "train.py", "--dataset", "DigitStyles", "--algorithm", "CORAL", "--data_dir", synthetic_digitstyles,
        "--test_envs", "1", "--steps", "2", "--output_dir", out,
        "--hparams", json.dumps({"synthetic_methods": ["cdga-pg"], "synthetic_as": "environments"})])
    scope = runpy.run_module("domainbed.scripts.train", run_name="__main__")
    algorithm, dataset = scope["algorithm"], scope["dataset"]
    assert isinstance(algorithm, algorithms.CORAL)
    assert seen == [[8, 8, 8, 8], [8, 8, 8, 8]]  # three real envs' minibatches, then the synthetic environment's
    extra = algorithm._extras.mixer.datasets[0]
    records = [r for part in extra.datasets for r in part.selection.records()]
    assert records and {r["source_env"] for r in records} == {"blueprint", "neon", "sketch"}
    assert {r["model_id"].split("@")[0] for r in records} == {"embedded-without-ink"}
    validation = {i: {os.path.relpath(dataset[i].samples[k][0], dataset.dir) for k in scope["out_splits"][i][0].keys}
                  for i in (0, 2, 3)}
    assert not [r for r in records if r["source"] in validation[dataset.ENVIRONMENTS.index(r["source_env"])]]
    with open(os.path.join(out, "results.jsonl")) as f:
        record = json.loads(f.readline())
    assert sorted(k for k in record if k.endswith("_in_acc")) == [f"env{i}_in_acc" for i in range(4)]


def test_any_algorithm_mixes_named_methods_images_into_each_envs_minibatch(synthetic_digitstyles):
    """ERM with CDGA-PG's and ED-SAM's images: each env's synthetic set is both methods' images of that env, each
    slot synthetic at the union's share, ERM's images per step unchanged."""
    from domainbed_diffusion.training import options
    hparams = dict(hparams_registry.default_hparams("ERM", "DigitStyles"), synthetic_methods=["cdga-pg", "edsam"])
    dataset = datasets.get_dataset_class("DigitStyles")(synthetic_digitstyles, [1], hparams)
    for i, env in enumerate(dataset):
        misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(0, i))
    algorithm = algorithms.get_algorithm_class("ERM")(dataset.input_shape, 10, 3, hparams)
    assert isinstance(algorithm, options.WithOptions) and algorithm._extras.mode == "minibatch"
    for env_index, union in zip((0, 2, 3), algorithm._extras.mixer.datasets):
        assert [part.method for part in union.datasets] == ["cdga-pg", "edsam"]
        assert all(r["source_env"] == dataset.ENVIRONMENTS[env_index] for part in union.datasets
                   for r in part.selection.records())
    assert all(0 < s < 1 for s in algorithm._extras.mixer.shares)
    batches = _minibatches(dataset, 8, [0, 2, 3])
    mixed = algorithm._extras.minibatches(batches)
    assert [len(x) for x, _ in mixed] == [8, 8, 8]
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(mixed, batches))
    assert "loss" in algorithm.update(batches)


def test_swad_row_through_the_stock_train_script(digitstyles_dir, tmp_path, monkeypatch):
    """CORAL_SWAD: CORAL's hparams and SWAD's; the last record is the averaged model's (``swad_model``) and it is
    what the results command reads of the run; an algorithm that does not predict with ``network`` is refused."""
    import runpy
    from domainbed_diffusion.results import records as reading
    hparams = hparams_registry.default_hparams("CORAL_SWAD", "DigitStyles")
    assert hparams["mmd_gamma"] == hparams_registry.default_hparams("CORAL", "DigitStyles")["mmd_gamma"]
    assert (hparams["swad_n_converge"], hparams["swad_n_tolerance"], hparams["swad_eval_every"]) == (3, 6, 5)
    out = str(tmp_path / "coral_swad")
    monkeypatch.setattr(sys, "argv", ["train.py", "--dataset", "DigitStyles", "--algorithm", "CORAL_SWAD",
                                      "--data_dir", digitstyles_dir, "--test_envs", "0", "--steps", "40",
                                      "--checkpoint_freq", "20", "--output_dir", out])
    # alter_sys: the script is __main__, as in a real run, so the run context reads its --steps
    algorithm = runpy.run_module("domainbed.scripts.train", run_name="__main__", alter_sys=True)["algorithm"]
    state = algorithm._swad_state
    assert state.final is not None and len(state.averager.schedule.losses) == 8
    with open(os.path.join(out, "results.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [r.get("swad_model") for r in lines] == [None, None, 1]
    assert lines[-1]["swad_segments"] == len(state.averager.schedule.joined) > 0
    x = torch.zeros(2, 3, 32, 32)
    algorithm.eval()
    assert torch.equal(algorithm.predict(x), state.final(x))
    run_read = reading.read_run(out, reading.Reading())
    assert [r["step"] for r in run_read["records"]] == [39]
    sagnet = hparams_registry.default_hparams("SagNet_SWAD", "DigitStyles")
    dataset = datasets.get_dataset_class("DigitStyles")(digitstyles_dir, [0], sagnet)
    with pytest.raises(ValueError, match="SagNet_SWAD: SWAD averages the algorithm's `network`"):
        algorithms.get_algorithm_class("SagNet_SWAD")(dataset.input_shape, 10, 3, sagnet)


def test_domainbeds_own_cpu_tests_pass_with_the_plugin(tmp_path):
    """DomainBed's unit tests that need neither a GPU nor a dataset download (the hparams registry over every
    algorithm and dataset, the plugin's among them; model selection; its lib; the sweep, train and collect_results
    scripts) pass in a process where the plugin is registered, on a copy of the checkout."""
    import shutil
    import domainbed
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(domainbed.__file__)))
    copy = str(tmp_path / "DomainBed")
    shutil.copytree(checkout, copy, ignore=shutil.ignore_patterns(".git", "__pycache__"))
    tests = [os.path.join("domainbed", "test", p) for p in ("test_hparams_registry.py", "test_model_selection.py",
                                                            "lib", "scripts")]
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([copy, env["PYTHONPATH"]])
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests], cwd=copy,
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    import re
    passed = int(re.search(r"(\d+) passed", result.stdout).group(1))
    # the registry test runs per (algorithm, dataset) of the registered lists: the plugin's are among them
    assert "MIRO" in algorithms.ALGORITHMS and "DigitStyles" in datasets.DATASETS
    assert passed >= len(algorithms.ALGORITHMS) * len(datasets.DATASETS)
