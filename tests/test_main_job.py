"""The quick main job end to end, then resumed (the first run 7.8 min on 2 cores): ``python -m pytest -m slow``
with DomainBed."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, needs_domainbed, subprocess_env

ALGORITHMS = ["ERM", "MIRO", "CDGA_PG", "CDGA_IG", "EDSAM", "LatentPrior", "DomainFusion"]


@pytest.mark.slow
@needs_domainbed
def test_quick_main_job_prints_all_seven_rows_and_resumes(tmp_path):
    args = [sys.executable, os.path.join(REPO, "sweeps", "digitstyles.py"), "--quick",
            "--data_dir", str(tmp_path / "data"), "--output_dir", str(tmp_path / "out")]
    env = subprocess_env()
    env.pop("OMP_NUM_THREADS")  # the job splits the cores between its lanes itself
    first = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    table = first.stdout.split("model selection method: training-domain validation set")[1].split("--------")[0]
    rows = {line.split()[0] for line in table.strip().splitlines()[1:]}
    assert rows == set(ALGORITHMS)
    for name in ("results.txt", "accuracy.png", "preview.png", "accuracies.json"):
        assert os.path.getsize(tmp_path / "out" / name) > 0
    second = subprocess.run(args, env=env, capture_output=True, text=True, check=True)  # resumes: nothing redone
    assert "made 0 images" in second.stdout and "28 done, 0 incomplete, 0 not launched" in second.stdout
