"""The throughput benchmark's CPU smoke test (tiny configs): every workload runs and is reported."""
from offline_generation.throughput import main, per_image_flops
from types import SimpleNamespace

import torch


def test_benchmark_smoke_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    results = main(["--tiny", "--device", "cpu", "--images", "2", "--baseline_images", "1", "--batch_size", "2",
                    "--edsam_m", "2", "--df_steps", "0", "--out", str(out)])
    assert out.exists() and results["baseline"]["images_per_s"] > 0
    assert results["batched_baseline"]["images_per_s"] > 0 and results["batched_baseline"]["batch_size"] == 2
    assert set(results["workloads"]) == {"cdga-pg@320", "cdga-pg@256", "edsam@256", "latent-prior@256"}
    for row in results["workloads"].values():
        assert row["images_per_s"] > 0 and row["ratio_to_baseline"] > 0 and row["tflops"] > 0
        assert abs(row["ratio_to_batched_baseline"] * results["batched_baseline"]["images_per_s"]
                   - row["images_per_s"]) < 1e-6 * row["images_per_s"]
        assert row["unet_gflop"] > 0


def test_flop_accounting():
    flops = {"unet": 10.0, "encode": 3.0, "decode": 5.0}
    cfg = SimpleNamespace(guidance=7.5, steps=50, strength=0.75, num_samples=10, mix_fraction=0.8)
    assert per_image_flops("cdga-pg", cfg, flops) == 2 * 37 * 10 + 3 + 5
    cfg.guidance, cfg.steps = 1.0, 10
    assert per_image_flops("edsam", cfg, flops) == (10 * 10 + 3) / 10 + 10 * 10 + 5


def test_the_domainfusion_step_timing_holds_the_refreshes_at_the_registrys_frequency(tiny_checkpoint):
    """The benchmark timed DomainFusion's steps 2 to 6 with a refresh every 10 steps: no refresh in the window, so
    about 30 times too little on the papers' datasets, where the registry refreshes every step. Its window is now
    whole refresh periods at the registry's frequency: after the same two warm-up steps, it holds one refresh per
    period."""
    import pytest

    from conftest import HAVE_DOMAINBED
    if not HAVE_DOMAINBED:
        pytest.skip("DomainBed is not importable")
    from domainbed import hparams_registry

    from offline_generation.throughput import domainbed_step, refresh_window, timed_steps
    assert hparams_registry.default_hparams("DomainFusion", "PACS")["refresh_every"] == 1
    args = SimpleNamespace(small=True, model_dir=tiny_checkpoint, dtype="float32", refresh_every=None)
    model, minibatches, hp = domainbed_step("DomainFusion", args, torch.device("cpu"), dict(img2img_steps=2))
    assert hp["refresh_every"] == hparams_registry.default_hparams("DomainFusion", "Debug28")["refresh_every"] > 2
    window = refresh_window(hp, 2)
    assert window == hp["refresh_every"] and refresh_window(hp, hp["refresh_every"] + 1) == 2 * window
    for _ in range(2):  # the benchmark's warm-up
        model.update(minibatches)
    _, refreshed = timed_steps(model, minibatches, window, torch.device("cpu"))
    assert refreshed == 1
