"""The synthetic-domain report measures what it says: copies score as copies, restyled digits as their style,
FID/KID vanish on a set against itself and grow with a shift, any dataset runs with ResNet-50, errors name what
is wrong."""
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from domainbed_diffusion.data.layout import ManifestWriter, env_folder, manifest_name
from domainbed_diffusion.data.index import build
from offline_generation.cli import main as cli_main
from offline_generation.report import fid_kid

from conftest import needs_domainbed, write_image_dataset


def write_set(synthetic_root, dataset, method, made):
    """A hand-made synthetic set: ``made`` is ``[(record fields, PIL image)]``; returns the dataset's folder."""
    root = os.path.join(synthetic_root, dataset)
    with ManifestWriter(os.path.join(root, manifest_name(method))) as manifest:
        for fields, image in made:
            file = f"{env_folder(method, fields['source_env'], fields.get('guide_env'))}/{fields['class_name']}/" \
                   f"{os.path.splitext(os.path.basename(fields['source']))[0]}_0.png"
            os.makedirs(os.path.dirname(os.path.join(root, file)), exist_ok=True)
            image.save(os.path.join(root, file))
            manifest.write([dict(fields, file=file, method=method, sample=0, params={}, seed=0, model_id="test")])
    build(root, method)
    return root


def test_fid_and_kid_vanish_on_a_set_against_itself_and_grow_with_a_shift():
    rng = np.random.RandomState(0)
    real = rng.randn(400, 16).astype(np.float32)
    fid, kid, _ = fid_kid(real, real.copy())
    # KID's unbiased estimate of a sample against itself is slightly negative (its own pairs count as cross pairs)
    assert fid < 1e-3 and abs(kid) < 0.25 * fid_kid(real, real + 0.25)[1]
    fids, kids = [], []
    for shift in (0.25, 0.5, 1.0):
        fid, kid, _ = fid_kid(real, real + shift)
        fids.append(fid)
        kids.append(kid)
    # a mean shift of s in each of 16 dimensions moves FID by 16 s^2
    assert np.allclose(fids, [16 * s ** 2 for s in (0.25, 0.5, 1.0)], rtol=0.05) and kids[0] < kids[1] < kids[2]


@needs_domainbed
def test_copies_score_as_copies_and_restyled_digits_as_their_new_style(digitstyles_dir, tmp_path):
    from domainbed_diffusion.benchmark import digitstyles
    images, _ = digitstyles.load_digits()
    dataset = os.path.join(digitstyles_dir, "DigitStyles")
    sources = [(env, cls, name) for env in digitstyles.DOMAINS for cls in digitstyles.CLASS_NAMES
               for name in sorted(os.listdir(os.path.join(dataset, env, cls)))[:8]]
    copies = [(dict(source_env=env, class_name=cls, source=f"{env}/{cls}/{name}"),
               Image.open(os.path.join(dataset, env, cls, name)).convert("RGB")) for env, cls, name in sources]
    synthetic = str(tmp_path / "synthetic")
    write_set(synthetic, "DigitStyles", "edsam", copies)
    # ink's digits drawn again by the dataset's renderer in neon (a new rendering of digits neon never held)
    restyled = [(dict(source_env=env, guide_env="neon", class_name=cls, source=f"{env}/{cls}/{name}"),
                 Image.fromarray(digitstyles.render_digit(images, int(name[:4]), "neon", 1)))
                for env, cls, name in sources if env == "ink"]
    write_set(synthetic, "DigitStyles", "cdga-pg", restyled)
    out = tmp_path / "report"
    assert cli_main(["report", "--dataset", "DigitStyles", "--data_dir", digitstyles_dir, "--synthetic_root",
                     synthetic, "--output", str(out), "--no_map"]) == 0
    report = json.loads((out / "report.json").read_text())
    ref = report["reference"]["label_accuracy"]
    copied = report["methods"]["edsam"]
    assert copied["label_fidelity"] > ref - 0.05 and copied["near_copy_share"] > 0.99
    assert copied["to_source"] > 0.95 and copied["copy_distance"]["median"] < 1e-4
    moved = report["methods"]["cdga-pg"]
    assert moved["sets"]["ink -> neon"]["attribution"]["neon"] >= 0.9 and moved["to_target"] >= 0.9
    assert moved["label_fidelity"] > ref - 0.15 and moved["near_copy_share"] < 0.05
    assert (out / "summary.txt").read_text().startswith("Synthetic-domain report: DigitStyles")
    # a report made anew (its saved one deleted) computes no feature again: they come from the cache
    (out / "report.json").unlink()
    assert cli_main(["report", "--dataset", "DigitStyles", "--data_dir", digitstyles_dir, "--synthetic_root",
                     synthetic, "--output", str(out), "--no_map"]) == 0
    assert json.loads((out / "report.json").read_text())["features_computed"] == 0


PACS_ENVS = ["art_painting", "cartoon", "photo", "sketch"]


@pytest.fixture
def pacs_like(tmp_path):
    data_dir = str(tmp_path / "data")
    write_image_dataset(os.path.join(data_dir, "PACS"), PACS_ENVS, ["dog", "horse"], per_class=4)
    made = [(dict(source_env=env, guide_env=guide, class_name=cls, source=f"{env}/{cls}/img{k}.png"),
             Image.open(os.path.join(data_dir, "PACS", env, cls, f"img{k}.png")).convert("RGB").rotate(90))
            for env in PACS_ENVS[:2] for guide in PACS_ENVS[2:] for cls in ("dog", "horse") for k in range(4)]
    return data_dir, write_set(os.path.join(data_dir, "synthetic"), "PACS", "cdga-pg", made)


def test_report_runs_offline_on_a_pacs_shaped_folder_with_resnet50(pacs_like, tmp_path):
    data_dir, _ = pacs_like
    out = tmp_path / "report"
    assert cli_main(["report", "--dataset", "PACS", "--data_dir", data_dir, "--output", str(out), "--extractor",
                     "resnet50", "--random_weights", "--per_group", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["extractor"] == "resnet50@random" and report["feature_dim"] == 2048
    sets = report["methods"]["cdga-pg"]["sets"]
    assert set(sets) == {f"{s} -> {g}" for s in PACS_ENVS[:2] for g in PACS_ENVS[2:]}
    # 8 images of 2048-d features: no FID (its covariance is singular), KID against every env, and a warning
    assert all(s["n"] == 8 and "fid_warning" in s and not s["fid"] and set(s["kid"]) == set(PACS_ENVS)
               for s in sets.values())
    assert (out / "map.png").stat().st_size > 0


def test_a_rerun_on_unchanged_inputs_reuses_the_report_and_a_changed_manifest_recomputes_it(pacs_like, tmp_path,
                                                                                               capsys):
    data_dir, dataset_root = pacs_like
    out = tmp_path / "report"
    args = ["report", "--dataset", "PACS", "--data_dir", data_dir, "--output", str(out), "--extractor", "resnet50",
            "--random_weights", "--per_group", "4", "--no_map"]
    assert cli_main(args) == 0
    first = (out / "report.json").read_text()
    capsys.readouterr()
    assert cli_main(args) == 0
    assert "report unchanged" in capsys.readouterr().out and (out / "report.json").read_text() == first
    assert cli_main(args[:-1]) == 0  # the map asked for: another report
    assert "report unchanged" not in capsys.readouterr().out and (out / "map.png").exists()
    manifest = next(os.path.join(dataset_root, n) for n in os.listdir(dataset_root) if n.startswith("manifest."))
    with open(manifest, "a") as f:
        f.write("")
    os.utime(manifest, ns=(os.stat(manifest).st_atime_ns, os.stat(manifest).st_mtime_ns + 10 ** 9))
    assert cli_main(args) == 0
    assert "report unchanged" not in capsys.readouterr().out


def test_errors_name_the_method_the_folder_and_the_fix(pacs_like, tmp_path, capsys):
    data_dir, dataset_root = pacs_like
    args = ["report", "--dataset", "PACS", "--data_dir", data_dir, "--extractor", "resnet50", "--random_weights"]
    assert cli_main(args + ["--methods", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    os.makedirs(os.path.join(dataset_root, "edsam__photo", "dog"))
    assert cli_main(args + ["--methods", "edsam"]) == 2
    assert "edsam image folders but no manifest" in capsys.readouterr().err
    for stale in (e for e in os.listdir(dataset_root) if e.startswith("index.cdga-pg.")):
        shutil.rmtree(os.path.join(dataset_root, stale))
    assert cli_main(args + ["--methods", "cdga-pg"]) == 2
    err = capsys.readouterr().err
    assert "no index of the cdga-pg manifests" in err and "python -m offline_generation index" in err
    assert cli_main(["report", "--dataset", "PACS", "--data_dir", data_dir, "--synthetic_root",
                     str(tmp_path / "empty")]) == 2
    assert "does not exist: generate first" in capsys.readouterr().err


def test_sampling_keeps_at_most_per_group_rows_of_every_group_and_all_of_small_ones():
    from offline_generation.report import _sample_rows
    groups = np.repeat(np.array([7, 2, 9]), [120, 30, 50])
    np.random.RandomState(1).shuffle(groups)
    rows = _sample_rows(groups, 50, seed=0)
    counts = dict(zip(*np.unique(groups[rows], return_counts=True)))
    assert counts == {2: 30, 7: 50, 9: 50} and len(set(rows.tolist())) == len(rows)
    assert np.array_equal(rows, _sample_rows(groups, 50, seed=0))
    assert not np.array_equal(rows, _sample_rows(groups, 50, seed=1))


def test_an_image_counts_towards_the_env_its_model_never_saw_else_towards_every_env_neither_source_nor_guide():
    from types import SimpleNamespace
    from offline_generation.report import Report
    # models: no card; trained on a, b, c (never saw d); trained on every env (saw them all)
    index = SimpleNamespace(model_trained_on=[None, ["a", "b", "c"], ["a", "b", "c", "d"]], model=[0, 1, 2, 0, 1, 2])
    source, guide, predicted = [0, 1, -1, 2, 3, 0], [-1, 2, -1, 3, 0, 1], [1, 3, 2, 0, 3, 2]
    shares = Report._to_test_env(SimpleNamespace(envs=["a", "b", "c", "d"]), index, np.arange(6), source, guide,
                                 predicted)
    np.testing.assert_allclose(shares, [1 / 3, 1, 1 / 4, 1 / 2, 1, 1 / 2])
    lone = Report._to_test_env(SimpleNamespace(envs=["a", "b"]), SimpleNamespace(model_trained_on=[None], model=[0]),
                               np.arange(1), [0], [1], [0])
    assert np.isnan(lone).all()  # source and guide cover every env: no test env to count towards


def test_with_images_drawn_per_trial_the_report_reads_only_its_trials_draw():
    from types import SimpleNamespace
    from offline_generation.report import Report, sample
    trials = np.array([0, 1, 2, 0, 1, 2, 0, 1], dtype=float)
    index = SimpleNamespace(param=lambda name: trials if name == "trial_seed" else np.full(8, np.nan))
    keep = Report.trial_rows(SimpleNamespace(trial_seed=1), index, "x: edsam")
    assert keep.tolist() == (trials == 1).tolist()
    zeros = np.zeros(8, dtype=np.int64)
    rows = sample(index, zeros, zeros - 1, zeros, 2, 1, per_group=50, seed=0, keep=keep)
    assert rows.tolist() == [1, 4, 7]  # every row of trial 1, none of another trial
    two = sample(index, zeros, zeros - 1, zeros, 2, 1, per_group=2, seed=0, keep=keep)
    assert len(two) == 2 and (trials[two] == 1).all()
    with pytest.raises(ValueError, match=r"trial seeds \[0, 1, 2\], none for --trial_seed 5"):
        Report.trial_rows(SimpleNamespace(trial_seed=5), index, "x: edsam")
    pooled = SimpleNamespace(param=lambda name: np.full(8, np.nan))  # one draw for every trial: read it all
    assert Report.trial_rows(SimpleNamespace(trial_seed=5), pooled, "x: edsam") is None
