"""The run context an algorithm is built with: never another dataset's, test envs included (no DomainBed
needed: datasets here are stand-ins with DomainBed's attributes)."""
import gc

import pytest

from domainbed_diffusion.training import context


class Env(list):
    pass


class FakeDataset:
    ENVIRONMENTS = ["a", "b", "c"]
    input_shape = (3, 28, 28)
    num_classes = 2

    def __init__(self, root, test_envs, hparams):
        self.datasets = [Env() for _ in self.ENVIRONMENTS]
        context.capture(self, root, test_envs, hparams)


@pytest.fixture(autouse=True)
def fresh():
    context.clear()
    yield
    context.clear()


def test_the_dataset_built_with_the_algorithms_hparams_wins():
    h0, h1 = {"batch_size": 8}, {"batch_size": 8}
    d0, d1 = FakeDataset("data", [0], h0), FakeDataset("data", [1], h1)
    assert context.require("X", d0.input_shape, 2, h0).test_envs == [0]
    assert context.require("X", d1.input_shape, 2, h1).test_envs == [1]
    assert context.require("X", d0.input_shape, 2, h0).dataset is d0


def test_two_datasets_that_could_both_be_meant_are_an_error_not_a_guess():
    hparams = {"batch_size": 8}
    d0 = FakeDataset("data", [0], hparams)
    d1 = FakeDataset("data", [1], hparams)
    with pytest.raises(context.MissingRunContextError, match=r"test envs \[0\].*test envs \[1\].*context.use"):
        context.require("CDGA_PG", d0.input_shape, 2, hparams)
    with pytest.raises(context.MissingRunContextError, match="more than one dataset"):
        context.require("CDGA_PG", d0.input_shape, 2, {"other": "dict"})
    with context.use(d0):
        assert context.require("CDGA_PG", d0.input_shape, 2, hparams).test_envs == [0]
    with context.use(d1):
        assert context.require("CDGA_PG", d0.input_shape, 2, hparams).dataset is d1
    del d1
    gc.collect()  # a dataset nobody holds drops out, and the ambiguity with it
    assert context.require("CDGA_PG", d0.input_shape, 2, hparams).test_envs == [0]


def test_an_algorithm_that_fits_no_dataset_says_so():
    kept = FakeDataset("data", [0], {})
    with pytest.raises(context.MissingRunContextError, match="no dataset built in this process has them"):
        context.require("EDSAM", (3, 224, 224), 2, {})
    hparams = {}
    also_kept = FakeDataset("data", [1], hparams)
    with pytest.raises(context.MissingRunContextError, match="3 envs"):
        context.require("EDSAM", (3, 28, 28), 3, hparams)  # built with its hparams, but 2 training envs
    assert kept and also_kept
    context.clear()
    with pytest.raises(context.MissingRunContextError, match="none was recorded"):
        context.require("EDSAM", (3, 28, 28), 2, {})


def test_splits_are_recorded_on_the_dataset_they_belong_to():
    d0, d1 = FakeDataset("data", [0], {}), FakeDataset("data", [1], {})
    assert context.record_split(d0.datasets[2], "val", "train").test_envs == [0]
    assert context.record_split(d0.datasets[2], "val2", "train2") is None  # the first split wins
    with context.use(d0):
        assert context.current().splits == {2: ("val", "train")}
    with context.use(d1):
        assert context.current().splits == {}
