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
    return dict(test_env=per_env, average=main._mean_sem([sum(t) / len(t) for t in accuracies_per_trial]),
                images_per_step=images, seconds_per_step=seconds, seconds_vs_erm=None)


def test_standard_error_and_the_two_standard_error_mark():
    main = load("main_job")
    stats = main._mean_sem([0.5, 0.6, 0.7])
    assert math.isclose(stats["mean"], 0.6) and math.isclose(stats["sem"], 0.1 / math.sqrt(3))  # ddof=1
    erm = row([[0.40, 0.40], [0.42, 0.42], [0.44, 0.44]], 0.2)
    far = row([[0.60, 0.60], [0.62, 0.62], [0.64, 0.64]], 0.4, images=48)
    near = row([[0.41, 0.41], [0.43, 0.43], [0.45, 0.45]], 0.2)
    diff, se, significant = main.versus_erm(far, erm)
    assert math.isclose(diff, 0.2) and math.isclose(se, math.sqrt(2) * 0.02 / math.sqrt(3)) and significant
    assert not main.versus_erm(near, erm)[2]  # +1 point, 1.6 points of standard error
    for r in (erm, far, near):
        r["seconds_vs_erm"] = r["seconds_per_step"] / erm["seconds_per_step"]
    table = main.results_table({"ERM": erm, "EDSAM": far, "CDGA_PG": near}, ["a", "b"])
    lines = {line.split()[0]: line for line in table.splitlines()}
    assert "+20.0 +/- 1.6 *" in lines["EDSAM"] and lines["EDSAM"].split()[-3:] == ["48", "0.400", "2.00"]
    assert "+1.0 +/- 1.6" in lines["CDGA_PG"] and "*" not in lines["CDGA_PG"]
    assert lines["ERM"].split()[-3:] == ["24", "0.200", "1.00"]
