"""The offline generator on a tiny dataset with a tiny random checkpoint: layout, provenance, resumption,
shards, leak filtering and bad input."""
import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from domainbed_diffusion.data.layout import SyntheticDataError, SyntheticDomains, read_manifests
from offline_generation.cli import main as cli_main

from conftest import REPO, subprocess_env, write_image_dataset

DESCRIPTIONS = json.dumps({"env a": "style a", "env_b": "style b", "env_c": "style c"})
ENVS = ["env a", "env_b", "env_c"]


def generate(data_dir, checkpoint, *extra, methods=("all",)):
    argv = ["--dataset", "Tiny", "--data_dir", data_dir, "--model", checkpoint, "--methods", *methods,
            "--resolution", "32", "--steps", "4", "--num_samples", "2", "--batch_size", "4",
            "--domain_descriptions", DESCRIPTIONS, "--max_tries", "5", "--tolerance", "0.2", "20", "30", *extra]
    assert cli_main(argv) == 0


def digests(root):
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".png"):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def generated(tmp_path_factory, tiny_checkpoint):
    data_dir = str(tmp_path_factory.mktemp("gen") / "data")
    write_image_dataset(os.path.join(data_dir, "Tiny"), ENVS, ["cat", "dog"], per_class=3)
    generate(data_dir, tiny_checkpoint)
    return data_dir


def test_every_method_writes_domainbed_layout_with_a_record_per_image(generated):
    root = os.path.join(generated, "synthetic", "Tiny")
    records = read_manifests(root)
    by_method = {}
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
        assert os.path.isfile(os.path.join(root, r["file"]))
        for key in ("source_env", "class_name", "params", "seed", "model_id", "prompt"):
            assert key in r
    # 18 images: CDGA makes 2 per image (one per other env), ED-SAM M=2 per image, latent-prior 1 per training
    # reference per trial (3 trials), for the (env, class) groups whose training split keeps 3 references; CDGA-IG
    # per trial too, from each trial's 15 training images (int(6 * 0.2) = 1 validation image per env)
    assert len(by_method["cdga-pg"]) == 36 and len(by_method["cdga-ig"]) == 3 * 15 * 2
    assert len(by_method["edsam"]) == 36
    assert 0 < len(by_method["latent-prior"]) <= 3 * 18
    pg = next(r for r in by_method["cdga-pg"] if r["guide_env"] == "env_b" and r["class_name"] == "dog")
    assert pg["prompt"] == "a dog, style b" and pg["source_env"] != "env_b"
    ig = next(r for r in by_method["cdga-ig"] if r["guide_env"] == "env_c")
    assert ig["guide"].startswith("env_c/" + ig["class_name"] + "/")
    assert all(abs(r["params"]["alpha"]) <= 0.5 for r in by_method["edsam"])
    assert {r["sample"] for r in by_method["edsam"]} == {0, 1}
    assert len(digests(root)) == len(records)  # no stray or temporary files
    # each env folder reads as an ImageFolder, as DomainBed's image datasets do
    from torchvision.datasets import ImageFolder
    folder = ImageFolder(os.path.join(root, "cdga-pg__env_a__to__env_b"))
    assert folder.classes == ["cat", "dog"] and len(folder) == 6


def test_images_do_not_depend_on_the_batch_they_were_made_in(generated, tiny_checkpoint, tmp_path):
    """Another batch size gives the same images up to float rounding (seeds come from image paths)."""
    root = os.path.join(generated, "synthetic", "Tiny")
    generate(generated, tiny_checkpoint, "--synthetic_root", str(tmp_path / "other"), "--batch_size", "3",
             methods=("cdga-pg", "edsam"))
    ours = digests(str(tmp_path / "other" / "Tiny"))
    assert len(ours) == 72
    for rel in ours:
        a = np.asarray(Image.open(os.path.join(root, rel)), dtype=np.int16)
        b = np.asarray(Image.open(os.path.join(tmp_path, "other", "Tiny", rel)), dtype=np.int16)
        assert np.abs(a - b).max() <= 2, rel


def test_rerun_skips_everything_and_resumed_files_are_byte_identical(generated, tiny_checkpoint, capsys):
    root = os.path.join(generated, "synthetic", "Tiny")
    before = digests(root)
    generate(generated, tiny_checkpoint)
    out = capsys.readouterr().out
    assert "made 0 images" in out and "made 3" not in out
    victims = sorted(before)[::7]
    for rel in victims:
        os.remove(os.path.join(root, rel))
    with open(os.path.join(root, victims[0]) + ".1234.tmp", "wb") as f:  # a write cut by a crash
        f.write(b"\x89PNG half")
    generate(generated, tiny_checkpoint)
    assert digests(root) == before
    assert SyntheticDomains(os.path.join(generated, "synthetic"), "Tiny").records("cdga-pg")


def test_shards_cover_every_image_exactly_once(tiny_dataset, tiny_checkpoint, tmp_path):
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    generate(tiny_dataset, tiny_checkpoint, "--synthetic_root", whole, methods=("cdga-pg",))
    for k in range(3):
        generate(tiny_dataset, tiny_checkpoint, "--synthetic_root", parts, "--num_shards", "3", "--shard_id", str(k),
                 methods=("cdga-pg",))
    files = []
    for name in os.listdir(os.path.join(parts, "Tiny")):
        if name.startswith("manifest."):
            with open(os.path.join(parts, "Tiny", name)) as f:
                files += [json.loads(line)["file"] for line in f]
    assert len(files) == len(set(files)) == 36
    assert digests(os.path.join(parts, "Tiny")) == digests(os.path.join(whole, "Tiny"))


def test_latent_prior_bandwidth_is_one_per_domain_whatever_the_shard(tiny_dataset, tiny_checkpoint, tmp_path):
    """The paper's B_eta is one per unseen domain: every (trial, env) group shares it, and shards that each make
    some of a domain's groups estimate the same value, so their images equal an unsharded run's."""
    whole, parts = str(tmp_path / "whole"), str(tmp_path / "parts")
    generate(tiny_dataset, tiny_checkpoint, "--synthetic_root", whole, "--trial_seeds", "0", methods=("latent-prior",))
    for k in range(2):
        generate(tiny_dataset, tiny_checkpoint, "--synthetic_root", parts, "--trial_seeds", "0", "--num_shards", "2",
                 "--shard_id", str(k), methods=("latent-prior",))
    assert digests(os.path.join(parts, "Tiny")) == digests(os.path.join(whole, "Tiny"))
    records = read_manifests(os.path.join(whole, "Tiny"))
    etas = {}
    for r in records:
        etas.setdefault(r["source_env"], set()).add(r["params"]["eta"])
        assert r["params"]["bandwidth_references"] == 32
    assert set(etas) == set(ENVS) and all(len(v) == 1 for v in etas.values())


def test_latent_prior_bandwidth_references_take_classes_in_turn():
    from domainbed_diffusion.generation.latent_prior import LatentPriorRunner
    from domainbed_diffusion.methods import cdga
    training = {"cat": ["c1", "c2", "c3"], "dog": ["d1"], "eel": ["e1", "e2"]}
    picked = LatentPriorRunner.domain_references(training, 5)
    assert [p for p, _ in picked] == ["c1", "d1", "e1", "c2", "e2"]
    assert dict(picked)["d1"] == cdga.class_prompt("dog") != dict(picked)["c1"]


def test_dry_run_prints_the_plan_and_writes_nothing(tiny_dataset, tiny_checkpoint, capsys):
    generate(tiny_dataset, tiny_checkpoint, "--dry_run")
    out = capsys.readouterr().out
    assert "cdga-pg: 36 images" in out and "env a -> env_b: 6" in out and "MiB" in out
    assert "edsam: 36 images" in out
    assert not os.path.exists(os.path.join(tiny_dataset, "synthetic"))


def test_real_world_files_are_read_or_reported(tiny_dataset, tiny_checkpoint, tmp_path, capsys):
    cls = os.path.join(tiny_dataset, "Tiny", "env_b", "cat")
    rng = np.random.RandomState(1)
    Image.fromarray((rng.rand(30, 17) * 255).astype(np.uint8)).save(os.path.join(cls, "gray.png"))
    Image.fromarray((rng.rand(9, 40, 4) * 255).astype(np.uint8)).save(os.path.join(cls, "rgba.png"))
    Image.fromarray((rng.rand(20, 20, 3) * 255).astype(np.uint8)).convert("CMYK").save(os.path.join(cls, "cmyk.jpg"))
    Image.fromarray((rng.rand(20, 20) * 65535).astype(np.uint16)).save(os.path.join(cls, "deep.png"))
    with open(os.path.join(cls, "broken.jpg"), "wb") as f:
        f.write(b"not an image")
    os.makedirs(os.path.join(tiny_dataset, "Tiny", "env_c", "bird"))  # an empty class folder
    out_dir = str(tmp_path / "out")
    generate(tiny_dataset, tiny_checkpoint, "--synthetic_root", out_dir, methods=("edsam",))
    captured = capsys.readouterr()
    err = captured.err
    assert "broken.jpg" in err and "unreadable" in err and "empty class folder" in err
    name = "skipped.edsam.shard-00000-of-00001.jsonl"
    assert f"; 2 skipped (reasons in {name})" in captured.out  # the two samples of the broken image
    with open(os.path.join(out_dir, "Tiny", name)) as f:
        assert {json.loads(line)["reason"] for line in f} == {"source image unreadable: env_b/cat/broken.jpg"}
    records = read_manifests(os.path.join(out_dir, "Tiny"), "edsam")
    sources = {os.path.basename(r["source"]) for r in records}
    assert {"gray.png", "rgba.png", "cmyk.jpg", "deep.png"} <= sources and "broken.jpg" not in sources
    generate(tiny_dataset, tiny_checkpoint, "--synthetic_root", out_dir, methods=("edsam",))  # skipped, not retried
    assert "made 0 images" in capsys.readouterr().out


def test_leak_filter_never_returns_a_test_env_image(generated):
    domains = SyntheticDomains(os.path.join(generated, "synthetic"), "Tiny")
    for method in ("cdga-pg", "cdga-ig", "edsam", "latent-prior"):
        for test_env in range(3):
            selected = domains.select(method, ENVS, ["cat", "dog"], [test_env])
            assert test_env not in selected
            for env, items in selected.items():
                for record in items.records():
                    assert ENVS[test_env] not in (record["source_env"], record.get("guide_env"))
                    assert record["source_env"] == ENVS[env]
            assert sum(len(v) for v in selected.values()) > 0
    # CDGA with env 0 held out keeps only the pairs between the other two envs
    kept = domains.select("cdga-pg", ENVS, ["cat", "dog"], [0])
    assert {(r["source_env"], r["guide_env"]) for items in kept.values() for r in items.records()} == {
        ("env_b", "env_c"), ("env_c", "env_b")}
    # the starred variant keeps pairs toward the test env, never from it
    star = domains.select("cdga-pg", ENVS, ["cat", "dog"], [0], allow_test_guides=True)
    assert all(r["source_env"] != "env a" for items in star.values() for r in items.records())
    assert any(r["guide_env"] == "env a" for items in star.values() for r in items.records())


def test_leak_filter_drops_images_made_from_validation_images(generated):
    domains = SyntheticDomains(os.path.join(generated, "synthetic"), "Tiny")
    training = {1: {"env_b/cat/img0.png"}, 2: {"env_c/dog/img1.png", "env_c/cat/img0.png"}}
    selected = domains.select("cdga-ig", ENVS, ["cat", "dog"], [0], training_sources=training)
    for env, items in selected.items():
        for r in items.records():
            assert r["source"] in training[env] and r["guide"] in training[1 if env == 2 else 2]


def test_missing_and_inconsistent_manifests_fail_clearly(generated, tmp_path):
    with pytest.raises(SyntheticDataError, match="does not exist"):
        SyntheticDomains(str(tmp_path), "Tiny").records("edsam")
    root = tmp_path / "syn" / "Tiny" / "edsam__env_b" / "cat"
    root.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "x.png")
    with pytest.raises(SyntheticDataError, match="no manifest"):
        SyntheticDomains(str(tmp_path / "syn"), "Tiny").records("edsam")
    manifest = tmp_path / "syn" / "Tiny" / "manifest.edsam.shard-00000-of-00001.jsonl"
    manifest.write_text(json.dumps({"file": "edsam__env_b/cat/missing.png", "method": "edsam",
                                    "source_env": "env_b", "class_name": "cat"}) + "\n")
    with pytest.raises(SyntheticDataError, match="not on disk"):
        SyntheticDomains(str(tmp_path / "syn"), "Tiny").records("edsam")
    manifest.write_text(json.dumps({"file": "edsam__env_b/cat/x.png", "method": "edsam",
                                    "source_env": "env_z", "class_name": "cat"}) + "\n")
    with pytest.raises(SyntheticDataError, match="env_z"):
        SyntheticDomains(str(tmp_path / "syn"), "Tiny").select("edsam", ENVS, ["cat", "dog"], [])
    manifest.write_text("{broken json\n")
    with pytest.raises(SyntheticDataError, match=":1 is not valid JSON"):
        SyntheticDomains(str(tmp_path / "syn"), "Tiny").records("edsam")


def test_bad_arguments_get_clear_errors(tiny_dataset, tiny_checkpoint, capsys):
    assert cli_main(["--dataset", "Tiny", "--data_dir", tiny_dataset, "--envs", "nope", "--dry_run"]) == 2
    assert "--envs ['nope'] not found" in capsys.readouterr().err
    assert cli_main(["--dataset", "Missing", "--data_dir", tiny_dataset, "--dry_run"]) == 2
    assert "unknown dataset 'Missing': not one of PACS, VLCS" in capsys.readouterr().err
    assert cli_main(["--dataset", "PACS", "--data_dir", tiny_dataset, "--dry_run"]) == 2  # known, not downloaded
    assert "PACS does not exist; create it with DomainBed's" in capsys.readouterr().err
    assert cli_main(["--dataset", "Tiny", "--data_dir", tiny_dataset, "--methods", "cdga-pg", "--dry_run"]) == 2
    assert "--domain_descriptions" in capsys.readouterr().err
    assert cli_main(["--dataset", "Tiny", "--data_dir", tiny_dataset, "--model", str(tiny_dataset),
                     "--methods", "edsam"]) == 2
    assert "model_index.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["--dataset", "Tiny", "--data_dir", tiny_dataset, "--methods", "magic"])


def test_preview_grid(generated, tmp_path):
    out = str(tmp_path / "grid.png")
    assert cli_main(["preview", "--dataset", "Tiny", "--data_dir", generated, "--out", out, "--rows", "2"]) == 0
    grid = Image.open(out)
    assert grid.width > 300 and grid.height > 4 * 96


def test_slurm_job_array_for_shards(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("DOMAINBED_SLURM_DIR", str(tmp_path / "jobs"))
    monkeypatch.setenv("DOMAINBED_SLURM_PARTITION", "gpu")
    assert cli_main(["--dataset", "Tiny", "--data_dir", tiny_dataset, "--methods", "edsam", "--slurm", "4"]) == 0
    scripts = [f for f in os.listdir(tmp_path / "jobs") if f.endswith(".sbatch")]
    script = (tmp_path / "jobs" / scripts[0]).read_text()
    assert "#SBATCH --array=0-3" in script and "#SBATCH --partition=gpu" in script
    commands = (tmp_path / "jobs" / scripts[0].replace(".sbatch", ".commands")).read_text().splitlines()
    assert len(commands) == 4 and all("--slurm" not in c for c in commands)
    assert [c.split("--shard_id ")[1] for c in commands] == ["0", "1", "2", "3"]
    assert all("--num_shards 4" in c and "offline_generation" in c for c in commands)


def test_torchrun_two_processes_split_the_work(tiny_dataset, tiny_checkpoint, tmp_path):
    """Two CPU processes under torchrun take disjoint halves (their RANK and WORLD_SIZE) of the same job."""
    out = str(tmp_path / "tr")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "offline_generation", "--dataset", "Tiny", "--data_dir", tiny_dataset, "--model", tiny_checkpoint,
           "--methods", "cdga-pg", "--resolution", "32", "--steps", "4", "--batch_size", "4",
           "--domain_descriptions", DESCRIPTIONS, "--synthetic_root", out]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    manifests = sorted(n for n in os.listdir(os.path.join(out, "Tiny")) if n.startswith("manifest."))
    assert manifests == ["manifest.cdga-pg.shard-00000-of-00002.jsonl", "manifest.cdga-pg.shard-00001-of-00002.jsonl"]
    files = [json.loads(line)["file"] for m in manifests for line in open(os.path.join(out, "Tiny", m))]
    assert len(files) == len(set(files)) == 36


def test_workers_make_the_same_bytes_whatever_their_number(tiny_dataset, tiny_checkpoint, tmp_path, capsys):
    """``--workers W`` runs W one-thread processes as shards of the command: two workers write the same files as
    one, each image once, and the index the parent builds holds every shard's records."""
    methods = ("cdga-pg", "latent-prior")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    generate(tiny_dataset, tiny_checkpoint, "--synthetic_root", one, "--workers", "1", "--trial_seeds", "0",
             methods=methods)
    generate(tiny_dataset, tiny_checkpoint, "--synthetic_root", two, "--workers", "2", "--trial_seeds", "0",
             methods=methods)
    out = capsys.readouterr().out
    assert "2 worker(s) of one thread each: shard(s) 1, 2 of 2" in out and "[worker 2] made " in out
    assert "-details" not in out and "accepted" not in out  # latent-prior's per-class details are in a log
    assert digests(os.path.join(two, "Tiny")) == digests(os.path.join(one, "Tiny"))
    manifests = [n for n in os.listdir(os.path.join(two, "Tiny")) if n.startswith("manifest.cdga-pg.")]
    assert sorted(manifests) == ["manifest.cdga-pg.shard-00000-of-00002.jsonl",
                                 "manifest.cdga-pg.shard-00001-of-00002.jsonl"]
    domains = SyntheticDomains(two, "Tiny")
    assert len(domains.records("cdga-pg")) == 36
    assert len(domains.records("latent-prior")) == len(SyntheticDomains(one, "Tiny").records("latent-prior")) > 0


def test_workers_split_this_commands_shard_only():
    """With ``--num_shards S --shard_id s`` too, worker j takes shard s + j*S of S*W: together, batch b for
    every b = s mod S, each once."""
    from offline_generation.generate import worker_commands
    commands = worker_commands("job.json", workers=3, num_shards=4, shard_id=1)
    assert all(c[3:5] == ["worker", "job.json"] for c in commands)
    shards = [(int(c[c.index("--num_shards") + 1]), int(c[c.index("--shard_id") + 1])) for c in commands]
    assert shards == [(12, 1), (12, 5), (12, 9)]
    taken = sorted(b for b in range(48) for total, k in shards if b % total == k)
    assert taken == [b for b in range(48) if b % 4 == 1]


def test_a_failing_worker_is_an_error_that_says_how_to_resume(tiny_dataset, tmp_path, capsys):
    argv = ["--dataset", "Tiny", "--data_dir", tiny_dataset, "--model", str(tmp_path / "no-model"),
            "--methods", "cdga-pg", "--synthetic_root", str(tmp_path / "out"), "--workers", "2"]
    assert cli_main(argv) == 2
    captured = capsys.readouterr()
    assert "worker(s) 1, 2 of 2 failed" in captured.err and "rerun the same command, it resumes" in captured.err
    assert captured.err.rstrip().endswith("--workers 2")  # the command to rerun is the one given
    assert "no-model" in captured.out  # the second worker's own error, shown after it ends


def test_guides_and_priors_are_each_trials_own(generated, tiny_checkpoint, tmp_path):
    """CDGA-IG and latent-prior images are made per trial: each record carries its trial and the digest of the
    validation split it excluded, its source and guide are in that trial's training split, and a trial's images
    (its guide pool with them) are the same whichever other trials are planned."""
    from domainbed_diffusion.data import splits
    validation = splits.validation_paths(os.path.join(generated, "Tiny"), ENVS, [0, 1, 2], 0.2)
    assert all(len(validation[t][env]) == 1 for t in (0, 1, 2) for env in ENVS)  # int(6 * 0.2) of each env
    records = read_manifests(os.path.join(generated, "synthetic", "Tiny"))
    for method, prefix in (("cdga-ig", "t{}_img"), ("latent-prior", "t{}_prior_")):
        made = [r for r in records if r["method"] == method]
        assert {r["params"]["trial_seed"] for r in made} == {0, 1, 2}
        for r in made:
            trial = r["params"]["trial_seed"]
            assert r["params"]["validation_digest"] == splits.digest(validation[trial][r["source_env"]])
            assert r["file"].split("/")[-1].startswith(prefix.format(trial))
            assert r["source"] is None or r["source"] not in validation[trial][r["source_env"]]
            assert r["guide"] is None or r["guide"] not in validation[trial][r["guide_env"]]
    # the guide pool is the trial's own training split: no shrinking with the planned trials
    data_dir = str(tmp_path / "data")
    write_image_dataset(os.path.join(data_dir, "Tiny"), ENVS, ["cat", "dog"], per_class=3)
    generate(data_dir, tiny_checkpoint, "--trial_seeds", "0", methods=("cdga-ig",))
    alone = {r["file"]: (r["guide"], r["seed"]) for r in read_manifests(os.path.join(data_dir, "synthetic", "Tiny"))}
    planned = {r["file"]: (r["guide"], r["seed"]) for r in records
               if r["method"] == "cdga-ig" and r["params"]["trial_seed"] == 0}
    assert alone == planned and len(alone) == 15 * 2
    assert digests(os.path.join(data_dir, "synthetic", "Tiny")) == {
        f: d for f, d in digests(os.path.join(generated, "synthetic", "Tiny")).items() if f.startswith("cdga-ig")
        and "/t0_" in f}


def test_per_trial_draws_differ_between_trials_and_repeat_on_rerun(tiny_checkpoint, tmp_path):
    """--per_trial: each trial's images of a source come from a seed of their own (a second trial is a second
    draw), from the trial's training split only; the same command again leaves every byte as it was, and a fresh
    run of the same command makes the same bytes."""
    from domainbed_diffusion.data import splits
    data_dir = str(tmp_path / "data")
    write_image_dataset(os.path.join(data_dir, "Tiny"), ENVS, ["cat", "dog"], per_class=3)
    argv = ("--per_trial", "--trial_seeds", "0", "1")
    generate(data_dir, tiny_checkpoint, *argv, methods=("cdga-pg", "edsam"))
    root = os.path.join(data_dir, "synthetic", "Tiny")
    records = read_manifests(root)
    validation = splits.validation_paths(os.path.join(data_dir, "Tiny"), ENVS, [0, 1], 0.2)
    assert all(r["source"] not in validation[r["params"]["trial_seed"]][r["source_env"]] for r in records)
    first = digests(root)
    by_trial = {}
    for r in records:
        key = (r["method"], r["source"], r["guide_env"], r["sample"])
        by_trial.setdefault(key, {})[r["params"]["trial_seed"]] = (r["seed"], first[r["file"]])
    both = [v for v in by_trial.values() if len(v) == 2]
    assert len(both) >= 10  # sources in the training split of both trials
    assert all(v[0][0] != v[1][0] and v[0][1] != v[1][1] for v in both)  # other seed, other image
    generate(data_dir, tiny_checkpoint, *argv, methods=("cdga-pg", "edsam"))
    assert digests(root) == first
    again = str(tmp_path / "again")
    write_image_dataset(os.path.join(again, "Tiny"), ENVS, ["cat", "dog"], per_class=3)
    generate(again, tiny_checkpoint, *argv, methods=("cdga-pg", "edsam"))
    assert digests(os.path.join(again, "synthetic", "Tiny")) == first


def test_ctrl_c_during_generation_exits_130_with_one_line_and_the_rerun_resumes(tiny_checkpoint, tmp_path):
    """SIGINT to the command while its two workers generate, even when it was started in the background (SIGINT
    ignored): exit status 130, one line and no traceback, no temporary file left; the same command again finishes
    the job with the bytes of an uninterrupted run."""
    import signal
    import time
    from offline_generation.cli import INTERRUPTED
    data_dir = str(tmp_path / "data")
    write_image_dataset(os.path.join(data_dir, "Tiny"), ENVS, ["cat", "dog"], per_class=8, size=(32, 32))
    argv = ["--dataset", "Tiny", "--data_dir", data_dir, "--model", tiny_checkpoint, "--methods", "cdga-pg",
            "--resolution", "32", "--steps", "4", "--batch_size", "4", "--domain_descriptions", DESCRIPTIONS,
            "--trial_seeds", "0"]
    command = [sys.executable, "-m", "offline_generation", *argv, "--synthetic_root", str(tmp_path / "out"),
               "--workers", "2"]
    # started as `command &` starts it: with SIGINT ignored, which it and its workers would inherit
    proc = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    images = tmp_path / "out" / "Tiny"
    deadline = time.time() + 120
    while time.time() < deadline and len(digests(images)) < 8:  # some images made, most not
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    made = len(digests(images))
    assert proc.returncode == 130 and "Traceback" not in out + err
    assert err.strip().splitlines()[-1] == INTERRUPTED and (out + err).count("interrupted") == 1
    assert 0 < made < 96 and not [f for _, _, fs in os.walk(images) for f in fs if f.endswith(".tmp")]
    again = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    rerun = re.findall(r"\[worker \d\] made (\d+) images, (\d+) already done", again.stdout)
    assert len(rerun) == 2 and sum(int(m) for m, _ in rerun) == 96 - made  # one line per worker: the rest, once
    # 48 sources, each toward the two other envs; one worker of one thread makes the same bytes as two
    assert cli_main([*argv, "--synthetic_root", str(tmp_path / "reference"), "--workers", "1"]) == 0
    assert digests(images) == digests(tmp_path / "reference" / "Tiny") and len(digests(images)) == 96


def test_composite_is_cdga_igs_transplant_of_the_same_pairs_without_diffusion(generated, tiny_checkpoint):
    """The Composite control writes, for CDGA-IG's own pairs and guides, the transplant CDGA-IG diffuses."""
    import torch
    from domainbed_diffusion.methods.style import transplant
    from offline_generation.sources import load_image
    generate(generated, tiny_checkpoint, methods=("composite",))
    records = read_manifests(os.path.join(generated, "synthetic", "Tiny"))
    ig = {(r["source"], r["guide_env"], r["params"]["trial_seed"]): r["guide"] for r in records
          if r["method"] == "cdga-ig"}
    composite = [r for r in records if r["method"] == "composite"]
    assert len(composite) == len(ig) and all(
        ig[(r["source"], r["guide_env"], r["params"]["trial_seed"])] == r["guide"] for r in composite)
    r = composite[0]
    source, _ = load_image(os.path.join(generated, "Tiny", r["source"]), 32)
    guide, _ = load_image(os.path.join(generated, "Tiny", r["guide"]), 32)
    expected = transplant(torch.from_numpy(source)[None], torch.from_numpy(guide)[None])[0]
    expected = (expected.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    made = np.asarray(Image.open(os.path.join(generated, "synthetic", "Tiny", r["file"])).convert("RGB"))
    assert np.array_equal(made, expected)
