"""Risks of the first GPU run, each reproduced on the CPU: what CUDA graphs, fake CUDA tensors, autocast, an fp16-only
checkpoint, torchrun's ranks and the cluster launchers would do to the code, and the mended behaviour."""
import os
from types import SimpleNamespace

import torch

from domainbed_diffusion.diffusion.pipeline import FixedBatchUNet


def static_buffer_unet(unet):
    """A stand-in for a CUDA-graph-compiled UNet: every call returns the same output buffer, overwritten by the
    next call (what ``torch.compile(mode="max-autotune")`` replays do on CUDA)."""
    buffer = {}

    def compiled(sample, timestep, encoder_hidden_states, **kwargs):
        out = unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **kwargs).sample
        buffer.setdefault("out", torch.empty_like(out)).copy_(out)
        return SimpleNamespace(sample=buffer["out"])
    return compiled


def test_a_compiled_unet_reusing_its_output_buffer_keeps_every_slice(tiny_model):
    """Guidance doubles the batch, so the compiled UNet runs in two slices; with one output buffer per graph the
    second slice overwrote the first's, and the unconditional half came back equal to the conditional half."""
    unet = tiny_model.unet
    fixed = FixedBatchUNet(unet, size=3)
    fixed.compiled = static_buffer_unet(unet)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(3, unet.config.in_channels, 8, 8, generator=g)
    cond = tiny_model.encode_prompts(["a cat"] * 3)
    uncond = tiny_model.encode_prompts([""] * 3)
    with torch.no_grad():
        eager = tiny_model.predict_noise(latents, 500, cond, uncond, guidance_scale=3.0)
        tiny_model.unet = fixed
        try:
            compiled = tiny_model.predict_noise(latents, 500, cond, uncond, guidance_scale=3.0)
            both = fixed(torch.cat([latents, latents]), 500, torch.cat([uncond, cond])).sample
        finally:
            tiny_model.unet = unet
    assert not torch.allclose(both[:3], both[3:])  # the unconditional half is its own
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_a_checkpoint_with_only_the_fp16_variant_loads_and_one_without_weights_is_named(tiny_checkpoint, tmp_path):
    """Caches made with ``variant="fp16"`` hold ``diffusion_pytorch_model.fp16.safetensors``: loading without
    ``variant=`` raised a raw OSError on every rank; it now loads those, and a folder without weights is an error
    naming the component's folder."""
    import shutil

    import pytest

    from domainbed_diffusion.diffusion import LatentDiffusion, loading
    folder = tmp_path / "fp16-only"
    shutil.copytree(tiny_checkpoint, folder)
    renamed = []
    for component in ("unet", "vae", "text_encoder"):
        for path in (folder / component).iterdir():
            if path.suffix in (".safetensors", ".bin"):
                path.rename(path.with_name(f"{path.stem}.fp16{path.suffix}"))
                renamed.append(component)
    assert sorted(renamed) == ["text_encoder", "unet", "vae"]
    plain = LatentDiffusion.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    variant = LatentDiffusion.from_pretrained(str(folder), device="cpu", dtype="float32")
    for a, b in zip(plain.unet.parameters(), variant.unet.parameters()):
        assert torch.equal(a, b)
    assert loading.weights_variant(str(folder), "unet") == "fp16"
    for path in (folder / "vae").iterdir():
        if path.suffix == ".safetensors":
            path.unlink()
    with pytest.raises(loading.CheckpointError, match=r"vae holds no weights"):
        LatentDiffusion.from_pretrained(str(folder), device="cpu")


def recording_batch_sizes(model):
    """Record the rows of every VAE encode and UNet call of ``model`` (a peak-memory proxy: activations scale with
    them); returns the list and a function that undoes the recording."""
    sizes = {"encode": [], "unet": []}
    vae, unet = model.vae_for_derivatives(), model.unet
    encode, forward = vae.encode, unet.forward

    def counted_encode(x, *a, **k):
        sizes["encode"].append(len(x))
        return encode(x, *a, **k)

    def counted_forward(x, *a, **k):
        sizes["unet"].append(len(x))
        return forward(x, *a, **k)
    vae.encode, unet.forward = counted_encode, counted_forward

    def undo():
        del vae.encode, unet.forward
    return sizes, undo


def gsd_inputs(model, n=5):
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, 3, 32, 32, generator=g)
    logits = torch.randn(n, 4, generator=g).requires_grad_()
    t = torch.randint(50, 950, (n,), generator=g)
    side = 32 // model.vae_scale_factor
    noise = torch.randn(n, model.vae.config.latent_channels, side, side, generator=g)
    return images, logits, t, noise


def test_gsd_derivative_runs_in_chunks_with_the_same_loss_and_gradient(tiny_model):
    """GSD's forward-mode derivative through the float32 VAE was one call on the whole batch (about 0.6 GiB per
    320-px image: 28 GiB for PACS's 48): with ``chunk`` it never sees more than that many images, and gives the
    same loss and gradient."""
    from domainbed_diffusion.methods import gsd
    images, logits, t, noise = gsd_inputs(tiny_model)
    results = {}
    for chunk in (None, 2):
        sizes, undo = recording_batch_sizes(tiny_model)
        try:
            logits.grad = None
            loss = gsd.gsd_loss(tiny_model, images, logits.softmax(1)[:, 1], ["a cat"] * 5, t, noise, chunk=chunk)
            loss.backward()
        finally:
            undo()
        results[chunk] = (loss.detach(), logits.grad.clone(), sizes)
    assert results[None][2] == {"encode": [5], "unet": [5]}
    assert results[2][2] == {"encode": [2, 2, 1], "unet": [2, 2, 1]}
    assert torch.allclose(results[2][0], results[None][0], rtol=1e-5, atol=1e-7)
    assert torch.allclose(results[2][1], results[None][1], rtol=1e-4, atol=1e-8)


def test_gsd_inside_an_autocast_region_runs_the_model_in_its_own_dtype(tiny_checkpoint):
    """Under autocast the tangents of GSD's forward-mode derivative stayed float32 while autocast cast the weights
    to bfloat16: "Input type (FloatTensor) and weight type (BFloat16) should be the same". The diffusion model now
    runs outside autocast, in its own dtype, and gives float32's gradient within bfloat16's precision."""
    from domainbed_diffusion.diffusion import LatentDiffusion
    from domainbed_diffusion.methods import gsd
    grads = {}
    for dtype in ("float32", "bfloat16"):
        model = LatentDiffusion.from_pretrained(tiny_checkpoint, device="cpu", dtype=dtype)
        images, logits, t, noise = gsd_inputs(model)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = gsd.gsd_loss(model, images, logits.softmax(1)[:, 1], ["a cat"] * 5, t, noise.to(model.dtype))
        loss.backward()
        assert torch.isfinite(loss)
        grads[dtype] = logits.grad
    scale = grads["float32"].abs().max()
    assert (grads["bfloat16"] - grads["float32"]).abs().max() <= 0.1 * scale


class Pool:
    """The parts of DomainFusion's synthetic pool a refresh uses, in memory."""

    def __init__(self, n, mapping):
        self.labels = [k % 2 for k in range(n)]
        self.mapping = mapping
        self.written = {}

    def version(self, i):
        return 0

    def write(self, indices, pixels):
        self.written.update(zip(indices, pixels))


def test_the_refresh_runs_in_chunks_and_changes_no_image(tiny_model):
    """The refresh's img2img ran on every candidate of every drawn image at once; it now takes ``diffusion_chunk``
    images at a time, and since each image's seeds are its own, every refreshed image is the same."""
    from domainbed_diffusion.methods import domainfusion
    from domainbed_diffusion.training.inputs import PixelMapping
    torch.manual_seed(0)
    featurizer = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 6))
    classifier = torch.nn.Linear(6, 2)
    network = torch.nn.Sequential(featurizer, classifier)
    images = [(torch.rand(3, 32, 32) * 255).to(torch.uint8) for _ in range(5)]
    hparams = dict(n_candidates=2, img2img_strength=0.6, img2img_steps=4, guidance_scale=2.0, sampling_strategy=True,
                   content_lambda=0.5)
    made = {}
    for chunk in (None, 2):
        pool = Pool(5, PixelMapping(None, (3, 8, 8)))
        sizes, undo = recording_batch_sizes(tiny_model)
        try:
            domainfusion.refresh(pool, list(range(5)), images, tiny_model, network, featurizer, classifier,
                                 ["a cat", "a dog"], dict(hparams, diffusion_chunk=chunk), base_seed=3)
        finally:
            undo()
        made[chunk] = (pool.written, sizes)
    # guidance doubles each call: 2 candidates x 5 images x 2 at once, or at most 2 x 2 x 2
    assert set(made[None][1]["unet"]) == {20} and max(made[2][1]["unet"]) == 8
    for i in range(5):
        assert torch.allclose(made[2][0][i], made[None][0][i], atol=1e-5)


def test_domainbed_multi_gpu_and_the_slurm_array_run_the_interpreter_that_has_the_plugin(tmp_path, monkeypatch):
    """DomainBed's ``multi_gpu`` launcher and the plugin's ``slurm`` array ran the bare ``python`` first on PATH
    (on a node, often one without the plugin or torch); both now run this interpreter."""
    import sys

    import pytest

    from conftest import HAVE_DOMAINBED
    from domainbed_diffusion.launchers import slurm
    monkeypatch.chdir(tmp_path)
    script = slurm.write_slurm_array(["python -m domainbed.scripts.train --seed 1"], slurm.SlurmConfig(dir="jobs"))
    commands = open(script.replace(".sbatch", ".commands")).read().splitlines()
    assert commands == [f"{sys.executable} -m domainbed.scripts.train --seed 1"]
    if not HAVE_DOMAINBED:
        pytest.skip("DomainBed is not importable: its multi_gpu launcher is not checked")
    import domainbed_diffusion
    domainbed_diffusion.register()
    from domainbed import command_launchers
    started = []

    class Proc:
        def __init__(self, command, shell):
            started.append(command)

        def poll(self):
            return 0

        def wait(self):
            return 0
    monkeypatch.setattr(command_launchers.subprocess, "Popen", Proc)
    monkeypatch.setattr(command_launchers.time, "sleep", lambda s: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    command_launchers.REGISTRY["multi_gpu"](["python -m domainbed.scripts.train --seed 1"])
    assert started == [f"CUDA_VISIBLE_DEVICES=0 {sys.executable} -m domainbed.scripts.train --seed 1"]


def test_a_slow_partial_index_build_cannot_delete_the_complete_one(tmp_path, monkeypatch):
    """Every torchrun rank built the index as it finished, then deleted every other index: a rank that started its
    build on manifests others were still writing, and ended after the last rank's complete build, deleted the
    complete index. An index of longer manifests is now kept."""
    from domainbed_diffusion.data import index as idx
    from test_synthetic_index import make_records, write
    root = str(tmp_path / "Tiny")
    records = make_records()
    write(root, records[:6])
    partial = idx.signature(idx.manifest_paths(root, "cdga-ig"))  # what the slow rank saw when it started
    write(root, records[6:])
    complete = idx.build(root, "cdga-ig")  # the last rank's build, on complete manifests
    monkeypatch.setattr(idx, "signature", lambda paths: partial)  # the slow rank ends its build now
    stale = idx.build(root, "cdga-ig")
    assert stale != complete and os.path.isfile(os.path.join(complete, "meta.json"))
    monkeypatch.undo()
    assert idx.open_index(root, "cdga-ig").folder == complete and len(idx.open_index(root, "cdga-ig")) == len(records)
    idx.build(root, "cdga-ig")  # a later build on the same complete manifests removes the stale one
    assert sorted(n for n in os.listdir(root) if n.startswith("index.")) == [os.path.basename(complete)]


def test_concurrent_shards_leave_one_complete_index_built_once(tiny_dataset, tmp_path):
    """Two shards of one job, as torchrun starts them, on the embedded model: the index is built once, by the
    shard that finishes last, and matches the complete manifests."""
    import subprocess
    import sys

    from conftest import subprocess_env
    from domainbed_diffusion.data import index as idx
    out = tmp_path / "out"
    base = [sys.executable, "-m", "offline_generation", "--dataset", "Tiny", "--data_dir", tiny_dataset,
            "--methods", "edsam", "--edsam.num_samples", "1", "--synthetic_root", str(out), "--batch_size", "2",
            "--steps", "2", "--max_per_class", "2"]
    procs = [subprocess.Popen(base + ["--num_shards", "2", "--shard_id", str(k)], env=subprocess_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for k in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    root = str(out / "Tiny")
    assert sum("the index is built by the last shard to finish" in o for o in outputs) == 1, outputs
    folders = [n for n in os.listdir(root) if n.startswith("index.edsam.")]
    digest, _ = idx.signature(idx.manifest_paths(root, "edsam"))
    assert folders == [f"index.edsam.{digest}"]


# -- fake CUDA: the code paths run on CUDA devices that exist only as metadata (FakeTensorMode) ------------------
def fake_cuda(module, mode):
    """``module``'s parameters and buffers as fake CUDA tensors of ``mode`` (shapes and dtypes, no data)."""
    with mode:
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None:
                    sub._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device="cuda"),
                                                               requires_grad=p.requires_grad)
            for name, b in list(sub._buffers.items()):
                if b is not None:
                    sub._buffers[name] = torch.empty(b.shape, dtype=b.dtype, device="cuda")
    return module


def schedulers_without_value_branches(monkeypatch):
    """DDIM's step branches on a timestep's value (``prev_timestep >= 0``), which fake tensors do not have: a step
    with the same tensor arithmetic on every argument (so any device mismatch among them still raises)."""
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    def step(self, model_output, timestep, sample, eta=0.0, variance_noise=None, **kwargs):
        alpha = self.alphas_cumprod.to(sample.device)[torch.as_tensor(timestep).reshape(1)]
        prev = sample * alpha.sqrt() - model_output * (1 - alpha).sqrt()
        return SimpleNamespace(prev_sample=prev if variance_noise is None else prev + eta * variance_noise)
    monkeypatch.setattr(DDIMScheduler, "step", step)
    monkeypatch.setattr(DDIMInverseScheduler, "step", step)


def test_every_method_gsd_and_the_refresh_on_a_fake_cuda_device(tiny_checkpoint, monkeypatch):
    """Each method's math, GSD's derivative and DomainFusion's refresh with the diffusion model on a (fake) CUDA
    device: a tensor left on the CPU where it meets a CUDA one raises, as it would on the first GPU run, and so
    does an op that reads a GPU value back to the host mid-batch (a data-dependent shape). Latent-prior's
    rejection decides on the host by design (one accept/reject per candidate group): its decisions are not run
    here, its DDIM inversion and denoising are (the same code as ED-SAM's)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from domainbed_diffusion.diffusion import LatentDiffusion
    from domainbed_diffusion.methods import cdga, domainfusion, edsam, gsd
    from domainbed_diffusion.training.inputs import PixelMapping
    schedulers_without_value_branches(monkeypatch)
    model = LatentDiffusion.from_pretrained(tiny_checkpoint, device="cpu", dtype="float32")
    mode = FakeTensorMode(allow_non_fake_inputs=True)  # real CPU tensors may enter; CPU meets CUDA raises
    for module in (model.unet, model.vae, model.text_encoder):
        fake_cuda(module, mode)
    assert model.device.type == "cuda"
    featurizer = fake_cuda(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 6)), mode)
    classifier = fake_cuda(torch.nn.Linear(6, 2), mode)
    network = torch.nn.Sequential(featurizer, classifier)
    pool = Pool(3, PixelMapping(None, (3, 8, 8)))
    with mode:
        pixels = torch.rand(3, 3, 32, 32)  # sources are read on the CPU, as the generator reads them
        prompts, seeds = ["a cat", "a dog", "a cat"], [1, 2, 3]
        z = model.encode_images(pixels.to(model.device))
        outputs = dict(
            cdga_pg=cdga.prompt_guided(model, z, prompts, seeds, 0.6, 4, 3.0),
            cdga_ig=cdga.image_guided(model, pixels.to(model.device), pixels.flip(0).to(model.device), prompts,
                                      seeds, 0.6, 4, 3.0),
            edsam=edsam.generate(model, z, prompts, [[s, s + 10] for s in seeds], 0.5, 4, 1.0)[0],
            latent_prior_paths=model.denoise(model.invert(z, prompts, 4, 3), prompts, 4, 3),
        )
        for name, out in outputs.items():
            assert out.device.type == "cuda", name
        logits = torch.randn(3, 2, device="cuda", requires_grad=True)
        t = gsd.sample_timesteps(3, 0.02, 0.98, 1000, torch.Generator().manual_seed(0), model.device)
        noise = torch.randn(3, *z.shape[1:], generator=torch.Generator().manual_seed(0)).to(model.device)
        loss = gsd.gsd_loss(model, pixels.to(model.device), logits.softmax(1)[:, 1], prompts, t, noise, chunk=2)
        # the forward-mode derivative ran on the device; autograd's backward engine needs a real CUDA runtime
        assert loss.device.type == "cuda" and loss.requires_grad
        images = [(torch.rand(3, 32, 32) * 255).to(torch.uint8) for _ in range(3)]
        domainfusion.refresh(pool, [0, 1, 2], images, model, network, featurizer, classifier, ["a cat", "a dog"],
                             dict(n_candidates=2, img2img_strength=0.6, img2img_steps=4, guidance_scale=2.0,
                                  sampling_strategy=True, content_lambda=0.5, diffusion_chunk=2), base_seed=3)
        assert sorted(pool.written) == [0, 1, 2] and all(v.device.type == "cuda" for v in pool.written.values())


def test_a_spill_folder_without_room_for_the_refreshed_images_is_named_before_the_run(tmp_path, monkeypatch, capsys):
    """DomainFusion keeps its refreshed images in a sparse file (307 KB each at 320 px): on DomainNet up to tens of
    GB per run, in the run's folder unless the hparam spill_dir says where. A folder without that room is named
    at the start, with the size and the hparam, instead of a failed write hours in."""
    import shutil
    from collections import namedtuple

    from domainbed_diffusion.methods.domainfusion import SpillStore, SyntheticPool
    pool = SyntheticPool.__new__(SyntheticPool)
    pool.entries = [(0, k) for k in range(1000)]
    pool.store = SpillStore(1000, (3, 320, 320), str(tmp_path))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 12, 0, 10 ** 9))
    assert pool.check_disk(500) == 500 * 3 * 320 * 320 and "WARNING" not in capsys.readouterr().err
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 ** 12, 0, 10 ** 8))
    assert pool.check_disk(5000) == 1000 * 3 * 320 * 320  # never more than one slot per image
    err = capsys.readouterr().err
    assert "WARNING" in err and str(tmp_path) in err and "spill_dir" in err and "0.3 GiB" in err


def test_torchrun_ranks_get_their_own_gpu_and_bfloat16_needs_a_gpu_that_has_it(monkeypatch):
    """Under torchrun ``--device cuda`` put every rank on cuda:0 (only ``auto`` was mapped to LOCAL_RANK); and
    bfloat16 on a GPU without it (a V100) failed inside the first kernel. Both are settled before any work."""
    import pytest

    from domainbed_diffusion.diffusion import loading
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert loading.resolve_device("auto") == loading.resolve_device("cuda") == torch.device("cuda", 3)
    assert loading.resolve_device("cuda:1") == torch.device("cuda", 1)  # an explicit index is kept
    monkeypatch.delenv("LOCAL_RANK")
    assert loading.resolve_device("cuda") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100-SXM2-32GB")
    with pytest.raises(ValueError, match="V100.*no bfloat16 support.*--dtype float16"):
        loading.resolve_dtype("bfloat16", "cuda")
    assert loading.resolve_dtype("float16", "cuda") == torch.float16


def test_the_first_gpu_run_script_runs_end_to_end_on_the_cpu(tiny_checkpoint, tmp_path):
    """``sweeps/first_gpu_run.py`` on the CPU with the tiny checkpoint: every method and DomainFusion's step run
    and are judged (correctness only: no peak is known for a CPU), and the rows are written."""
    import json
    import subprocess
    import sys

    from conftest import REPO, subprocess_env
    out = tmp_path / "first.json"
    result = subprocess.run([sys.executable, os.path.join(REPO, "sweeps", "first_gpu_run.py"), "--model",
                             tiny_checkpoint, "--device", "cpu", "--small", "--images", "2", "--batch_size", "2",
                             "--steps", "2", "--out", str(out)], env=subprocess_env(), capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    from domainbed_diffusion import catalogue
    from conftest import HAVE_DOMAINBED
    assert [r["method"] for r in rows] == [*catalogue.methods(), "DomainFusion"]
    assert all(r["verdict"] == "go" for r in rows[:-1]) and all(r["images_per_s"] > 0 for r in rows[:-1])
    assert rows[-1]["verdict"] == ("go" if HAVE_DOMAINBED else "not run")
    assert "rows go" in result.stdout
