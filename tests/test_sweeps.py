"""The sweep scripts' own logic: the papers' commands, the main job's tables (through the results command's
library) and its readings."""
import importlib.util
import json
import math
import os

import numpy as np

from conftest import REPO, needs_domainbed


def load(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "sweeps", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_papers_generation_fits_the_trials_the_sweep_runs():
    papers = load("papers")
    args = type("Args", (), dict(dataset="PACS", data_dir="/d", output_dir="/o", launcher="multi_gpu", gpus=1,
                                 n_hparams=1))()
    gen, sweep, _ = papers.commands(args)
    trials = int(sweep[sweep.index("--n_trials") + 1])
    for command in gen:
        assert command[command.index("--trial_seeds") + 1:] == [str(t) for t in range(trials)]


def tidy_of(rows):
    """Tidy results (``domainbed_diffusion.results``' per-run file) of constructed rows:
    ``{row: (accuracies per trial per test env, seconds per step, images per step)}``, one run per choice."""
    runs, choices = [], []
    for name, (per_trial, seconds, images) in rows.items():
        for trial, accs in enumerate(per_trial):
            for env, acc in enumerate(accs):
                runs.append(dict(dataset="D", algorithm=name, row=name, test_envs=[env], trial_seed=trial,
                                 hparams_seed=0, images_per_step=images, seconds_per_step=seconds, mem_gb=None))
                choices += [dict(dataset="D", row=name, algorithm=name, selection=s, test_env=env, trial_seed=trial,
                                 hparams_seed=0, step=25, val_acc=0.5, test_acc=acc) for s in ("training", "oracle")]
    return dict(environments={"D": ["a", "b"]}, rows=list(rows), selections=["training", "oracle"], runs=runs,
                choices=choices)


def test_the_table_shows_paired_differences_with_intervals_and_holm_corrected_p_values():
    from domainbed_diffusion.results import tables
    tidy = tidy_of({"ERM": ([[0.40, 0.40], [0.50, 0.50], [0.60, 0.60]], 0.2, 24),
                    # about +2 points in every trial: far below the trial-to-trial spread, yet clear once paired
                    "EDSAM": ([[0.42, 0.42], [0.515, 0.515], [0.625, 0.625]], 0.4, 48),
                    "CDGA_PG": ([[0.50, 0.50], [0.40, 0.40], [0.66, 0.66]], 0.2, 24)})
    training = tables.analyse(tidy, family="table")[0]
    assert math.isclose(training["rows"][0]["envs"][0]["sem"], 0.1 / math.sqrt(3))  # ddof=1
    lines = {line.split()[0]: line for line in tables.text(training, family="table").splitlines()}
    # d = 2.0, 1.5, 2.5 points: se 0.29, t(2) 4.30 -> [+0.8, +3.2]; p 0.020, x2 by Holm (the other p is larger)
    assert "+2.0 [+0.8, +3.2]" in lines["EDSAM"] and "0.040 *" in lines["EDSAM"]
    assert lines["EDSAM"].split()[-3:] == ["48", "0.400", "2.00"]
    assert "+2.0 [" in lines["CDGA_PG"] and "*" not in lines["CDGA_PG"]
    assert lines["ERM"].split()[-3:] == ["24", "0.200", "1.00"]
    # one family over both selection tables: each p doubles again
    both = {(t["selection"], c["row"]): c["p_holm"] for t in tables.analyse(tidy) for c in t["comparisons"]}
    assert len(both) == 4 and math.isclose(both["training", "EDSAM"], 2 * 0.040, abs_tol=0.002)


def write_run(sweep_dir, algorithm, trial, hparams_seed, checkpoints):
    """One run's results.jsonl: ``checkpoints`` is ``[(step, mean training-env validation acc, test-env in acc,
    test-env out acc)]`` for test env 0 of a four-env dataset."""
    import json
    folder = os.path.join(sweep_dir, f"{algorithm}_{trial}_{hparams_seed}")
    os.makedirs(folder)
    args = dict(algorithm=algorithm, dataset="DigitStyles", test_envs=[0], trial_seed=trial,
                hparams_seed=hparams_seed)
    with open(os.path.join(folder, "results.jsonl"), "w") as f:
        for step, val, test_in, test_out in checkpoints:
            record = dict(args=args, step=step, step_time=0.1, hparams=dict(batch_size=8), env0_in_acc=test_in,
                          env0_out_acc=test_out, **{f"env{i}_{s}_acc": val for i in (1, 2, 3) for s in ("in", "out")})
            f.write(json.dumps(record) + "\n")
    open(os.path.join(folder, "done"), "w").close()


@needs_domainbed
def test_training_domain_validation_picks_an_earlier_checkpoint_and_another_hparams_set(tmp_path):
    """A constructed sweep: ERM's validation peaks at step 25, not at its last checkpoint; EDSAM has two hparams
    sets, the second better on validation, the first on the test env's own validation split (the oracle's)."""
    from domainbed import model_selection
    from domainbed.lib import reporting
    from domainbed_diffusion import results
    sweep = str(tmp_path / "sweep")
    for t in range(3):
        write_run(sweep, "ERM", t, 0, [(0, 0.1, 0.1, 0.1), (25, 0.9, 0.60 + t / 100, 0.6), (50, 0.8, 0.5, 0.5)])
        write_run(sweep, "EDSAM", t, 0, [(0, 0.1, 0.1, 0.1), (25, 0.6, 0.3, 0.3), (50, 0.7, 0.4, 0.9)])
        write_run(sweep, "EDSAM", t, 1, [(0, 0.1, 0.1, 0.1), (25, 0.5, 0.5, 0.5), (50, 0.95, 0.70, 0.2)])
    tidy = results.load(sweep, selections=("training", "oracle"))
    chosen = {(c["selection"], c["row"], c["trial_seed"]): c for c in tidy["choices"]}
    assert all(chosen["training", "ERM", t]["step"] == 25 for t in range(3))
    assert all((chosen["training", "EDSAM", t]["step"], chosen["training", "EDSAM", t]["hparams_seed"]) == (50, 1)
               for t in range(3))
    assert all((chosen["oracle", "EDSAM", t]["step"], chosen["oracle", "EDSAM", t]["hparams_seed"]) == (50, 0)
               for t in range(3))
    by = {(t["selection"], r["row"]): r for t in results.analyse(tidy, family="table") for r in t["rows"]}
    assert math.isclose(by["training", "ERM"]["envs"][0]["mean"], 0.61) and by["training", "ERM"]["step"] == 25
    assert math.isclose(by["training", "EDSAM"]["envs"][0]["mean"], 0.70) and by["training", "EDSAM"]["hparams_sets"] == 2
    assert math.isclose(by["oracle", "ERM"]["envs"][0]["mean"], 0.5) and by["oracle", "ERM"]["step"] == 50
    assert math.isclose(by["oracle", "EDSAM"]["envs"][0]["mean"], 0.4)
    # the same accuracies as DomainBed's own selection (collect_results' numbers)
    for group in reporting.get_grouped_records(reporting.load_records(sweep)):
        for name, method in (("training", model_selection.IIDAccuracySelectionMethod),
                             ("oracle", model_selection.OracleSelectionMethod)):
            ours = chosen[name, group["algorithm"], group["trial_seed"]]["test_acc"]
            assert math.isclose(ours, method.sweep_acc(group["records"]))


def test_each_row_is_read_against_its_control_paired_and_holm_corrected():
    main = load("main_job")
    table = dict(rows=[dict(row=name, per_trial=dict(enumerate(values))) for name, values in (
        ("ERM", [0.50, 0.60, 0.70]), ("ERM_RealMatched", [0.45, 0.58, 0.69]), ("Regenerated", [0.55, 0.64, 0.76]),
        ("CDGA_PG", [0.60, 0.70, 0.80]))])
    pairs = dict(main.readings(table))
    assert set(pairs) == {"CDGA_PG - Regenerated", "Regenerated - ERM_RealMatched", "ERM_RealMatched - ERM"}
    # each entry declares what it is read against (its spec, or its Entry): the ablation table's nine readings
    from domainbed_diffusion import catalogue
    assert set(catalogue.readings()) == {
        ("CDGA_PG", "Regenerated"), ("CDGA_IG", "Regenerated"), ("CDGA_IG", "Composite"),
        ("EDSAM", "Regenerated_Balanced"), ("LatentPrior", "Regenerated_Balanced"),
        ("DomainFusion", "ERM_FusionMatched"), ("Regenerated", "ERM_RealMatched"), ("ERM_Augment", "ERM"),
        ("ERM_RealMatched", "ERM")}
    assert math.isclose(pairs["CDGA_PG - Regenerated"]["mean"], 0.05)
    text = main.contrasts_table(list(pairs.items()), "title")
    # CDGA_PG - Regenerated: +5, +6, +4 points, the smallest of the three p-values: Holm multiplies it by 3
    line = next(line for line in text.splitlines() if "CDGA_PG - Regenerated" in line)
    from scipy import stats
    p = stats.ttest_rel([0.60, 0.70, 0.80], [0.55, 0.64, 0.76]).pvalue
    assert f"p (Holm) {min(1, 3 * p):.3f}" in line and "n=3" in line


def test_the_generator_effect_is_each_row_with_the_all_styles_model_minus_itself_paired():
    main = load("main_job")

    def table(rows):
        return dict(rows=[dict(row=name, per_trial=values) for name, values in rows.items()])
    default = {"ERM": {0: 0.5, 1: 0.6}, "EDSAM": {0: 0.6, 1: 0.7}, "MIRO": {0: 0.6, 1: 0.6}}
    all_styles = {"ERM": default["ERM"], "EDSAM": {0: 0.7, 1: 0.9, 2: 0.1}}
    effect = dict(main.generator_effect(table(default), table(all_styles)))
    assert list(effect) == ["EDSAM: all-styles - per-test-env"]  # ERM is the same runs; MIRO uses no generator
    assert effect["EDSAM: all-styles - per-test-env"]["seeds"] == [0, 1]
    assert math.isclose(effect["EDSAM: all-styles - per-test-env"]["mean"], 0.15)


def test_a_quick_runs_tables_and_plots_say_so():
    from offline_generation import pipeline
    assert pipeline.title(dict(pipeline.PROFILES["quick"])) == "QUICK: 1 trial(s), 26 steps, not a result."
    assert pipeline.title(dict(pipeline.PROFILES["full"])) == ""


@needs_domainbed
def test_runs_from_before_the_checkpoint_frequency_are_named_for_deletion(tmp_path):
    import json
    from offline_generation import pipeline
    sweep = str(tmp_path / "sweep")
    write_run(sweep, "ERM", 0, 0, [(s, 0.5, 0.5, 0.5) for s in range(0, 151, 25)])  # 0, 25, ..., 150
    write_run(sweep, "ERM", 1, 0, [(0, 0.5, 0.5, 0.5), (150, 0.5, 0.5, 0.5)])  # an earlier version's two
    for name in os.listdir(sweep):  # write_run leaves steps out: the dataset's N_STEPS
        path = os.path.join(sweep, name, "results.jsonl")
        records = [dict(json.loads(line), args=dict(json.loads(line)["args"], steps=None)) for line in open(path)]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    assert pipeline.stale_runs(sweep) == [os.path.join(sweep, "ERM_1_0")]


def test_the_studys_families_are_holm_corrected_each_on_its_own():
    """Primary (methods - ERM) and secondary (methods - controls) families: each comparison's Holm p is over its
    own family only, a pair with a missing row is skipped, and the table's vs-ERM column is the primary family's."""
    from scipy import stats
    from domainbed_diffusion.results import comparisons, tables
    study = load("study")
    rng = np.random.default_rng(0)
    base = rng.uniform(0.4, 0.6, 6)
    rows = {"ERM": base}
    for k, name in enumerate(study.METHODS + ["Regenerated", "Composite", "ERM_FusionMatched"]):
        rows[name] = base + 0.01 * k + rng.normal(0, 0.01, 6)
    tidy = tidy_of({name: ([[v, v] for v in values], 0.1, 24) for name, values in rows.items()})
    tidy["environments"] = {"DigitStyles": ["a", "b"]}
    for item in tidy["runs"] + tidy["choices"]:
        item["dataset"] = "DigitStyles"
    table = study.analyse(tidy, "training")
    got = {(c["family"], c["row"], c["other"]): c for c in table["comparisons"]}
    for family, pairs in study.FAMILIES.items():
        present = [(a, b) for a, b in pairs if a in rows and b in rows]
        raw = [stats.ttest_rel(rows[a], rows[b]).pvalue for a, b in present]
        for (a, b), p in zip(present, comparisons.holm(raw)):
            assert math.isclose(got[family, a, b]["p_holm"], p, rel_tol=1e-9)
            assert got[family, a, b]["verdict"] in ("differs", "equivalent", "differs, within margin",
                                                     "inconclusive")
    assert ("secondary", "EDSAM", "Regenerated_Balanced") not in got  # no such row here: skipped
    by_row = {r["row"]: r for r in table["rows"]}
    assert by_row["MIRO"]["vs_baseline"] is got["primary", "MIRO", "ERM"]
    assert by_row["Regenerated"]["vs_baseline"] is None  # a control is read against its method, not ERM
    text = study.text(table, "")
    assert "Primary family (6 comparisons" in text and "CDGA_IG - Composite" in text


@needs_domainbed
def test_the_fresh_trial_sweep_is_the_stock_job_list_with_moved_trial_seeds():
    from domainbed.lib import misc
    from domainbed.scripts import sweep as stock
    from domainbed_diffusion.launchers import sweep
    argv = ["launch", "--trial_seed_from", "100", "--n_trials", "2", "--datasets", "DigitStyles", "--algorithms",
            "ERM", "CDGA_IG", "--n_hparams", "1", "--data_dir", "/d", "--output_dir", "/o", "--command_launcher",
            "dummy", "--single_test_envs", "--skip_confirmation"]
    args = sweep.parser().parse_args(argv)
    moved = sweep.job_arguments(args)
    plain = stock.make_args_list(2, ["DigitStyles"], ["ERM", "CDGA_IG"], 0, 1, None, "/d", "domain_generalization",
                                 0.2, True, None)
    assert len(moved) == len(plain) == 16
    for a, b in zip(moved, plain):
        assert a["trial_seed"] == b["trial_seed"] + 100
        assert a["seed"] == misc.seed_hash("DigitStyles", a["algorithm"], a["test_envs"], 0, a["trial_seed"])
        assert {k: v for k, v in a.items() if k not in ("trial_seed", "seed")} == \
            {k: v for k, v in b.items() if k not in ("trial_seed", "seed")}
    assert not {stock.Job(a, "/o").output_dir for a in moved} & {stock.Job(b, "/o").output_dir for b in plain}


@needs_domainbed
def test_erm_fusion_matched_has_domainfusions_schedule_and_images_per_step():
    from domainbed import hparams_registry
    import torch
    from domainbed_diffusion.algorithms import lr_schedule
    fusion = hparams_registry.default_hparams("DomainFusion", "DigitStyles")
    matched = hparams_registry.default_hparams("ERM_FusionMatched", "DigitStyles")
    assert matched["batch_size"] == 2 * fusion["batch_size"] and matched["lr_schedule"] == fusion["lr_schedule"]
    assert hparams_registry.default_hparams("ERM_FusionMatched", "PACS")["batch_size"] == \
        2 * hparams_registry.default_hparams("DomainFusion", "PACS")["batch_size"]
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = lr_schedule(optimizer, "cosine", 10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 1.0 and math.isclose(lrs[5], 0.5) and math.isclose(optimizer.param_groups[0]["lr"], 0.0,
                                                                        abs_tol=1e-12)
    assert lr_schedule(optimizer, "constant", 10) is None


def test_the_exploratory_rows_get_a_folder_per_hparams_set_and_their_own_names():
    exploratory = load("exploratory")
    folders = exploratory.folders(exploratory.ROWS)
    assert folders["default"][1][:2] == [("ERM", "ERM"), ("ERM_SWAD", "ERM_SWAD")]
    coral = folders["synthetic_as=environments-synthetic_methods=cdga-ig"]
    assert coral == ({"synthetic_methods": ["cdga-ig"], "synthetic_as": "environments"},
                     [("CORAL + CDGA-IG env", "CORAL")])
    assert folders["synthetic_filter=label"][1] == [("EDSAM filtered", "EDSAM")]
    plain = tidy_of({"ERM": ([[0.5, 0.5]], 0.1, 24), "CORAL": ([[0.6, 0.6]], 0.1, 24)})
    extra = exploratory.relabel(tidy_of({"CORAL": ([[0.7, 0.7]], 0.1, 48)}), {"CORAL": "CORAL + CDGA-IG env"})
    extra["rows"] = ["CORAL + CDGA-IG env"]
    both = exploratory.merged([plain, extra], list(exploratory.ROWS))
    assert both["rows"] == ["ERM", "CORAL", "CORAL + CDGA-IG env"]
    assert {c["row"] for c in both["choices"]} == {"ERM", "CORAL", "CORAL + CDGA-IG env"}


def test_the_committed_exploratory_runs_recompute_the_table_in_results_md(capsys):
    exploratory = load("exploratory")
    assert exploratory.main(["--tables_from", os.path.join(REPO, "sweeps", "results",
                                                           "digitstyles_exploratory_runs.json")]) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(REPO, "docs", "results.md")) as f:
        page = f.read()
    for row, avg, vs_erm in [("CORAL + CDGA-IG env", "62.7 +/- 0.6", "+9.2 [-0.8, +19.2]"),
                             ("EDSAM filtered", "57.8 +/- 1.7", "+4.3 [-8.6, +17.2]")]:
        line = next(l for l in printed.splitlines() if l.startswith(row + " "))
        assert avg in line and vs_erm in line and f"| {row} | {avg} | {vs_erm} |" in page
    assert "CORAL + CDGA-IG env - CORAL              +10.1 [+9.2, +11.1]      p (Holm) 0.005 *" in printed
    assert "+10.1 [+9.2, +11.1] vs CORAL" in page


def test_the_committed_study_runs_recompute_its_tables_and_the_readme_headline(tmp_path, capsys):
    study = load("study")
    runs = os.path.join(REPO, "sweeps", "results", "digitstyles_study_runs.json")
    with open(runs) as f:
        choices = json.load(f)["choices"]
    training = [c for c in choices if c["selection"] == "training"]
    # the protocol's 11 rows x 4 test envs x trials 100-111, each run once
    assert sorted({c["trial_seed"] for c in training}) == list(range(100, 112))
    assert len({(c["row"], c["test_env"], c["trial_seed"]) for c in training}) == len(training) == 528
    assert study.main(["--tables_from", runs, "--output_dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    with open(os.path.join(REPO, "sweeps", "results", "digitstyles_study.txt")) as f:
        assert printed == f.read()
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    headline = readme.split("## Results on DigitStyles", 1)[1].split("```", 2)[1].strip()
    assert study.main(["--tables_from", runs, "--headline"]) == 0
    assert capsys.readouterr().out.strip() == headline and len(headline.splitlines()) == 19
    # the narrow table's numbers are the full table's
    for line in headline.splitlines()[1:12]:
        row, avg = line.split()[0], " ".join(line.split()[1:4])
        assert any(p.startswith(row + " ") and avg in p for p in printed.splitlines())


def test_the_studys_registered_readings_are_the_catalogues():
    """The study keeps its secondary family as registered constants (a later catalogue edit must not move a
    finished protocol); each of them is still a reading the catalogue declares."""
    from domainbed_diffusion import catalogue
    study = load("study")
    assert set(study.SECONDARY) <= set(catalogue.readings())
    assert set(study.ROWS) <= {"ERM", *catalogue.algorithms(controls=True)}


def test_papers_commands_pass_the_settings_the_cost_table_assumes():
    """The cost table (``papers.py --cost``) assumes bf16 generation on the compiled channels-last path and
    DomainFusion's model in bf16: those are the settings the printed commands pass."""
    papers = load("papers")
    args = type("Args", (), dict(dataset="PACS", data_dir="/d", output_dir="/o", launcher="multi_gpu", gpus=8,
                                 n_hparams=1))()
    gen, sweep, _ = papers.commands(args)
    for command in gen:
        assert command[command.index("--dtype") + 1] == "bfloat16" and "--compile" in command
        assert "--channels_last" in command
    assert json.loads(sweep[sweep.index("--hparams") + 1])["diffusion_dtype"] == "bfloat16"


@needs_domainbed
def test_domainfusion_cost_counts_gsd_and_the_refresh_at_the_registrys_settings():
    """FLOPs per step from one UNet call's, one encode's, its derivative's and one decode's (given here), at the
    registry's PACS hparams: 48 real images, GSD each step, each drawn image refreshed each step by 2 candidates of
    40 guided denoising steps (50 at strength 0.8, guidance 7.5)."""
    from offline_generation import cost
    hp = cost.domainfusion_hparams("PACS", {"diffusion_dtype": "bfloat16"})
    flops = dict(unet=10.0, encode=3.0, decode=5.0, encode_jvp=7.0)
    resnet = dict(forward=1.0, train=3.0)
    parts, erm = cost.domainfusion_step("PACS", hp, flops, resnet)
    assert hp["batch_size"] == 16 and hp["refresh_every"] == 1 and hp["n_candidates"] == 2
    assert parts["GSD"] == 48 * (7 + 10)
    assert parts["refresh"] == 48 * (3 + 2 * (2 * 40 * 10 + 5) + 3 * 1)
    assert parts["classifier (real + synthetic)"] == 2 * 48 * 3 and erm == 48 * 3
    parts5, _ = cost.domainfusion_step("PACS", dict(hp, refresh_every=5), flops, resnet)
    assert parts5["refresh"] == parts["refresh"] / 5
