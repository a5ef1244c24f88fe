"""Channel statistics and AdaIN (Huang & Belongie, 2017), shared by CDGA-IG and DomainFusion, and CDGA-IG's
foreground/background transplant."""


def channel_stats(x, eps=1e-5):
    """Per-sample, per-channel mean and standard deviation over the spatial dims: (B, C) each."""
    flat = x.flatten(2)
    return flat.mean(-1), (flat.var(-1, unbiased=False) + eps).sqrt()


def adain(content, mean, std, eps=1e-5):
    """``content`` normalised per channel, then given channel ``mean`` and ``std`` (B, C)."""
    c_mean, c_std = channel_stats(content, eps)
    normalised = (content - c_mean[..., None, None]) / c_std[..., None, None]
    return normalised * std[..., None, None] + mean[..., None, None]


def foreground(pixels, bins=64, softness=0.05):
    """Soft foreground masks (B, 1, H, W) of images in [0, 1]: each pixel's colour distance from the median
    colour of the image border, split between the two classes of Otsu's method (hand-written: one vectorised
    pass over a batch on the model's device, where a library's is one image at a time on the CPU)."""
    import torch
    border = torch.cat([pixels[..., 0, :], pixels[..., -1, :], pixels[..., :, 0], pixels[..., :, -1]], -1)
    distance = (pixels - border.median(-1).values[..., None, None]).norm(dim=1, keepdim=True)
    flat = distance.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    span = (hi - lo).clamp_min(1e-6)
    index = ((flat - lo) / span * (bins - 1)).round().long()
    p = torch.zeros(len(flat), bins, device=pixels.device).scatter_add_(1, index, torch.ones_like(flat))
    p = p / p.sum(1, keepdim=True)
    levels = torch.arange(bins, device=pixels.device, dtype=p.dtype)
    w0, mu0 = p.cumsum(1), (p * levels).cumsum(1)
    between = (mu0[:, -1:] * w0 - mu0) ** 2 / (w0 * (1 - w0)).clamp_min(1e-12)
    k = between.argmax(1, keepdim=True)
    w, m = w0.gather(1, k), mu0.gather(1, k)
    # midway between the two classes' mean levels at Otsu's split, so a two-valued image splits cleanly
    middle = (m / w.clamp_min(1e-12) + (mu0[:, -1:] - m) / (1 - w).clamp_min(1e-12)) / 2
    threshold = lo + middle / (bins - 1) * span
    return torch.sigmoid((distance - threshold[..., None, None]) / (softness * span[..., None, None]))


def weighted_stats(x, weight, eps=1e-5):
    """Per-channel mean and std of ``x`` (B, C, H, W) under spatial ``weight`` (B, 1, H, W)."""
    total = weight.sum((2, 3)).clamp_min(eps)
    mean = (x * weight).sum((2, 3)) / total
    var = ((x - mean[..., None, None]) ** 2 * weight).sum((2, 3)) / total
    return mean, (var + eps).sqrt()


def transplant(source, guide, mix=1.0):
    """CDGA-IG's pixel-space guidance: the guide's background (its texture kept, its foreground filled with its
    background colour) behind the source's foreground recoloured to the guide foreground's colour statistics
    (AdaIN over the foreground), blended ``mix`` of the way from the source; images in [0, 1].

    Region by region rather than whole-image AdaIN, because an affine map of the whole image keeps the source's
    polarity (dark strokes on light paper cannot become light strokes on a dark ground) and none of the guide's
    texture; the img2img that follows redraws the seams."""
    dtype, source, guide = source.dtype, source.float(), guide.float()  # statistics in float32, as AdaIN's
    source_fg, guide_fg = foreground(source), foreground(guide)
    g_bg_mean, _ = weighted_stats(guide, 1 - guide_fg)
    background = guide * (1 - guide_fg) + g_bg_mean[..., None, None] * guide_fg
    s_mean, s_std = weighted_stats(source, source_fg)
    g_mean, g_std = weighted_stats(guide, guide_fg)
    strokes = (source - s_mean[..., None, None]) / s_std[..., None, None] * g_std[..., None, None] + \
        g_mean[..., None, None]
    out = (source_fg * strokes + (1 - source_fg) * background).clamp(0, 1)
    return (mix * out + (1 - mix) * source).to(dtype)
