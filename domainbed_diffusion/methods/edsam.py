"""ED-SAM's transport transformation (Truong et al., 2024, Eq. 9-10 and Proposition 1).

``z* = (z + e) / sqrt(2)`` with ``e ~ N(alpha * sqrt(2), I)`` and one ``alpha ~ U(-rho, rho)`` per sample. For
``z ~ N(0, I)`` this gives ``z* ~ N(alpha, I)``: mean alpha, unit variance, so each coordinate's 2-Wasserstein
distance to the source is ``|alpha| <= rho`` (the paper's Proposition 1, read per coordinate; Eq. 9's
``N(alpha sqrt 2, I)`` makes the variance come out at exactly 1 after dividing by sqrt 2).
"""
import math

import torch


def sample_alpha(generators, rho):
    """One ``alpha ~ U(-rho, rho)`` per sample, drawn from that sample's generator."""
    return torch.stack([(torch.rand((), generator=g) * 2 - 1) * rho for g in generators])


def transport(z, alpha, noise):
    """``(z + alpha * sqrt(2) + noise) / sqrt(2)``: ``noise`` is standard normal, ``alpha`` one per sample."""
    alpha = alpha.to(device=z.device, dtype=z.dtype).view(-1, *([1] * (z.dim() - 1)))
    return (z + alpha * math.sqrt(2) + noise) / math.sqrt(2)


def gaussian_w2(mean_a, std_a, mean_b, std_b):
    """2-Wasserstein distance between 1-D Gaussians: ``sqrt((m_a - m_b)^2 + (s_a - s_b)^2)``."""
    return math.sqrt((mean_a - mean_b) ** 2 + (std_a - std_b) ** 2)


def generate(model, latents, prompts, seeds, rho, steps, guidance=1.0):
    """ED-SAM images: each of the clean ``latents`` DDIM-inverted once with its prompt, then transported and
    regenerated once per seed in ``seeds[i]`` (M seeds per image). Returns images (sum M, 3, R, R) and alphas."""
    from ..diffusion.pipeline import generators_from_seeds, per_image_noise
    inverted = model.invert(latents, prompts, steps, guidance_scale=1.0)  # guidance breaks inversion
    counts = torch.tensor([len(s) for s in seeds], device=inverted.device)
    # the output size given: without it, repeat_interleave reads the counts back from the GPU (a host sync)
    z = inverted.repeat_interleave(counts, 0, output_size=sum(len(s) for s in seeds))
    generators = generators_from_seeds([s for per_image in seeds for s in per_image])
    alpha = sample_alpha(generators, rho)
    noise = per_image_noise(generators, z.shape[1:], z.device, z.dtype)
    repeated_prompts = [p for p, s in zip(prompts, seeds) for _ in s]
    out = model.denoise(transport(z, alpha, noise), repeated_prompts, steps, guidance_scale=guidance)
    return model.decode_latents(out), alpha
