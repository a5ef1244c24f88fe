"""Paired comparisons and Holm's correction against scipy and by hand, on constructed cases."""
import math

import numpy as np
from scipy import stats

from domainbed_diffusion.results.comparisons import compare_to, holm, paired


def test_paired_interval_and_p_value_agree_with_scipy():
    rng = np.random.RandomState(0)
    base = {s: float(v) for s, v in enumerate(rng.uniform(0.4, 0.6, 5))}
    other = {s: base[s] + float(d) for s, d in enumerate(rng.normal(0.03, 0.02, 5))}
    got = paired(other, base)
    test = stats.ttest_rel([other[s] for s in range(5)], [base[s] for s in range(5)])
    ci = test.confidence_interval(0.95)
    assert got["n"] == 5 and math.isclose(got["p"], test.pvalue)
    assert math.isclose(got["low"], ci.low) and math.isclose(got["high"], ci.high)
    assert math.isclose(got["mean"], np.mean([other[s] - base[s] for s in range(5)]))


def test_pairing_decides_where_unpaired_statistics_would_not():
    # trials differ a lot from each other, the method beats the baseline by about 2 points in each one
    base = {0: 0.40, 1: 0.55, 2: 0.70, 3: 0.48}
    method = {0: 0.42, 1: 0.575, 2: 0.715, 3: 0.50}
    assert paired(method, base)["p"] < 0.01 and paired(method, base)["low"] > 0
    assert stats.ttest_ind(list(method.values()), list(base.values()), equal_var=False).pvalue > 0.5
    # only the seeds both have are paired
    assert paired({**method, 9: 0.9}, base)["n"] == 4


def test_holm_adjusts_step_down_in_the_input_order():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 -> 0.02, 0.03, 0.06, 0.04 -> running max 0.02, 0.03, 0.06, 0.06
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(holm([0.5, 0.9]), [1.0, 1.0])
    adjusted = holm([0.01, float("nan"), 0.02])
    assert math.isnan(adjusted[1]) and np.allclose([adjusted[0], adjusted[2]], [0.02, 0.02])


def test_compare_to_corrects_over_the_table_and_skips_the_baseline():
    rows = {"ERM": {0: 0.40, 1: 0.50, 2: 0.60}, "A": {0: 0.45, 1: 0.56, 2: 0.64}, "B": {0: 0.41, 1: 0.49, 2: 0.62}}
    out = compare_to(rows, "ERM")
    assert set(out) == {"A", "B"}
    raw = [out["A"]["p"], out["B"]["p"]]
    assert [out["A"]["p_holm"], out["B"]["p_holm"]] == holm(raw) and out["A"]["p_holm"] >= out["A"]["p"]
