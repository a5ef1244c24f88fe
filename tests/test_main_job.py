"""The quick main job end to end, then resumed: ``python -m pytest -m slow`` with DomainBed (its time:
docs/results.md)."""
import os
import subprocess
import sys
import time

import pytest

from domainbed_diffusion import catalogue

from conftest import REPO, needs_domainbed, subprocess_env

ALGORITHMS = ["ERM", *catalogue.algorithms()]


@pytest.mark.slow
@needs_domainbed
def test_quick_main_job_prints_every_row_and_resumes(tmp_path):
    args = [sys.executable, os.path.join(REPO, "sweeps", "main_job.py"), "--quick",
            "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS")  # the job splits the cores between its lanes itself
    first = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    table = first.stdout.split("model selection method: training-domain validation set")[1].split("--------")[0]
    rows = {line.split()[0] for line in table.strip().splitlines()[1:1 + len(ALGORITHMS)]}
    assert rows == set(ALGORITHMS)
    for name in ("results.txt", "results.md", "accuracy.png", "forest.png", "preview.png", "runs.json",
                 "report/report.json", "report/map.png"):
        assert os.path.getsize(tmp_path / "out" / name) > 0
    assert "-------- QUICK: 1 trial(s), 26 steps, not a result. Dataset: DigitStyles" in first.stdout
    start = time.time()
    second = subprocess.run(args, env=env, capture_output=True, text=True, check=True)  # resumes: nothing redone
    seconds = time.time() - start
    runs = len(ALGORITHMS) * 4  # one trial per (algorithm, test env) of DigitStyles' four envs
    assert "made 0 images" in second.stdout and f"{runs} done, 0 incomplete, 0 not launched" in second.stdout
    assert "report unchanged" in second.stdout and seconds < 30, seconds  # a rerun with nothing to do is quick
