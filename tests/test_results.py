"""The results command: stock collect_results' accuracies on DomainBed's own test sweep, pairing and Holm on a
constructed sweep, equivalence, robust reading, rows by hparam, the tidy file's round trip and the plots."""
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from domainbed_diffusion.results import cli, comparisons, tidy

from conftest import DOMAINBED_DIR, needs_domainbed, subprocess_env

# Debug28's three envs; a run records test accuracy on its test env and validation accuracy on the others
ENVS = 3


def write_run(sweep, name, algorithm, test_env, trial, test_acc, hparams_seed=0, hparams=None, done=True,
              steps=(0, 5), val=0.5, extra=None):
    folder = os.path.join(sweep, name)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.jsonl"), "w") as f:
        for k, step in enumerate(steps):
            record = {"args": {"algorithm": algorithm, "dataset": "Debug28", "test_envs": [test_env],
                               "trial_seed": trial, "hparams_seed": hparams_seed},
                      "hparams": dict(batch_size=8, **(hparams or {})), "step": step, "step_time": 0.1}
            for e in range(ENVS):  # the last checkpoint is the best on validation: both selections take it
                record[f"env{e}_in_acc"] = test_acc if k == len(steps) - 1 else test_acc - 0.1
                record[f"env{e}_out_acc"] = val + 0.01 * k
            record.update(extra or {})
            f.write(json.dumps(record) + "\n")
    if done:
        open(os.path.join(folder, "done"), "w").close()
    return folder


# trials differ a lot from each other; the method beats the baseline by about 2 points in each one
BASE = {0: 0.40, 1: 0.55, 2: 0.70, 3: 0.48}
METHOD = {0: 0.42, 1: 0.575, 2: 0.715, 3: 0.50}
OTHER = {0: 0.41, 1: 0.54, 2: 0.72, 3: 0.47}


def constructed_sweep(root):
    sweep = os.path.join(root, "sweep")
    for algorithm, accs in (("ERM", BASE), ("CORAL", METHOD), ("Mixup", OTHER)):
        for trial, acc in accs.items():
            for env in range(ENVS):
                write_run(sweep, f"{algorithm}-{env}-{trial}", algorithm, env, trial, acc)
    return sweep


def run_cli(*args, as_module=False):
    """The results command: its ``main`` in this process, or ``python -m domainbed_diffusion.results`` in a fresh
    one (``as_module``, where the entry point itself is under test)."""
    if as_module:
        out = subprocess.run([sys.executable, "-m", "domainbed_diffusion.results", *args], env=subprocess_env(),
                             capture_output=True, text=True)
        return out.returncode, out.stdout, out.stderr
    import contextlib
    import io
    from domainbed_diffusion.results.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse's errors
            code = exit.code
    return code, out.getvalue(), err.getvalue()


def stock_means(text):
    """{(selection title, algorithm): [env cells' means..., Avg]} from collect_results' text."""
    out, title = {}, None
    for line in text.splitlines():
        m = re.match(r"-------- Dataset: \w+, model selection method: (.*)", line)
        if m:
            title = m.group(1)
        elif title and re.match(r"\S+\s+(\d+\.\d|X)(\s|$)", line):
            name, rest = line.split(None, 1)
            out[title, name] = re.findall(r"(\d+\.\d|X)(?: \+/- (\d+\.\d))?", rest)
        elif line.startswith("-------- Averages"):
            title = None
    return out


@needs_domainbed
def test_accuracies_equal_stock_collect_results_on_domainbeds_test_sweep(tmp_path):
    data = os.path.join(DOMAINBED_DIR, "domainbed", "misc", "test_sweep_data")
    sweep = shutil.copytree(data, tmp_path / "sweep")  # collect_results writes its results.txt there
    stock = subprocess.run([sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir", str(sweep)],
                           env=subprocess_env(), capture_output=True, text=True, check=True).stdout
    code, ours, err = run_cli("--input_dir", str(sweep), as_module=True)
    assert code == 0, err
    expected, got = stock_means(stock), stock_means(ours)
    assert set(expected) == set(got) and len(expected) == 3  # ERM under each of the three selection methods
    for key, cells in expected.items():
        assert [m for m, _ in cells] == [m for m, _ in got[key][:len(cells)]], key  # every mean and the Avg
    # the +/-: DomainBed divides the population std by sqrt(n), this command the sample std (n - 1)
    results = tidy.load([str(sweep)])
    choices = [c for c in results["choices"] if c["selection"] == "training" and c["test_env"] == 0]
    accs = np.array([c["test_acc"] for c in choices])
    assert len(accs) == 2 and expected["training-domain validation set", "ERM"][0][1] == \
        f"{100 * np.std(accs) / np.sqrt(2):.1f}"
    assert got["training-domain validation set", "ERM"][0][1] == f"{100 * np.std(accs, ddof=1) / np.sqrt(2):.1f}"
    assert "40 runs read (200 records)" in ours


@needs_domainbed
def test_pairing_and_holm_over_the_printed_family(tmp_path):
    sweep = constructed_sweep(str(tmp_path))
    results = tidy.load([sweep], selections=("training", "oracle"))
    tables = cli.report(results, "ERM", "all")[0]
    by = {(t["selection"], c["row"]): c for t in tables for c in t["comparisons"]}
    assert len(by) == 4  # CORAL and Mixup against ERM, under two selection methods: one family of four
    raw = [stats.ttest_rel([METHOD[t] for t in range(4)], [BASE[t] for t in range(4)]).pvalue,
           stats.ttest_rel([OTHER[t] for t in range(4)], [BASE[t] for t in range(4)]).pvalue]
    assert math.isclose(by["training", "CORAL"]["p"], raw[0]) and math.isclose(by["oracle", "Mixup"]["p"], raw[1])
    expected = comparisons.holm([raw[0], raw[1], raw[0], raw[1]])
    assert [by[k]["p_holm"] for k in (("training", "CORAL"), ("training", "Mixup"), ("oracle", "CORAL"),
                                      ("oracle", "Mixup"))] == pytest.approx(expected)
    # paired: CORAL's gain survives Holm over four; unpaired, the same numbers are nowhere near significant
    assert by["training", "CORAL"]["p_holm"] < 0.05 and by["training", "CORAL"]["low"] > 0
    assert stats.ttest_ind(list(METHOD.values()), list(BASE.values())).pvalue > 0.5
    # per table, the family halves
    per_table = {(t["selection"], c["row"]): c for t in cli.report(results, "ERM", "table")[0]
                 for c in t["comparisons"]}
    assert per_table["training", "CORAL"]["p_holm"] == pytest.approx(comparisons.holm(raw)[0])
    training = next(t for t in tables if t["selection"] == "training")
    coral = next(r for r in training["rows"] if r["row"] == "CORAL")
    assert coral["average"]["mean"] == pytest.approx(np.mean(list(METHOD.values())))


def test_equivalence_is_tost_and_the_verdicts_follow_holm():
    base = {0: 0.40, 1: 0.55, 2: 0.70, 3: 0.48, 4: 0.61}
    close = {s: v + d for (s, v), d in zip(base.items(), (0.002, -0.001, 0.003, 0.0, -0.002))}
    got = comparisons.equivalence(close, base, margin=0.03)
    d = np.array([close[s] - base[s] for s in base])
    se = d.std(ddof=1) / np.sqrt(5)
    by_hand = max(stats.t.sf((d.mean() + 0.03) / se, 4), stats.t.cdf((d.mean() - 0.03) / se, 4))
    assert math.isclose(got["p"], by_hand) and got["p"] < 0.001
    assert -0.03 < got["low"] < got["high"] < 0.03  # the 90% interval inside the margin
    spread = {s: v + d for (s, v), d in zip(base.items(), (0.05, -0.04, 0.06, -0.05, 0.01))}
    assert comparisons.equivalence(spread, base, margin=0.03)["p"] > 0.05
    assert comparisons.verdict(0.2, 0.001) == "equivalent" and comparisons.verdict(0.2, 0.3) == "inconclusive"
    assert comparisons.verdict(0.001, 0.3) == "differs" and comparisons.verdict(0.01, 0.01) == "differs, within margin"


@needs_domainbed
def test_margin_adds_a_verdict_per_comparison(tmp_path):
    sweep = constructed_sweep(str(tmp_path))
    verdicts = {}
    for margin in ("5", "1"):  # CORAL is 1.5 to 2.5 points above ERM in every trial, Mixup -1 to +2
        code, out, err = run_cli("--input_dir", sweep, "--selection", "training", "--margin", margin)
        assert code == 0, err
        assert f"TOST with margin +/-{margin}.0" in out
        for line in out.splitlines():
            if line.startswith(("CORAL", "Mixup")):
                verdicts[line.split()[0], margin] = re.search(
                    r"differs, within margin|differs|equivalent|inconclusive", line).group(0)
    assert verdicts == {("CORAL", "5"): "differs, within margin", ("Mixup", "5"): "equivalent",
                        ("CORAL", "1"): "differs", ("Mixup", "1"): "inconclusive"}


@needs_domainbed
def test_a_cut_line_a_missing_key_and_an_unfinished_run_are_skipped_with_a_warning_and_counted(tmp_path):
    sweep = constructed_sweep(str(tmp_path))
    cut = os.path.join(sweep, "ERM-0-0", "results.jsonl")
    with open(cut) as f:
        good = f.read()
    with open(cut, "w") as f:  # a run killed while writing its third checkpoint
        f.write(good + good.splitlines()[0][:57])
    missing = os.path.join(sweep, "ERM-1-0", "results.jsonl")
    records = [json.loads(line) for line in open(missing)]
    del records[0]["env2_out_acc"]
    with open(missing, "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    write_run(sweep, "ERM-2-9", "ERM", 2, 9, 0.5, done=False)
    code, out, err = run_cli("--input_dir", sweep, "--selection", "training")
    assert code == 0 and "Traceback" not in err
    assert f"{cut}:3: not valid JSON (the last line, cut mid-write?)" in err
    assert f"{missing}:1: missing key 'env2_out_acc'" in err
    assert f"unfinished run: {os.path.join(sweep, 'ERM-2-9')}" in err
    assert out.splitlines()[0] == (f"36 runs read (71 records), 2 line(s) skipped (first in {cut}:3), "
                                   "1 run(s) unfinished")
    code, _, err = run_cli("--input_dir", sweep, "--unfinished", "error")
    assert code == 1 and "1 run(s) have no 'done' file" in err
    code, _, err = run_cli("--input_dir", str(tmp_path / "nowhere"))
    assert code == 2 and "no such folder" in err and "Traceback" not in err


@needs_domainbed
def test_group_by_an_hparam_splits_rows(tmp_path):
    sweep = str(tmp_path / "sweep")
    for model, acc in (("embedded-all-styles", 0.7), ("embedded-without-k", 0.6)):
        for env in range(ENVS):
            write_run(sweep, f"{model}-{env}", "CDGA_PG", env, 0, acc, hparams=dict(diffusion_model=model))
    code, out, err = run_cli("--input_dir", sweep, "--selection", "training", "--group_by", "diffusion_model")
    assert code == 0, err
    rows = {line.split(" [")[0] + " [" + line.split(" [")[1].split("]")[0] + "]": line.split("]")[1].split()[0]
            for line in out.splitlines() if line.startswith("CDGA_PG [")}
    assert rows == {"CDGA_PG [embedded-all-styles]": "70.0", "CDGA_PG [embedded-without-k]": "60.0"}
    # without it, two runs that differ only in that hparam would be read as one run by DomainBed's selection
    code, _, err = run_cli("--input_dir", sweep, "--selection", "training")
    assert code == 2 and "other hparams (diffusion_model): split the rows with --group_by diffusion_model" in err


@needs_domainbed
def test_the_tidy_file_reads_back_to_the_same_tables_and_the_plots_are_pngs(tmp_path):
    sweep = constructed_sweep(str(tmp_path))
    write_run(sweep, "mem", "Fish", 0, 0, 0.5, extra={"mem_gb": 1.25})
    out_dir = tmp_path / "out"
    code, first, err = run_cli("--input_dir", sweep, "--output_dir", str(out_dir), "--title", "QUICK: a test")
    assert code == 0, err
    code, again, err = run_cli("--input_dir", str(out_dir / "runs.json"), "--title", "QUICK: a test")
    assert code == 0, err
    assert first.splitlines()[1:-1] == again.splitlines()[1:]  # all but the reading summary and 'wrote'
    assert "peak GB" in first and "1.25" in first and "QUICK: a test Dataset: Debug28" in first
    for name in ("accuracy_Debug28_training.png", "accuracy_Debug28_oracle.png", "forest_Debug28.png"):
        with Image.open(out_dir / name) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert "\\begin{tabular}" in (out_dir / "results.tex").read_text()
    assert "| Algorithm |" in (out_dir / "results.md").read_text()
    assert "X: leave-one-domain-out needs runs with two test envs" in first
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    code, _, err = run_cli("--input_dir", str(bad))
    assert code == 2 and "not a runs.json of this command" in err


def test_the_forest_plot_names_the_margin_without_a_legend_over_its_last_line(tmp_path, monkeypatch):
    import matplotlib.figure
    from domainbed_diffusion.results import plots
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: saved.append(fig))
    comparisons = [{"row": row, "other": "ERM", "n": 12, "low": 0.01, "high": 0.05, "mean": 0.03, "p_holm": 0.04,
                    "verdict": "differs"} for row in ("A", "B")]
    table = {"comparisons": comparisons, "dataset": "D", "title": "training", "rows": [{"trials": 12}]}
    plots.forest([table], str(tmp_path / "forest.png"), margin=0.03)
    (ax,) = saved[0].axes
    assert ax.get_legend() is None and "equivalence margin +/-3" in ax.get_xlabel()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["B - ERM", "A - ERM"]
