"""SWAD's schedule on constructed validation-loss curves, and its averaging (no DomainBed needed)."""
import pytest
import torch

from domainbed_diffusion.training.swad import Averager, LossValley

# t_s = 3: the first loss that is the lowest of the three from it (0.5 <= 0.55, 0.52); threshold 1.3 * mean(0.5,
# 0.55, 0.52) = 0.680; t_e = 8: the first segment after t_s whose six losses from it are all above 0.680
VALLEY = [1.0, 0.8, 0.6, 0.5, 0.55, 0.52, 0.53, 0.51, 0.7, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]


def test_the_valley_starts_and_ends_where_the_rules_say():
    schedule = LossValley(n_converge=3, n_tolerance=6, tolerance_ratio=0.3)
    joined_at = {}
    for k, loss in enumerate(VALLEY):
        for segment in schedule.add(loss):
            joined_at[segment] = k
        if k == 4:
            assert schedule.start is None  # 0.5 is not yet known to be the lowest of three
        if k == 5:
            assert schedule.start == 3 and schedule.threshold == pytest.approx(1.3 * (0.5 + 0.55 + 0.52) / 3)
    # each segment joins once the six losses from it are known: segment s at evaluation s + 5
    assert joined_at == {3: 8, 4: 9, 5: 10, 6: 11, 7: 12}
    assert schedule.end == 8 and schedule.dead and schedule.close() == []


def test_an_open_valley_closes_at_the_end_and_an_unsettled_loss_falls_back():
    schedule = LossValley(3, 6, 0.3)
    for loss in [1.0, 0.5, 0.6, 0.55, 0.52, 0.5, 0.51]:
        schedule.add(loss)
    assert schedule.start == 1 and schedule.joined == [1]  # only segment 1's six losses are all known
    assert schedule.close() == [2, 3, 4, 5, 6] and schedule.joined == [1, 2, 3, 4, 5, 6]
    falling = LossValley(3, 6, 0.3)
    for loss in [1.0, 0.9, 0.8, 0.7, 0.6]:
        assert falling.add(loss) == []
    assert falling.start is None and falling.close() == [2, 3, 4]


def test_the_averaged_weights_are_the_mean_of_the_joined_segments_iterates():
    """A one-weight network set to the step's number before each averaging step; segments of two steps; the
    schedule joins segments 3 to 7, so the final weight is the mean of steps 6 to 15."""
    network = torch.nn.Linear(1, 1, bias=False)
    averager = Averager(network, LossValley(3, 6, 0.3))
    step = 0
    for loss in VALLEY:
        for _ in range(2):
            with torch.no_grad():
                network.weight.fill_(float(step))
            averager.step()
            step += 1
        assert averager.segment_model().weight.item() == pytest.approx(step - 1.5)  # the segment's own mean
        averager.close_segment(loss)
    final = averager.finish()
    assert final.module.weight.item() == pytest.approx(sum(range(6, 16)) / 10)
    assert len(averager.pending) <= 6  # only the segments a window may still read are kept
    assert network.weight.item() == step - 1  # the online network is left as trained


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="n_converge"):
        LossValley(0, 6, 0.3)
