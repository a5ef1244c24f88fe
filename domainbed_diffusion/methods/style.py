"""Channel statistics and AdaIN (Huang & Belongie, 2017), shared by CDGA-IG and DomainFusion."""


def channel_stats(x, eps=1e-5):
    """Per-sample, per-channel mean and standard deviation over the spatial dims: (B, C) each."""
    flat = x.flatten(2)
    return flat.mean(-1), (flat.var(-1, unbiased=False) + eps).sqrt()


def adain(content, mean, std, eps=1e-5):
    """``content`` normalised per channel, then given channel ``mean`` and ``std`` (B, C)."""
    c_mean, c_std = channel_stats(content, eps)
    normalised = (content - c_mean[..., None, None]) / c_std[..., None, None]
    return normalised * std[..., None, None] + mean[..., None, None]
