"""The run's speed options: the lean evaluation changes no number but the ones it does not measure, and the
featurizer's autocast computes in bfloat16 while everything outside it stays float32."""
import copy
import json
import math
import os
import runpy
import sys

import pytest
import torch

from conftest import needs_domainbed


def train(data_dir, out, monkeypatch, **hparams):
    """DomainBed's stock train script in this process: ERM on DigitStyles, test env 0, 26 steps (checkpoints 0, 25);
    its records."""
    monkeypatch.setattr(sys, "argv", ["train.py", "--dataset", "DigitStyles", "--algorithm", "ERM", "--data_dir",
                                      data_dir, "--test_envs", "0", "--steps", "26", "--output_dir", str(out),
                                      "--hparams", json.dumps(hparams)])
    monkeypatch.setattr(sys, "stdout", sys.stdout)
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    torch.set_num_threads(1)  # the same kernels in both runs
    runpy.run_module("domainbed.scripts.train", run_name="__main__")
    with open(os.path.join(out, "results.jsonl")) as f:
        return [json.loads(line) for line in f]


@needs_domainbed
def test_the_lean_evaluation_changes_no_number_but_the_training_splits_accuracies(digitstyles_dir, tmp_path,
                                                                                  monkeypatch):
    full = train(digitstyles_dir, tmp_path / "full", monkeypatch, autocast="", eval_training_splits=True)
    lean = train(digitstyles_dir, tmp_path / "lean", monkeypatch, autocast="", eval_training_splits=False)
    assert [r["step"] for r in lean] == [r["step"] for r in full] == [0, 25]
    skipped = {"env1_in_acc", "env2_in_acc", "env3_in_acc"}  # the training envs' training splits
    for a, b in zip(full, lean):
        assert set(a) == set(b)
        for key in set(a) - skipped - {"hparams", "args", "step_time", "mem_gb"}:
            assert a[key] == b[key], key  # the test env's splits, the validation splits, the losses: bit for bit
        assert all(math.isnan(b[k]) for k in skipped) and not any(math.isnan(a[k]) for k in skipped)
    assert lean[-1]["loss"] == full[-1]["loss"]  # the training data drawn after each evaluation are the same


@needs_domainbed
def test_digitstyles_runs_in_bfloat16_with_lean_evaluation_by_default():
    from domainbed import hparams_registry
    for algorithm in ("ERM", "MIRO", "EDSAM"):
        hparams = hparams_registry.default_hparams(algorithm, "DigitStyles")
        assert hparams["autocast"] == "bfloat16" and hparams["eval_training_splits"] is False
    assert "autocast" not in hparams_registry.default_hparams("ERM", "PACS")  # DomainBed's datasets: stock


@needs_domainbed
def test_an_autocast_featurizer_computes_in_bfloat16_and_returns_float32():
    from domainbed import networks
    hparams = {"autocast": "bfloat16", "channels_last": True}
    plain = networks.Featurizer((3, 28, 28), {})
    mixed = networks.Featurizer((3, 28, 28), hparams)
    mixed.load_state_dict(plain.state_dict())  # the same parameters, same names
    assert set(mixed.state_dict()) == set(plain.state_dict())
    seen = []
    mixed.conv2.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    x = torch.randn(4, 3, 28, 28)
    out = mixed(x)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in mixed.parameters())  # float32 weights: the optimizer's
    # bfloat16 keeps about 3 significant digits: close to the float32 features, not equal to them
    reference = plain(x)
    assert not torch.equal(out, reference) and torch.allclose(out, reference, rtol=0.05, atol=0.05)
    assert copy.deepcopy(mixed)(x).dtype == torch.float32  # MIRO's oracle and SWAD's averages are copies
    out.sum().backward()
    assert mixed.conv1.weight.grad.dtype == torch.float32
    with pytest.raises(ValueError, match="autocast"):
        networks.Featurizer((3, 28, 28), {"autocast": "int8"})
