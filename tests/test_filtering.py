"""The filter of synthetic images: a probe fitted on a run's own training data drops a mislabelled image and keeps
a correct one, records why, and a run that asks for the filter reads what it kept."""
import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from domainbed_diffusion.data import filtering, splits
from domainbed_diffusion.data.layout import ManifestWriter, SyntheticDataError, SyntheticDomains, manifest_name
from offline_generation import filtering as command

ENVS, CLASSES = ["env a", "env_b", "env_c"], ["cat", "dog"]
COLOUR = {"cat": (220, 40, 40), "dog": (40, 40, 220)}


class MeanColour:
    """A stand-in extractor: each image's mean RGB (cats are red, dogs blue here)."""
    name, size, dim = "mean-colour", 8, 3

    def __call__(self, pixels):
        return pixels.float().mean(dim=(2, 3)).numpy()


def image(path, rgb, rng):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    noise = rng.randint(-20, 20, (8, 8, 3))
    Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(path)


@pytest.fixture
def filtered(tmp_path):
    rng = np.random.RandomState(0)
    data_dir = tmp_path / "data"
    for env in ENVS:
        for cls in CLASSES:
            for k in range(10):
                image(str(data_dir / "Tiny" / env / cls / f"img{k}.png"), COLOUR[cls], rng)
    root = data_dir / "synthetic" / "Tiny"
    records = []
    for k, (colour, label) in enumerate([("cat", "cat"), ("cat", "dog"), ("dog", "dog")]):
        file = f"edsam__env_b/{label}/made{k}.png"
        image(str(root / file), COLOUR[colour], rng)
        records.append(dict(file=file, method="edsam", source_env="env_b", class_name=label, sample=0,
                            params=dict(rho=0.5)))
    with ManifestWriter(str(root / manifest_name("edsam", 0, 1))) as writer:
        writer.write(records)
    args = argparse.Namespace(data_dir=str(data_dir), dataset="Tiny", dataset_dir=None, synthetic_root=None,
                              methods=["edsam"], name="label", test_envs=["env a"], trial_seeds=[0, 1],
                              holdout_fraction=0.2, criterion="disagree", min_confidence=None, max_entropy=None,
                              per_class=200, device="cpu", cache_dir=str(tmp_path / "cache"))
    assert command.run(args, extractor=MeanColour()) == 0
    return str(data_dir), str(root)


def test_the_filter_drops_the_mislabelled_image_keeps_the_others_and_says_why(filtered):
    data_dir, root = filtered
    path = filtering.filter_path(root, "edsam", "label")
    lines = [json.loads(line) for line in open(path)]
    headers = [line for line in lines if line.get("header")]
    assert [(h["test_env"], h["trial_seed"], h["images"], h["dropped"]) for h in headers] == \
        [("env a", 0, 3, 1), ("env a", 1, 3, 1)]
    dropped = [line for line in lines if not line.get("header")]
    assert {d["file"] for d in dropped} == {"edsam__env_b/dog/made1.png"}
    assert dropped[0]["predicted"] == "cat" and dropped[0]["reason"] == "predicted cat, labelled dog"
    assert headers[0]["probe_images"] == 2 * 2 * 8  # env_b and env_c, two classes, 8 training images each
    assert os.path.isfile(os.path.join(root, "edsam__env_b/dog/made1.png"))  # nothing deleted


def test_a_run_reads_what_the_filter_kept_and_a_missing_group_names_the_command(filtered):
    data_dir, root = filtered
    validation = splits.validation_paths(os.path.join(data_dir, "Tiny"), ENVS, [0, 5], 0.2)
    selected = SyntheticDomains(os.path.dirname(root), "Tiny").select("edsam", ENVS, CLASSES, [0])
    assert len(selected[1]) == 3

    def digests(trial):
        return {env: splits.digest(validation[trial][env]) for env in ("env_b", "env_c")}
    kept = filtering.apply(selected, root, "edsam", "label", ["env a"], digests(0), "the command")
    assert sorted(kept[1].index.file(int(r)) for r in kept[1].rows) == ["edsam__env_b/cat/made0.png",
                                                                         "edsam__env_b/dog/made2.png"]
    assert list(kept[1].labels) == [0, 1]
    with pytest.raises(SyntheticDataError, match="no group for test env env a.*\n    the command"):
        filtering.apply(selected, root, "edsam", "label", ["env a"], digests(5), "the command")
    with pytest.raises(SyntheticDataError, match="no filter .*filter.edsam.other.jsonl"):
        filtering.apply(selected, root, "edsam", "other", ["env a"], digests(0), "the command")


def test_the_reports_view_of_a_filter_is_every_file_it_dropped_for_a_trial(filtered):
    _, root = filtered
    path = filtering.filter_path(root, "edsam", "label")
    assert filtering.dropped_files(path, 0) == filtering.dropped_files(path, 1) == {"edsam__env_b/dog/made1.png"}
    assert filtering.dropped_files(path, 7) == set()
