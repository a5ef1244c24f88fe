"""The sweep scripts' own logic: the papers' commands and the main job's table arithmetic."""
import importlib.util
import math
import os

from conftest import REPO


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
