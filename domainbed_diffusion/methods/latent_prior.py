"""Latent-prior sampling (Zhu et al., 2023): new images of a domain from the Gaussian prior of its inverted latents.

A domain's images (per class) are DDIM-inverted to an intermediate "mixing" step, where their latents are
approximately Gaussian. A diagonal Gaussian is fitted to them (a full covariance is not estimable from tens of
images in thousands of dimensions), candidates are drawn from it, and only candidates with the geometry of the
inverted references are kept: in high dimensions samples of one Gaussian sit at a near-constant distance from
each other (pairwise distance), form near-equilateral triangles (pairwise angle, ~60 degrees) and are near
orthogonal seen from the origin (angle to origin, ~90 degrees when the mean is small). The targets are measured
on the references themselves (leave-one-out), so they hold whatever the mean and dimension; a candidate passes
when each of its statistics is within the paper's kind of tolerance of the target: a relative one for the
distance, degrees for the angles. (In units of the references' own spread the check would reject every sample
of a prior fitted on tens of images: an estimated mean makes prior samples lean toward the references, by
``D sigma^2 / N`` in dot product, which in high dimensions is many spreads.)
Survivors are denoised with DDIM whose stochasticity ``eta`` is capped by the domain's bandwidth: the largest
``eta`` that still reconstructs the references.
"""
from dataclasses import dataclass

import torch


@dataclass
class GaussianPrior:
    mean: torch.Tensor  # (D,)
    std: torch.Tensor   # (D,)
    shape: tuple        # the latent shape of one sample

    def sample(self, generators):
        """One candidate per generator, drawn on the CPU (device-independent) and shaped like a latent."""
        noise = torch.stack([torch.randn(self.mean.shape, generator=g) for g in generators])
        return (self.mean.cpu() + noise * self.std.cpu()).view(len(generators), *self.shape)


def fit_prior(latents, min_std=1e-4, predictive=True):
    """Diagonal Gaussian fitted to latents (N, *shape); needs at least two references.

    ``predictive``: sample from the predictive distribution of a new point, variance times ``1 + 1/N``. The
    references built the mean, so plug-in samples sit closer to them than they sit to each other (for N = 3,
    9% closer in distance, many spreads in high dimensions); predictive samples match them in expectation.
    """
    if len(latents) < 2:
        raise ValueError(f"a Gaussian prior needs at least 2 inverted latents, got {len(latents)}")
    flat = latents.flatten(1).float()
    std = flat.std(0).clamp_min(min_std) * ((1 + 1 / len(flat)) ** 0.5 if predictive else 1.0)
    return GaussianPrior(flat.mean(0), std, tuple(latents.shape[1:]))


def geometry(points, refs, exclude_self=False):
    """Per point: mean distance to the refs, mean angle (degrees) at the point between pairs of refs, and mean
    angle between the point and the refs seen from the origin. ``exclude_self``: points are the refs (LOO).

    Computed from Gram matrices, so memory grows with points x refs^2, not with the latent dimension.
    """
    p, r = points.flatten(1).double(), refs.flatten(1).double()
    n = len(r)
    pp, rr, pr = (p * p).sum(1), r @ r.T, p @ r.T                          # (P,), (R, R), (P, R)
    # (r_i - p) . (r_j - p) = r_i.r_j - p.r_i - p.r_j + p.p
    inner = rr[None] - pr[:, :, None] - pr[:, None, :] + pp[:, None, None]  # (P, R, R)
    dist = torch.diagonal(inner, dim1=1, dim2=2).clamp_min(0).sqrt()       # (P, R)
    cos_pair = inner / (dist[:, :, None] * dist[:, None, :]).clamp_min(1e-12)
    cos_origin = pr / (pp.sqrt()[:, None] * torch.diagonal(rr).sqrt()[None, :]).clamp_min(1e-12)
    mask = torch.ones(len(p), n, dtype=torch.bool)
    if exclude_self:
        mask[torch.arange(len(p)), torch.arange(len(p))] = False
    pair_mask = mask[:, :, None] & mask[:, None, :] & ~torch.eye(n, dtype=torch.bool)[None]
    mean_dist = (dist * mask).sum(1) / mask.sum(1)
    angles = torch.rad2deg(torch.acos(cos_pair.clamp(-1, 1)))
    mean_pair = (angles * pair_mask).sum((1, 2)) / pair_mask.sum((1, 2))
    mean_origin = (torch.rad2deg(torch.acos(cos_origin.clamp(-1, 1))) * mask).sum(1) / mask.sum(1)
    return torch.stack([mean_dist, mean_pair, mean_origin], dim=1).float()


@dataclass
class GeometryTarget:
    mean: torch.Tensor  # (3,): pairwise distance, pairwise angle, angle to origin
    std: torch.Tensor   # (3,)


def fit_geometry(refs):
    """Targets of the three statistics, from the references themselves (each against the others)."""
    if len(refs) < 3:
        raise ValueError(f"geometric rejection needs at least 3 reference latents, got {len(refs)}")
    stats = geometry(refs, refs, exclude_self=True)
    return GeometryTarget(stats.mean(0), stats.std(0).clamp_min(1e-6))


DEFAULT_TOLERANCE = (0.05, 5.0, 5.0)  # relative pairwise distance, pairwise angle (deg), angle to origin (deg)


def deviations(candidates, refs, target):
    """Per candidate: relative distance deviation and the two angle deviations (degrees) from the target."""
    dev = (geometry(candidates, refs) - target.mean).abs()
    dev[:, 0] = dev[:, 0] / target.mean[0].abs().clamp_min(1e-12)
    return dev


def accept(candidates, refs, target, tolerance=DEFAULT_TOLERANCE):
    """Boolean mask of the candidates within ``tolerance`` of the target on all three statistics."""
    return (deviations(candidates, refs, target) <= torch.as_tensor(tolerance, dtype=torch.float32)).all(dim=1)


@torch.no_grad()
def estimate_bandwidth(model, inverted, clean, prompts, steps, n_steps, generators, grid=None, tolerance=0.5):
    """The largest DDIM ``eta`` in ``grid`` whose reconstruction error of the references stays within
    ``(1 + tolerance)`` times the deterministic (``eta = 0``) one; the paper's bandwidth ``B_eta``."""
    grid = sorted(grid or [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    errors = {}
    for eta in grid:
        gens = [torch.Generator().manual_seed(g.initial_seed()) for g in generators]
        rec = model.denoise(inverted.clone(), prompts, steps, n_steps, eta=eta, generators=gens)
        errors[eta] = (rec.float() - clean.float()).pow(2).mean().item()
    base = errors[grid[0]]
    ok = [eta for eta in grid if errors[eta] <= (1 + tolerance) * base + 1e-12]
    return max(ok), errors


def encode_and_invert(model, pixels, prompts, steps, mix_steps, batch_size=32):
    """Clean latents of ``pixels`` and their DDIM inversions to the mixing step, each with its own prompt."""
    clean = torch.cat([model.encode_images(c.to(model.device)) for c in pixels.split(batch_size)])
    inverted = torch.cat([model.invert(clean[i:i + batch_size], list(prompts[i:i + batch_size]), steps, mix_steps)
                          for i in range(0, len(clean), batch_size)])
    return clean, inverted


@torch.no_grad()
def domain_bandwidth(model, ref_pixels, prompts, steps, mix_steps, generators, batch_size=32):
    """``B_eta`` of one domain from some of its images (each with its own class prompt): the paper reports one
    bandwidth per unseen domain (its Table 2), not one per class."""
    clean, inverted = encode_and_invert(model, ref_pixels, prompts, steps, mix_steps, batch_size)
    return estimate_bandwidth(model, inverted, clean, list(prompts), steps, mix_steps, generators)[0]


@dataclass
class PriorSamples:
    images: torch.Tensor      # (n accepted, 3, R, R) in [0, 1]
    seeds: list               # the candidate seed of each accepted image
    tried: int
    eta: float

    @property
    def acceptance_rate(self):
        return len(self.seeds) / max(self.tried, 1)


def generate(model, ref_pixels, prompt, n, seed_of, steps, mix_steps, guidance=1.0, eta=0.0,
             tolerance=DEFAULT_TOLERANCE, max_tries=20, batch_size=32):
    """Up to ``n`` new images of one (env, class) from the prior of its ``ref_pixels``' inverted latents,
    denoised at the domain's bandwidth ``eta`` (``domain_bandwidth``).

    ``seed_of(k)`` is the seed of candidate ``k``; candidates are drawn in order, at most ``max_tries * n``.
    """
    from ..diffusion.pipeline import generators_from_seeds
    _, inverted = encode_and_invert(model, ref_pixels, [prompt] * len(ref_pixels), steps, mix_steps, batch_size)
    refs = inverted.float().cpu()
    prior, target = fit_prior(refs), fit_geometry(refs)
    accepted, seeds, tried = [], [], 0
    while len(accepted) < n and tried < max_tries * n:
        chunk = min(batch_size, max_tries * n - tried)
        chunk_seeds = [seed_of(tried + i) for i in range(chunk)]
        candidates = prior.sample(generators_from_seeds(chunk_seeds))
        for c, s, ok in zip(candidates, chunk_seeds, accept(candidates, refs, target, tolerance).tolist()):
            if ok and len(accepted) < n:
                accepted.append(c)
                seeds.append(s)
        tried += chunk
    images = []
    for start in range(0, len(accepted), batch_size):
        z = torch.stack(accepted[start:start + batch_size]).to(model.device, model.dtype)
        batch_seeds = seeds[start:start + batch_size]
        out = model.denoise(z, [prompt] * len(z), steps, mix_steps, guidance, eta=eta,
                            generators=generators_from_seeds([s + 1 for s in batch_seeds]))
        images.append(model.decode_latents(out))
    images = torch.cat(images) if images else torch.zeros(0, 3, *ref_pixels.shape[2:])
    return PriorSamples(images, seeds, tried, eta)
