"""The sweep scripts' own logic: the papers' commands and the main job's table arithmetic."""
import importlib.util
import math
import os

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


def row(accuracies_per_trial, seconds, images=24):
    main = load("main_job")
    per_env = {e: main._mean_sem(v) for e, v in enumerate(zip(*accuracies_per_trial))}
    per_trial = {t: sum(v) / len(v) for t, v in enumerate(accuracies_per_trial)}
    return dict(test_env=per_env, average=main._mean_sem(list(per_trial.values())), average_per_trial=per_trial,
                images_per_step=images, seconds_per_step=seconds, seconds_vs_erm=None)


def test_the_table_shows_paired_differences_with_intervals_and_holm_corrected_p_values():
    from domainbed_diffusion import statistics
    main = load("main_job")
    stats = main._mean_sem([0.5, 0.6, 0.7])
    assert math.isclose(stats["mean"], 0.6) and math.isclose(stats["sem"], 0.1 / math.sqrt(3))  # ddof=1
    erm = row([[0.40, 0.40], [0.50, 0.50], [0.60, 0.60]], 0.2)
    # about +2 points in every trial: far below the trial-to-trial spread, yet clear once paired
    steady = row([[0.42, 0.42], [0.515, 0.515], [0.625, 0.625]], 0.4, images=48)
    noisy = row([[0.50, 0.50], [0.40, 0.40], [0.66, 0.66]], 0.2)
    summary = {"ERM": erm, "EDSAM": steady, "CDGA_PG": noisy}
    for name, c in statistics.compare_to({a: r["average_per_trial"] for a, r in summary.items()}, "ERM").items():
        summary[name]["vs_erm"] = c
    for r in summary.values():
        r["seconds_vs_erm"] = r["seconds_per_step"] / erm["seconds_per_step"]
    lines = {line.split()[0]: line for line in main.results_table(summary, ["a", "b"]).splitlines()}
    # d = 2.0, 1.5, 2.5 points: se 0.29, t(2) 4.30 -> [+0.8, +3.2]; p 0.020, x2 by Holm (the other p is larger)
    assert "+2.0 [+0.8, +3.2]" in lines["EDSAM"] and "0.040 *" in lines["EDSAM"]
    assert lines["EDSAM"].split()[-3:] == ["48", "0.400", "2.00"]
    assert "+2.0 [" in lines["CDGA_PG"] and "*" not in lines["CDGA_PG"]
    assert lines["ERM"].split()[-3:] == ["24", "0.200", "1.00"]


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
    main = load("main_job")
    sweep = str(tmp_path / "sweep")
    for t in range(3):
        write_run(sweep, "ERM", t, 0, [(0, 0.1, 0.1, 0.1), (25, 0.9, 0.60 + t / 100, 0.6), (50, 0.8, 0.5, 0.5)])
        write_run(sweep, "EDSAM", t, 0, [(0, 0.1, 0.1, 0.1), (25, 0.6, 0.3, 0.3), (50, 0.7, 0.4, 0.9)])
        write_run(sweep, "EDSAM", t, 1, [(0, 0.1, 0.1, 0.1), (25, 0.5, 0.5, 0.5), (50, 0.95, 0.70, 0.2)])
    iid = main.summarize(sweep, "IIDAccuracySelectionMethod")
    assert math.isclose(iid["ERM"]["average"]["mean"], 0.61) and iid["ERM"]["selected_step"] == 25
    assert iid["EDSAM"]["selected"][0] == {t: dict(step=50, hparams_seed=1) for t in range(3)}
    assert math.isclose(iid["EDSAM"]["average"]["mean"], 0.70) and iid["EDSAM"]["hparams_sets"] == 2
    oracle = main.summarize(sweep, "OracleSelectionMethod")
    assert math.isclose(oracle["ERM"]["average"]["mean"], 0.5) and oracle["ERM"]["selected_step"] == 50
    assert oracle["EDSAM"]["selected"][0][0] == dict(step=50, hparams_seed=0)
    assert math.isclose(oracle["EDSAM"]["average"]["mean"], 0.4)
    # the same accuracies as DomainBed's own selection (collect_results' numbers)
    for group in reporting.get_grouped_records(reporting.load_records(sweep)):
        for summary, method in ((iid, model_selection.IIDAccuracySelectionMethod),
                                (oracle, model_selection.OracleSelectionMethod)):
            ours = summary[group["algorithm"]]["per_run"][0][group["trial_seed"]]
            assert math.isclose(ours, method.sweep_acc(group["records"]))
    # paired: EDSAM beats ERM by 10, 9, 8 points under training-domain validation
    assert math.isclose(iid["EDSAM"]["vs_erm"]["mean"], 0.09)
    table = main.results_table(iid, ["blueprint", "ink", "neon", "sketch"], "IIDAccuracySelectionMethod",
                               protocol=main.protocol(dict(n_hparams=1)))
    assert "model selection: training-domain validation" in table and "no random search" in table
    assert main.results_table(oracle, ["a", "b", "c", "d"], "OracleSelectionMethod").count("oracle") == 1


def test_each_row_is_read_against_its_control_paired_and_holm_corrected():
    main = load("main_job")
    summary = {name: dict(average_per_trial=dict(enumerate(values))) for name, values in (
        ("ERM", [0.50, 0.60, 0.70]), ("ERM_RealMatched", [0.45, 0.58, 0.69]), ("Regenerated", [0.55, 0.64, 0.76]),
        ("CDGA_PG", [0.60, 0.70, 0.80]))}
    pairs = dict(main.readings(summary))
    assert set(pairs) == {"CDGA_PG - Regenerated", "Regenerated - ERM_RealMatched", "ERM_RealMatched - ERM"}
    assert math.isclose(pairs["CDGA_PG - Regenerated"]["mean"], 0.05)
    text = main.contrasts_table(list(pairs.items()), "title")
    # CDGA_PG - Regenerated: +5, +6, +4 points, the smallest of the three p-values: Holm multiplies it by 3
    line = next(line for line in text.splitlines() if "CDGA_PG - Regenerated" in line)
    from scipy import stats
    p = stats.ttest_rel([0.60, 0.70, 0.80], [0.55, 0.64, 0.76]).pvalue
    assert f"p (Holm) {min(1, 3 * p):.3f}" in line and "n=3" in line


def test_the_generator_effect_is_each_row_with_the_all_styles_model_minus_itself_paired():
    main = load("main_job")
    default = {"ERM": dict(average_per_trial={0: 0.5, 1: 0.6}), "EDSAM": dict(average_per_trial={0: 0.6, 1: 0.7}),
               "MIRO": dict(average_per_trial={0: 0.6, 1: 0.6})}
    all_styles = {"ERM": default["ERM"], "EDSAM": dict(average_per_trial={0: 0.7, 1: 0.9, 2: 0.1})}
    effect = dict(main.generator_effect(default, all_styles))
    assert list(effect) == ["EDSAM: all-styles - per-test-env"]  # ERM is the same runs; MIRO uses no generator
    assert effect["EDSAM: all-styles - per-test-env"]["seeds"] == [0, 1]
    assert math.isclose(effect["EDSAM: all-styles - per-test-env"]["mean"], 0.15)


@needs_domainbed
def test_runs_from_before_the_checkpoint_frequency_are_named_for_deletion(tmp_path):
    import json
    main = load("main_job")
    sweep = str(tmp_path / "sweep")
    write_run(sweep, "ERM", 0, 0, [(s, 0.5, 0.5, 0.5) for s in range(0, 151, 25)])  # 0, 25, ..., 150
    write_run(sweep, "ERM", 1, 0, [(0, 0.5, 0.5, 0.5), (150, 0.5, 0.5, 0.5)])  # an earlier version's two
    for name in os.listdir(sweep):  # write_run leaves steps out: the dataset's N_STEPS
        path = os.path.join(sweep, name, "results.jsonl")
        records = [dict(json.loads(line), args=dict(json.loads(line)["args"], steps=None)) for line in open(path)]
        with open(path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)
    assert main.stale_runs(sweep) == [os.path.join(sweep, "ERM_1_0")]
