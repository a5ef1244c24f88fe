"""The methods' math, checked against closed forms and constructed cases (no DomainBed, no checkpoint)."""
import math

import pytest
import torch

from domainbed_diffusion.methods import candidates, cdga, edsam, gsd, latent_prior
from domainbed_diffusion.methods import style
from domainbed_diffusion.methods.style import adain, channel_stats
from domainbed_diffusion.methods.miro import FeatureHooks, VarianceEncoder, feature_modules, miro_penalty


# -- ED-SAM ---------------------------------------------------------------------------------------------------
def test_transport_moves_standard_normal_to_mean_alpha_unit_variance():
    torch.manual_seed(0)
    z = torch.randn(20000, 4, 8, 8)
    alpha = torch.full((len(z),), 0.37)
    moved = edsam.transport(z, alpha, torch.randn_like(z))
    assert moved.mean().item() == pytest.approx(0.37, abs=0.01)
    assert moved.var().item() == pytest.approx(1.0, abs=0.01)
    # unchanged correlation with the source: cov(z, z*) = 1/sqrt(2)
    cov = ((z - z.mean()) * (moved - moved.mean())).mean().item()
    assert cov == pytest.approx(1 / math.sqrt(2), abs=0.01)


def test_transport_alpha_is_bounded_by_rho_and_bounds_the_wasserstein_cost():
    rho = 0.5
    generators = [torch.Generator().manual_seed(s) for s in range(2000)]
    alpha = edsam.sample_alpha(generators, rho)
    assert alpha.abs().max() <= rho
    assert alpha.min() < -0.45 and alpha.max() > 0.45  # covers the interval
    torch.manual_seed(1)
    for a in alpha[:20].tolist():
        z = torch.randn(50000)
        moved = edsam.transport(z, torch.tensor([a]), torch.randn(1, 50000)).flatten()
        w2 = edsam.gaussian_w2(z.mean().item(), z.std().item(), moved.mean().item(), moved.std().item())
        assert w2 == pytest.approx(abs(a), abs=0.02)
        assert w2 <= rho + 0.02


def test_alpha_is_per_sample_and_reproducible():
    a = edsam.sample_alpha([torch.Generator().manual_seed(s) for s in (1, 2, 3)], 0.5)
    b = edsam.sample_alpha([torch.Generator().manual_seed(s) for s in (3, 2, 1)], 0.5)
    assert torch.equal(a, b.flip(0))


# -- AdaIN and DomainFusion's candidate selection -------------------------------------------------------------
def test_adain_output_has_the_style_channel_statistics():
    torch.manual_seed(0)
    content = torch.randn(3, 4, 8, 8) * 2 + 1
    mean, std = torch.randn(3, 4), torch.rand(3, 4) + 0.5
    out = adain(content, mean, std)
    out_mean, out_std = channel_stats(out)
    assert torch.allclose(out_mean, mean, atol=1e-5)
    assert torch.allclose(out_std, std, atol=1e-3)
    # and keeps the content's normalised pattern
    c_mean, c_std = channel_stats(content)
    assert torch.allclose((out - mean[..., None, None]) / std[..., None, None],
                          (content - c_mean[..., None, None]) / c_std[..., None, None], atol=1e-3)


def test_style_kl_is_the_gaussian_kl_and_zero_for_equal_styles():
    mean, std = torch.tensor([[0.3, -1.0]]), torch.tensor([[0.5, 2.0]])
    assert candidates.style_kl(mean, std, mean, std).item() == pytest.approx(0.0, abs=1e-7)
    mean0, std0 = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    expected = sum(math.log(s0 / s) + (s ** 2 + (m - m0) ** 2) / (2 * s0 ** 2) - 0.5
                   for m, s, m0, s0 in [(0.3, 0.5, 0.0, 1.0), (-1.0, 2.0, 0.0, 1.0)])
    assert candidates.style_kl(mean, std, mean0, std0).item() == pytest.approx(expected, rel=1e-6)


def test_candidate_rule_picks_the_expected_candidates():
    torch.manual_seed(0)
    source = torch.randn(1, 4, 8, 8)
    near = source + 0.01 * torch.randn_like(source)            # same style as the source
    far_style = source * 3 + 2                                  # very different channel statistics
    mid_style = source * 1.5 + 0.5
    cands = torch.stack([near, far_style, mid_style], dim=1)
    assert candidates.select_style(cands, source).item() == 1
    # content: candidate 2 has the most similar features and a high confidence
    f0 = torch.tensor([[1.0, 0.0, 0.0]])
    feats = torch.tensor([[[0.0, 1.0, 0.0], [0.6, 0.8, 0.0], [0.99, 0.1, 0.0]]])
    conf = torch.tensor([[0.9, 0.5, 0.8]])
    assert candidates.select_content(feats, f0, conf, lam=0.5).item() == 2
    # with lam = 0 only the confidence counts
    assert candidates.select_content(feats, f0, conf, lam=0.0).item() == 0
    combined = candidates.combine(cands, torch.tensor([1]), torch.tensor([2]))
    m, s = channel_stats(combined)
    m1, s1 = channel_stats(far_style)
    assert torch.allclose(m, m1, atol=1e-4) and torch.allclose(s, s1, atol=1e-3)


# -- latent-prior sampling ---------------------------------------------------------------------------------------
def _references(n=40, shape=(4, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(shape, generator=g) * 0.3
    std = torch.rand(shape, generator=g) * 0.5 + 0.75
    refs = mean + std * torch.randn((n, *shape), generator=g)
    return refs, mean, std


def test_prior_fit_recovers_mean_and_std():
    refs, mean, std = _references(n=4000)
    prior = latent_prior.fit_prior(refs)
    assert torch.allclose(prior.mean.view(mean.shape), mean, atol=0.1)
    assert torch.allclose(prior.std.view(std.shape), std, atol=0.1)


@pytest.mark.parametrize("n", [3, 5, 10])
def test_few_references_still_give_prior_samples_the_references_distance(n):
    """Predictive sampling: with few references, candidates are as far from them as they are from each other."""
    refs, _, _ = _references(n=n, shape=(4, 16, 16), seed=n)
    target = latent_prior.fit_geometry(refs)
    candidates = latent_prior.fit_prior(refs).sample([torch.Generator().manual_seed(s) for s in range(200)])
    if n >= 10:
        assert latent_prior.accept(candidates, refs, target).float().mean().item() >= 0.8
    plug_in = latent_prior.fit_prior(refs, predictive=False).sample(
        [torch.Generator().manual_seed(s) for s in range(200)])
    distance = latent_prior.geometry(candidates, refs)[:, 0].mean()
    assert latent_prior.geometry(plug_in, refs)[:, 0].mean() < distance  # the plug-in bias this removes
    assert distance.item() == pytest.approx(target.mean[0].item(), rel=0.02)


def test_geometry_of_a_high_dimensional_gaussian():
    refs, _, _ = _references(n=40, shape=(16, 16, 16))
    refs = refs - refs.mean(0)  # centred: the angle seen from the origin is then ~90 degrees
    target = latent_prior.fit_geometry(refs)
    distance, pair_angle, origin_angle = target.mean.tolist()
    assert pair_angle == pytest.approx(60.0, abs=2.0)
    assert origin_angle == pytest.approx(90.0, abs=2.0)
    assert distance > 0


def test_rejection_accepts_prior_samples_at_the_expected_rate_and_rejects_far_off_ones():
    refs, mean, std = _references(n=40)
    prior = latent_prior.fit_prior(refs)
    target = latent_prior.fit_geometry(refs)
    good = prior.sample([torch.Generator().manual_seed(1000 + s) for s in range(300)])
    rate = latent_prior.accept(good, refs, target).float().mean().item()
    assert rate >= 0.9
    shifted = good + 3 * std  # a prior three standard deviations away
    assert latent_prior.accept(shifted, refs, target).float().mean().item() == 0.0
    wide = prior.mean.view(mean.shape) + 2 * (good - prior.mean.view(mean.shape))  # twice the spread
    assert latent_prior.accept(wide, refs, target).float().mean().item() < 0.05
    # a tighter tolerance rejects more of the good samples
    tight = latent_prior.accept(good, refs, target, tolerance=(0.005, 0.5, 0.5)).float().mean().item()
    assert tight < rate


def test_geometry_needs_enough_references():
    with pytest.raises(ValueError, match="at least 3"):
        latent_prior.fit_geometry(torch.randn(2, 4))
    with pytest.raises(ValueError, match="at least 2"):
        latent_prior.fit_prior(torch.randn(1, 4))


# -- CDGA ------------------------------------------------------------------------------------------------------
def test_cdga_prompts_and_descriptions():
    d = cdga.load_descriptions("PACS", ["art_painting", "cartoon", "photo", "sketch"])
    assert cdga.pg_prompt("giraffe", d["sketch"]) == "a giraffe, sketch drawing, black and white, less details"
    assert cdga.class_prompt("Alarm_Clock") == "a Alarm Clock"
    for dataset in ("PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet", "DigitStyles"):
        assert cdga.DOMAIN_DESCRIPTIONS[dataset]
    with pytest.raises(ValueError, match="--domain_descriptions"):
        cdga.load_descriptions("MyData", ["x", "y"])
    assert cdga.load_descriptions("MyData", ["x"], '{"x": "watercolor"}')["x"] == "watercolor"
    with pytest.raises(ValueError, match="neither a JSON file"):
        cdga.load_descriptions("MyData", ["x"], "{not json")


def _strokes(foreground_colour, background_colour, rows):
    """A 16x16 image: ``rows`` (a slice) of ``foreground_colour`` on ``background_colour``."""
    image = torch.tensor(background_colour, dtype=torch.float32)[:, None, None].repeat(1, 16, 16)
    image[:, rows, 4:12] = torch.tensor(foreground_colour)[:, None, None]
    return image


def test_image_guidance_puts_the_source_strokes_in_the_guides_colours_on_its_background():
    ink = _strokes((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), slice(3, 6))  # dark strokes on light paper
    grid = _strokes((0.9, 0.9, 1.0), (0.1, 0.2, 0.6), slice(9, 13))  # light strokes on a blue ground...
    grid[:, :, 14] = torch.tensor([0.3, 0.4, 0.8])[:, None]  # ...with a grid line
    mask = style.foreground(torch.stack([ink, grid]))
    assert (mask[0, 0, 3:6, 4:12] > 0.99).all() and (mask[0, 0, 8:, :] < 0.01).all()
    out = style.transplant(ink[None], grid[None])[0]
    # the source's strokes, where they were, in the guide's stroke colour; the guide's ground (grid line kept) around
    assert torch.allclose(out[:, 3:6, 4:12], grid[:, 9, 4:12, None].permute(0, 2, 1).expand(3, 3, 8), atol=0.02)
    assert torch.allclose(out[:, 0, :], grid[:, 0, :], atol=0.02)  # the top row, its grid line pixel included
    # where the guide had strokes and the source has none: the guide's ground, filled with its mean colour
    assert (out[0, 9:13, 4:12] < 0.3).all() and (out[2, 9:13, 4:12] < 0.75).all()
    assert torch.equal(style.transplant(ink[None], grid[None], mix=0.0)[0], ink)  # mix 0: the source
    whole = style.adain(ink[None], *style.channel_stats(grid[None]))[0]  # whole-image AdaIN keeps the polarity
    assert whole[0, 4, 6] < whole[0, 0, 0]
    assert cdga.choose_guide(["b", "a", "c"], "k") == cdga.choose_guide(["c", "a", "b"], "k")


# -- MIRO ------------------------------------------------------------------------------------------------------
def test_variance_encoder_starts_at_exactly_0_1():
    enc = VarianceEncoder((64, 7, 7))
    assert enc.b.shape == (1, 64, 1, 1)
    assert torch.allclose(enc(), torch.full((1, 64, 1, 1), 0.1), atol=1e-7)
    assert VarianceEncoder((128,)).b.shape == (1, 128)


def test_miro_penalty_is_its_closed_form():
    f = [torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[3.0, 0.0]])]
    f0 = [torch.tensor([[[[0.0, 0.0]]]]), torch.tensor([[1.0, 0.0]])]
    var = [torch.tensor([[[[0.5]]]]), torch.tensor([[2.0, 0.25]])]
    # layer 1: mean(0.5 * ([1, 4] / 0.5 + log 0.5)); layer 2: mean(0.5 * ([4 / 2, 0] + [log 2, log 0.25]))
    layer1 = 0.5 * ((1 / 0.5 + math.log(0.5)) + (4 / 0.5 + math.log(0.5))) / 2
    layer2 = 0.5 * ((4 / 2 + math.log(2)) + (0 + math.log(0.25))) / 2
    assert miro_penalty(f, f0, var).item() == pytest.approx(layer1 + layer2, rel=1e-6)
    # zero distance and unit variance give zero
    assert miro_penalty([f[0]], [f[0]], [torch.ones(1, 1, 1, 1)]).item() == 0.0


def test_feature_hooks_record_only_inside_their_call():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    hooks = FeatureHooks([net[0], net[2]])
    net(torch.randn(5, 3))  # a prediction pass: nothing kept
    assert hooks.features == []
    out, feats = hooks(net, torch.randn(5, 3))
    assert [f.shape for f in feats] == [(5, 4), (5, 2)] and torch.equal(feats[1], out)
    assert feature_modules(net) == []  # a featurizer MIRO has no layer map for: final features


# -- GSD -------------------------------------------------------------------------------------------------------
def test_gsd_weighting():
    a = torch.tensor([0.9, 0.5])
    assert torch.allclose(gsd.weight(a, "sds"), torch.tensor([0.1, 0.5]))
    assert torch.equal(gsd.weight(a, "uniform"), torch.ones(2))
    with pytest.raises(ValueError):
        gsd.weight(a, "other")


def test_surrogate_gradient_is_the_residual():
    latents = torch.randn(3, 4, 2, 2, requires_grad=True)
    residual = torch.randn(3, 4, 2, 2)
    gsd.surrogate(latents, residual).backward()
    assert torch.allclose(latents.grad, residual / 3)
