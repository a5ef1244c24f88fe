"""Latent-prior sampling (Zhu et al., 2023): new images of a domain from the Gaussian prior of its inverted latents.

A domain's images (per class) are DDIM-inverted to an intermediate "mixing" step, where their latents are
approximately Gaussian. A diagonal Gaussian is fitted to them (a full covariance is not estimable from tens of
images in thousands of dimensions), candidates are drawn from it, and only candidates with the geometry of the
inverted references are kept: in high dimensions samples of one Gaussian sit at a near-constant distance from
each other (pairwise distance), form near-equilateral triangles (pairwise angle, ~60 degrees) and are near
orthogonal seen from the origin (angle to origin, ~90 degrees when the mean is small). The targets are measured
on the references themselves (leave-one-out), so they hold whatever the mean and dimension; a candidate passes
when each of its three statistics lies within ``tolerance`` reference standard deviations of the target.
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


def fit_prior(latents, min_std=1e-4):
    """Diagonal Gaussian fitted to latents (N, *shape); needs at least two references."""
    if len(latents) < 2:
        raise ValueError(f"a Gaussian prior needs at least 2 inverted latents, got {len(latents)}")
    flat = latents.flatten(1).float()
    return GaussianPrior(flat.mean(0), flat.std(0).clamp_min(min_std), tuple(latents.shape[1:]))


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

    NAMES = ("pairwise distance", "pairwise angle", "angle to origin")


def fit_geometry(refs):
    """Targets of the three statistics, from the references themselves (each against the others)."""
    if len(refs) < 3:
        raise ValueError(f"geometric rejection needs at least 3 reference latents, got {len(refs)}")
    stats = geometry(refs, refs, exclude_self=True)
    return GeometryTarget(stats.mean(0), stats.std(0).clamp_min(1e-6))


def accept(candidates, refs, target, tolerance=(3.0, 3.0, 3.0)):
    """Boolean mask of candidates whose three statistics each lie within ``tolerance`` target stds."""
    tolerance = torch.as_tensor(tolerance, dtype=torch.float32)
    z = (geometry(candidates, refs) - target.mean).abs() / target.std
    return (z <= tolerance).all(dim=1)


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
