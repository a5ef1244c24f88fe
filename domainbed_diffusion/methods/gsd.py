"""Gradient Score Distillation (DomainFusion, Eq. 3-4): diffusion gradients into a discriminative model.

For a real image ``x0`` with label ``y0``, ``x = p_theta(y0 | x0) * x0`` (the image in the VAE's [-1, 1] input
range, scaled by the classifier's confidence); ``x`` is encoded, noised at a random ``t`` and denoised by the
frozen UNet conditioned on the class prompt. The gradient ``w(t) (eps_hat - eps)`` is pushed through the VAE
encoder and ``p_theta`` to theta with the UNet Jacobian omitted (as in score distillation sampling): the
surrogate ``sum(stopgrad(w(t) (eps_hat - eps)) * z) / B`` has exactly that gradient. ``x0`` scaled in the VAE
input range (not [0, 1]) is our reading of "the element-wise product of x0 with the confidence score".

All of theta's gradient passes through the scalar ``p`` of each image, so ``dL/dp_i`` is one directional
derivative of the encoder along ``x0_i``: ``method="jvp"`` gets it with forward-mode AD (no encoder activations
kept for a backward pass), ``method="autograd"`` backpropagates through the encoder; both give the same gradient.
"""
import torch


def weight(alphas_cumprod_t, kind="sds"):
    """``w(t)``: ``1 - alpha_bar_t`` as in score distillation sampling ("sds"), or 1 ("uniform")."""
    if kind == "sds":
        return 1.0 - alphas_cumprod_t
    if kind == "uniform":
        return torch.ones_like(alphas_cumprod_t)
    raise ValueError(f"unknown GSD weighting {kind!r}: use 'sds' or 'uniform'")


def sample_timesteps(n, t_min, t_max, num_train_timesteps, generator=None, device="cpu"):
    """Uniform integer timesteps in ``[t_min, t_max]`` (fractions of the training schedule)."""
    lo, hi = int(t_min * num_train_timesteps), max(int(t_max * num_train_timesteps), int(t_min * num_train_timesteps) + 1)
    return torch.randint(lo, hi, (n,), generator=generator).to(device)


def surrogate(latents, residual):
    """The loss whose gradient w.r.t. ``latents`` is ``residual / B``, with ``residual = w(t) (eps_hat - eps)``
    treated as a constant (the UNet Jacobian omitted)."""
    return (residual.detach().float() * latents.float()).sum() / len(latents)


def _predict(model, noisy, t, cond, uncond, guidance_scale):
    """The UNet's noise prediction with one timestep per sample, in one batched call."""
    if uncond is None or guidance_scale <= 1.0:
        return model.unet(noisy, t, encoder_hidden_states=cond).sample
    eps_u, eps_c = model.unet(torch.cat([noisy, noisy]), torch.cat([t, t]),
                              encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
    return eps_u + guidance_scale * (eps_c - eps_u)


@torch.no_grad()
def score_residual(model, latents, cond, t, noise, kind="sds", guidance_scale=1.0, uncond=None):
    """``w(t) (eps_hat - eps)`` at clean ``latents`` noised with ``noise`` at ``t``; no gradients anywhere."""
    noisy = model.scheduler.add_noise(latents.detach(), noise, t)
    eps_hat = _predict(model, noisy, t, cond, uncond, guidance_scale)
    w = weight(model.scheduler.alphas_cumprod.to(latents.device)[t], kind).to(latents.dtype)
    return w.view(-1, *([1] * (latents.dim() - 1))) * (eps_hat - noise)


def gsd_loss(model, images, confidence, prompts, t, noise, kind="sds", guidance_scale=1.0, method="jvp",
             chunk=None):
    """GSD surrogate for ``images`` in [0, 1] (B, 3, H, W) and the classifier's ``confidence`` (B,) in its label.

    ``t`` (B,) and ``noise`` (B, *latent shape) are the forward-process draws. Gradients reach only
    ``confidence`` (and through it the classifier); the diffusion weights never get one. The encoder's derivative
    and the UNet run on at most ``chunk`` images at a time (None: all at once), which bounds their memory; the
    diffusion model runs in its own dtype even inside an autocast region (forward-mode tangents would stay
    float32 against autocast's half-precision weights).
    """
    with torch.autocast(model.device.type, enabled=False):
        size = chunk or len(images)
        parts = [_gsd_terms(model, images[s:s + size], confidence[s:s + size], prompts[s:s + size], t[s:s + size],
                            noise[s:s + size], kind, guidance_scale, method) for s in range(0, len(images), size)]
    return sum(parts) / len(images)


def _gsd_terms(model, images, confidence, prompts, t, noise, kind, guidance_scale, method):
    """The surrogate's sum over these images (not yet divided by the batch size)."""
    vae = model.vae_for_derivatives()
    x0 = (images.to(vae.device, vae.dtype) * 2 - 1).detach()
    cond = model.encode_prompts(prompts)
    uncond = model.encode_prompts([""] * len(prompts)) if guidance_scale > 1.0 else None
    p = confidence.to(x0.dtype)

    def encode(scale):
        return vae.encode(scale.view(-1, 1, 1, 1) * x0).latent_dist.mean * model.latent_scale

    if method == "autograd":
        latents = encode(p)
        residual = score_residual(model, latents.to(model.dtype), cond, t, noise, kind, guidance_scale, uncond)
        return (residual.detach().float() * latents.float()).sum()  # ``surrogate`` times this chunk's size
    if method != "jvp":
        raise ValueError(f"unknown GSD method {method!r}: use 'jvp' or 'autograd'")
    # fused attention kernels have no forward-mode derivative: the math kernel is used for this one pass
    with torch.no_grad(), torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
        latents, dlatents_dp = torch.func.jvp(encode, (p.detach(),), (torch.ones_like(p),))
    residual = score_residual(model, latents.to(model.dtype), cond, t, noise, kind, guidance_scale, uncond)
    dloss_dp = (residual.float() * dlatents_dp.float()).flatten(1).sum(1)  # per image, exact
    return (dloss_dp.detach() * p.float()).sum()
