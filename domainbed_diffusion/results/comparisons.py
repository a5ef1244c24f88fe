"""Comparisons of DomainBed results that a reviewer accepts: paired by trial seed, with t-intervals,
Holm-corrected p-values and, for a claim of "no difference", an equivalence test (TOST) against a stated margin.

Runs with the same trial seed share their train/validation splits (and so their test subsets), so two rows of a
table are compared on their per-trial differences, not as independent samples. scipy computes the distributions.
"""
import math

import numpy as np
from scipy import stats


def paired(a, b, confidence=0.95):
    """``a - b`` paired on the trial seeds both have (``{seed: value}`` each): the mean difference, its standard
    error, the two-sided t-interval (n - 1 degrees of freedom) and the paired t-test's p-value."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    n = len(d)
    out = dict(n=n, seeds=seeds, mean=float(d.mean()) if n else math.nan, se=math.nan, low=math.nan,
               high=math.nan, p=math.nan)
    if n < 2:
        return out
    se = float(d.std(ddof=1) / math.sqrt(n))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    if se > 0:
        p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    else:  # every trial differs by the same amount: no spread to test against
        p = 0.0 if out["mean"] != 0 else 1.0
    out.update(se=se, low=out["mean"] - half, high=out["mean"] + half, p=p)
    return out


def holm(p_values):
    """Holm's step-down adjustment of a family of p-values, in their order (NaN stays NaN and is not counted);
    written out here because scipy corrects only for the false discovery rate."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(len(p), math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m, running = len(order), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def compare_to(rows, baseline, confidence=0.95):
    """Every row against ``baseline``: ``{row: paired(...) with p_holm}``, Holm-corrected over these
    comparisons. ``rows`` is ``{name: {seed: value}}``."""
    names = [name for name in rows if name != baseline and baseline in rows]
    out = {name: paired(rows[name], rows[baseline], confidence) for name in names}
    for name, adjusted in zip(names, holm([out[n]["p"] for n in names])):
        out[name]["p_holm"] = adjusted
    return out


def equivalence(a, b, margin, confidence=0.95):
    """Two one-sided paired t-tests (TOST) of ``|mean(a - b)| < margin``: the p-value of equivalence (the larger of
    the two one-sided p-values) and the (1 - 2 alpha) interval the test reads; ``margin`` in the values' units."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    n, alpha = len(d), 1 - confidence
    out = dict(n=n, margin=margin, p=math.nan, low=math.nan, high=math.nan)
    if n < 2:
        return out
    se = float(d.std(ddof=1) / math.sqrt(n))
    if se == 0:  # no spread: equivalent exactly when the constant difference lies inside the margin
        out.update(p=0.0 if abs(d.mean()) < margin else 1.0, low=float(d.mean()), high=float(d.mean()))
        return out
    above = stats.ttest_1samp(d, -margin, alternative="greater").pvalue  # H0: difference <= -margin
    below = stats.ttest_1samp(d, margin, alternative="less").pvalue  # H0: difference >= +margin
    half = float(stats.t.ppf(1 - alpha, n - 1)) * se
    out.update(p=float(max(above, below)), low=float(d.mean()) - half, high=float(d.mean()) + half)
    return out


def verdict(difference_p_holm, equivalence_p_holm, alpha=0.05):
    """One word for a comparison after Holm: ``differs`` (the paired test rejects no difference), ``equivalent``
    (TOST rejects a difference as large as the margin), both, or ``inconclusive`` (neither: more trials needed)."""
    differs = difference_p_holm < alpha
    equivalent = equivalence_p_holm < alpha
    if differs and equivalent:
        return "differs, within margin"
    return "differs" if differs else "equivalent" if equivalent else "inconclusive"
