"""Train the embedded tiny latent diffusion models on DigitStyles' pre-training pool (CPU, deterministic).

``train`` builds the all-styles model (the pool in all eight styles, the benchmark's four included; kept as an
ablation). ``train_held_out`` builds one model per benchmark style that never saw it: a base on the four
pool-only styles, then for each benchmark style a short fine-tune on the pool in the other seven. Each stage as
Stable Diffusion was built: an AutoencoderKL on the pool's images, then a text-conditioned
UNet2DConditionModel and CLIP text encoder on the autoencoder's latents with prompts naming digit and style
("a seven, neon glow on a dark background"; 15% class-only, 10% empty for classifier-free guidance). The result
is saved as a Stable Diffusion checkpoint in diffusers format, in half precision to keep the repository small.

    python -m offline_generation train-embedded --data_dir ./data              # the four held-out models
    python -m offline_generation train-embedded --data_dir ./data --all_styles # the all-styles model
"""
import copy
import math
import os
import re
import json
import shutil
import time

import torch
import torch.nn.functional as F

from domainbed_diffusion.benchmark import digitstyles
from domainbed_diffusion.diffusion import tiny
from domainbed_diffusion.methods.cdga import DOMAIN_DESCRIPTIONS
from domainbed_diffusion.benchmark.shipped import EMBEDDED_MODEL_PATH, FOLDER, MODEL_CARD, held_out_model_path


def vocabulary():
    """Words the tokenizer keeps whole: our prompts and every dataset's default domain descriptions."""
    texts = [digitstyles.prompt(c, s) for c in digitstyles.CLASS_NAMES for s in digitstyles.POOL_STYLES]
    texts += [d for per_dataset in DOMAIN_DESCRIPTIONS.values() for d in per_dataset.values()]
    texts += ["a photo of a", "an image of the"]
    return sorted({w for t in texts for w in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", t.lower())})


def _cosine_lr(step, total, warmup):
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


@torch.no_grad()
def _ema_update(ema, model, decay):
    for e, p in zip(ema.parameters(), model.parameters()):
        e.mul_(decay).add_(p.detach(), alpha=1 - decay)


class Resumable:
    """A training stage's state (modules, optimizer, schedule, random generator, step) saved every ``every`` steps
    to ``path`` and restored from it, so a long stage spans interruptions and ends with the same bytes."""

    def __init__(self, path, every, **parts):
        self.path, self.every, self.parts, self.start = path, every, parts, 0
        if path and os.path.isfile(path):
            state = torch.load(path, weights_only=False)
            for name, part in parts.items():
                if isinstance(part, torch.Generator):
                    part.set_state(state[name])
                else:
                    part.load_state_dict(state[name])
            self.start = state["step"]
            print(f"resumed {path} at step {self.start}", flush=True)

    def after(self, step):
        """Save after ``step`` (0-based) when it ends a period."""
        if self.path and (step + 1) % self.every == 0:
            state = {n: (p.get_state() if isinstance(p, torch.Generator) else p.state_dict())
                     for n, p in self.parts.items()}
            torch.save(dict(state, step=step + 1), self.path + ".tmp")
            os.replace(self.path + ".tmp", self.path)


def train_vae(vae, images, steps, batch_size, lr, kl_weight=1e-6, log_every=200, seed=0, state=None, every=250,
              stop_at=None):
    """``state``: a file that makes the stage resumable (``Resumable``); ``stop_at``: return after that many
    steps, state saved, to spread a build over several sessions."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps, 200))
    resume = Resumable(state, every, vae=vae, opt=opt, sched=sched, g=g)
    vae.train()
    start = time.time()
    for step in range(resume.start, stop_at or steps):
        x = images[torch.randint(len(images), (batch_size,), generator=g)] * 2 - 1
        posterior = vae.encode(x).latent_dist
        rec = vae.decode(posterior.sample(generator=g)).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * posterior.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        resume.after(step)
        if step % log_every == 0 or step == steps - 1:
            print(f"[vae] step {step}/{steps} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    vae.eval()
    return vae


@torch.no_grad()
def _means(vae, images, batch_size=256):
    """The autoencoder's posterior means of ``images`` (pixels in [0, 1])."""
    return torch.cat([vae.encode(x * 2 - 1).latent_dist.mean for x in images.split(batch_size)])


def encode_pool(vae, images):
    """Scaled latent means of ``images``; the scaling factor (unit std) is fitted on them and stored in ``vae``."""
    means = _means(vae, images)
    scaling = 1.0 / means.std().item()
    vae.register_to_config(scaling_factor=scaling)
    return means * scaling


def prompt_ids(tokenizer, labels):
    """Token ids (N, 3, L) of each image's full, class-only and empty prompt."""
    texts = [[digitstyles.prompt(c, s), digitstyles.prompt(c), ""] for c, s in labels]
    flat = [t for triple in texts for t in triple]
    ids = tokenizer(flat, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return ids.view(len(labels), 3, -1)


def train_denoiser(unet, text_encoder, scheduler, latents, ids, steps, batch_size, lr, log_every=200, seed=0,
                   ema_decay=0.999, warmup=200, state=None, every=250, stop_at=None):
    g = torch.Generator().manual_seed(seed)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_lr(s, steps, warmup))
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    resume = Resumable(state, every, unet=unet, text_encoder=text_encoder, ema_unet=ema_unet, ema_text=ema_text,
                       opt=opt, sched=sched, g=g)
    unet.train()
    text_encoder.train()
    start = time.time()
    for step in range(resume.start, stop_at or steps):
        idx = torch.randint(len(latents), (batch_size,), generator=g)
        r = torch.rand(batch_size, generator=g)
        variant = torch.where(r < 0.10, 2, torch.where(r < 0.25, 1, 0))  # empty / class-only / full prompt
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(scheduler.config.num_train_timesteps, (batch_size,), generator=g)
        zt = scheduler.add_noise(z0, noise, t)
        cond = text_encoder(ids[idx, variant])[0]
        loss = F.mse_loss(unet(zt, t, encoder_hidden_states=cond).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        _ema_update(ema_unet, unet, ema_decay)
        _ema_update(ema_text, text_encoder, ema_decay)
        resume.after(step)
        if step % log_every == 0 or step == steps - 1:
            print(f"[unet] step {step}/{steps} loss {loss.item():.4f} {time.time() - start:.0f}s", flush=True)
    return ema_unet, ema_text


def train(data_dir, out=EMBEDDED_MODEL_PATH, vae_steps=2000, unet_steps=8000, vae_batch=32, unet_batch=64, seed=0,
          threads=None):
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    digitstyles.prepare(data_dir)
    images, labels = digitstyles.load_pool(data_dir)
    print(f"pool: {len(images)} images, {len({s for _, s in labels})} styles", flush=True)
    work = out + ".partial"
    components = tiny.build_components(vocabulary(), work, seed=seed)
    vae = train_vae(components["vae"], images, vae_steps, vae_batch, lr=1e-3, seed=seed)
    latents = encode_pool(vae, images)
    ids = prompt_ids(components["tokenizer"], labels)
    unet, text_encoder = train_denoiser(components["unet"], components["text_encoder"], components["scheduler"],
                                        latents, ids, unet_steps, unet_batch, lr=5e-4, seed=seed)
    components.update(vae=vae, unet=unet, text_encoder=text_encoder)
    tiny.save_checkpoint(components, work, half=True)
    write_card(work, digitstyles.POOL_STYLES, dict(vae_steps=vae_steps, unet_steps=unet_steps, seed=seed))
    _replace(work, out)
    return out


def write_card(folder, styles, recipe):
    """The model card the synthetic-data reader checks: the DigitStyles styles (envs) the model was trained on."""
    with open(os.path.join(folder, MODEL_CARD), "w") as f:
        json.dump({"dataset": digitstyles.DATASET, "trained_on_envs": sorted(styles), "recipe": recipe}, f,
                  indent=1, sort_keys=True)
        f.write("\n")


def _replace(work, out):
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(work, out)
    print(f"saved {out}", flush=True)


def train_held_out(data_dir, folder=FOLDER, held_out=tuple(digitstyles.DOMAINS), vae_steps=1500, base_steps=8000,
                   finetune_steps=700, vae_batch=32, unet_batch=64, seed=0, threads=None, work_dir=None):
    """One model per style in ``held_out``, none of which saw that style; the shared stages are cached.

    The autoencoder and a base denoiser are trained on the four pool-only styles (no benchmark style), then each
    model fine-tunes the base on the pool in every style but its held-out one. The base is saved in float32 under
    ``work_dir`` (default ``<data_dir>/embedded-base``) and every fine-tune starts from that file; the base's two
    stages save their state every 250 steps beside it. So an interrupted build resumes with the same bytes. The
    base gets the all-styles model's steps (1500 and 8000): with 2500 denoiser steps it drew no recognisable digit.
    """
    if threads:
        torch.set_num_threads(threads)
    digitstyles.prepare(data_dir)
    images, labels = digitstyles.load_pool(data_dir)
    styles = [s for _, s in labels]
    base_dir = work_dir or os.path.join(data_dir, "embedded-base")
    if not os.path.isfile(os.path.join(base_dir, "model_index.json")):
        torch.manual_seed(seed)
        base = torch.tensor([s in digitstyles.PRETRAIN_STYLES for s in styles])
        print(f"base: {int(base.sum())} pool images in {', '.join(digitstyles.PRETRAIN_STYLES)}", flush=True)
        components = tiny.build_components(vocabulary(), base_dir + ".partial", seed=seed)
        vae = train_vae(components["vae"], images[base], vae_steps, vae_batch, lr=1e-3, seed=seed,
                        state=base_dir + ".vae.state")
        latents = encode_pool(vae, images[base])
        ids = prompt_ids(components["tokenizer"], [l for l, b in zip(labels, base) if b])
        unet, text_encoder = train_denoiser(components["unet"], components["text_encoder"],
                                            components["scheduler"], latents, ids, base_steps, unet_batch,
                                            lr=5e-4, seed=seed, state=base_dir + ".unet.state")
        components.update(vae=vae, unet=unet, text_encoder=text_encoder)
        tiny.save_checkpoint(components, base_dir + ".partial")
        write_card(base_dir + ".partial", digitstyles.PRETRAIN_STYLES,
                   dict(vae_steps=vae_steps, base_steps=base_steps, seed=seed))
        _replace(base_dir + ".partial", base_dir)
        for stage in (".vae.state", ".unet.state"):
            if os.path.isfile(base_dir + stage):  # none when a stage is shorter than its saving period
                os.remove(base_dir + stage)
    from diffusers import StableDiffusionPipeline
    outs = []
    for style in held_out:
        out = held_out_model_path(style, folder)
        keep = [s != style for s in styles]
        torch.manual_seed(seed)
        pipe = StableDiffusionPipeline.from_pretrained(base_dir, safety_checker=None, requires_safety_checker=False)
        for name in ("unet", "vae"):  # diffusers records where it loaded from: a path, which would change the bytes
            getattr(pipe, name).register_to_config(_name_or_path=f"embedded-base/{name}")
        latents = _latents(pipe.vae, images[torch.tensor(keep)])
        ids = prompt_ids(pipe.tokenizer, [l for l, k in zip(labels, keep) if k])
        print(f"without {style}: {len(ids)} pool images in {len(set(styles)) - 1} styles", flush=True)
        # a fine-tune's EMA must forget the base within its few steps: horizon 200 steps, not 1000
        unet, text_encoder = train_denoiser(pipe.unet, pipe.text_encoder, pipe.scheduler, latents, ids,
                                            finetune_steps, unet_batch, lr=5e-4, seed=seed + 1, ema_decay=0.995,
                                            warmup=100)
        components = dict(vae=pipe.vae, unet=unet, text_encoder=text_encoder, tokenizer=pipe.tokenizer,
                          scheduler=pipe.scheduler)
        tiny.save_checkpoint(components, out + ".partial", half=True)
        write_card(out + ".partial", [s for s in digitstyles.POOL_STYLES if s != style],
                   dict(vae_steps=vae_steps, base_steps=base_steps, finetune_steps=finetune_steps, seed=seed))
        _replace(out + ".partial", out)
        outs.append(out)
    return outs


@torch.no_grad()
def _latents(vae, images):
    """Latent means scaled by the autoencoder's own scaling factor."""
    return _means(vae, images) * vae.config.scaling_factor
