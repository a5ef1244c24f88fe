"""DomainFusion's sampling strategy (Sec. 3.3): from N candidates, the most different style and the most similar
content, recombined with AdaIN into the new synthetic image.

Feature space: the VAE latent of the diffusion model. Style ``s_i`` is a latent's per-channel mean and std,
content ``c_i`` the latent normalised by them. It is the one feature map that has a decoder back to pixels, so
``x* = decode(sigma* c* + mu*)`` is an image without training an AdaIN decoder, and the candidates' latents exist
anyway (img2img produces them). The content score's ``f_theta`` and ``p_theta`` are the DG classifier's features
and confidence on each decoded candidate, since the classifier reads images, not latents.
"""
import torch
import torch.nn.functional as F

from .style import adain, channel_stats


def style_kl(mean, std, mean0, std0):
    """``KL(mu_i, mu_0) + KL(sigma_i, sigma_0)``, read as the per-channel Gaussian
    ``KL(N(mu_i, sigma_i^2) || N(mu_0, sigma_0^2))`` summed over channels: its mean part
    ``(mu_i - mu_0)^2 / 2 sigma_0^2`` plus its std part ``log(sigma_0/sigma_i) + sigma_i^2 / 2 sigma_0^2 - 1/2``."""
    mean_term = (mean - mean0) ** 2 / (2 * std0 ** 2)
    std_term = torch.log(std0 / std) + std ** 2 / (2 * std0 ** 2) - 0.5
    return (mean_term + std_term).sum(-1)


def select_style(candidate_latents, source_latents):
    """Index (per source) of the candidate whose style is farthest from the source's.

    candidate_latents: (B, N, C, H, W); source_latents: (B, C, H, W).
    """
    b, n = candidate_latents.shape[:2]
    mean, std = channel_stats(candidate_latents.flatten(0, 1))
    mean0, std0 = channel_stats(source_latents)
    kl = style_kl(mean.view(b, n, -1), std.view(b, n, -1), mean0[:, None], std0[:, None])
    return kl.argmax(1)


def content_scores(candidate_features, source_features, candidate_confidence, lam):
    """``lam * cos(f(c_i), f(c_0)) + (1 - lam) * p(y | c_i)``; features (B, N, D) and (B, D), confidence (B, N)."""
    cos = F.cosine_similarity(candidate_features, source_features[:, None], dim=-1)
    return lam * cos + (1 - lam) * candidate_confidence


def select_content(candidate_features, source_features, candidate_confidence, lam):
    """Index (per source) of the candidate whose content is most similar to the source's."""
    return content_scores(candidate_features, source_features, candidate_confidence, lam).argmax(1)


def combine(candidate_latents, style_index, content_index):
    """AdaIN: the chosen content candidate's latent given the chosen style candidate's channel statistics."""
    rows = torch.arange(len(candidate_latents), device=candidate_latents.device)
    content = candidate_latents[rows, content_index]
    mean, std = channel_stats(candidate_latents[rows, style_index])
    return adain(content, mean, std)
