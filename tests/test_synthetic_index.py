"""The columnar index runs read at start: it agrees with the manifests, follows them when they change, is never
read stale, shares its arrays with DataLoader workers, and the leak filter keeps its guarantees through it.
Also DomainFusion's spill store and the generator's streamed plan and resume bookkeeping."""
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from domainbed_diffusion.methods.domainfusion import SpillStore
from domainbed_diffusion.data.layout import ManifestWriter, SyntheticDataError, SyntheticDomains, env_folder, manifest_name, read_manifests

ENVS = ["env a", "env_b", "env_c"]
CLASSES = ["cat", "dog"]


def make_records(method="cdga-ig", per_class=2):
    records = []
    for source_env in ENVS:
        for cls in CLASSES:
            for k in range(per_class):
                for guide_env in ENVS:
                    if guide_env == source_env:
                        continue
                    records.append(dict(
                        file=f"{env_folder(method, source_env, guide_env)}/{cls}/img{k}_0.png", method=method,
                        source_env=source_env, source=f"{source_env}/{cls}/img{k}.png", guide_env=guide_env,
                        guide=f"{guide_env}/{cls}/img{(k + 1) % per_class}.png", class_name=cls, sample=0,
                        params=dict(steps=4, rho=0.5, flag=True, name="x"), seed=k, prompt=f"a {cls}"))
    return records


def write(root, records, method="cdga-ig", shard=0, shards=1, files=True):
    os.makedirs(root, exist_ok=True)
    with ManifestWriter(os.path.join(root, manifest_name(method, shard, shards))) as writer:
        writer.write(records)
    if files:
        for r in records:
            path = os.path.join(root, r["file"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not os.path.exists(path):
                Image.new("RGB", (4, 4), (len(r["file"]) % 255, 0, 0)).save(path)


@pytest.fixture
def synthetic_root(tmp_path):
    write(str(tmp_path / "Tiny"), make_records())
    return str(tmp_path)


def test_index_agrees_with_the_manifests_and_keeps_the_last_record_of_a_file(synthetic_root):
    root = os.path.join(synthetic_root, "Tiny")
    records = make_records()
    again = dict(records[3], sample=7, params=dict(rho=0.25))  # a resumed batch records a file again
    write(root, [again])
    index = SyntheticDomains(synthetic_root, "Tiny").index("cdga-ig")
    expected = {r["file"]: r for r in read_manifests(root, "cdga-ig")}
    assert len(index) == len(expected) == len(records)
    for row in range(len(index)):
        r = expected[index.file(row)]
        assert index.envs[index.source_env[row]] == r["source_env"]
        assert index.envs[index.guide_env[row]] == r["guide_env"]
        assert index.classes[index.class_[row]] == r["class_name"]
        assert index.path(int(index.source[row])) == r["source"] and index.path(int(index.guide[row])) == r["guide"]
        assert index.sample[row] == r["sample"] and index.param("rho")[row] == r["params"]["rho"]
    row = next(k for k in range(len(index)) if index.file(k) == again["file"])
    assert index.sample[row] == 7 and index.param("rho")[row] == 0.25 and np.isnan(index.param("steps")[row])
    assert "flag" not in index.params and "name" not in index.params  # only numeric parameters become columns
    assert np.isnan(index.param("alpha")).all()


def test_a_changed_manifest_is_never_read_through_a_stale_index(synthetic_root):
    root = os.path.join(synthetic_root, "Tiny")
    domains = SyntheticDomains(synthetic_root, "Tiny")
    first = domains.index("cdga-ig").folder
    extra = dict(make_records()[0], file="cdga-ig__env_b__to__env_c/cat/new_0.png", source="env_b/cat/new.png")
    write(root, [extra], shard=1, shards=2)  # another shard's manifest appears
    index = domains.index("cdga-ig")
    assert index.folder != first and not os.path.exists(first)  # rebuilt under a new signature; old one removed
    assert "cdga-ig__env_b__to__env_c/cat/new_0.png" in {index.file(r) for r in range(len(index))}
    # a manifest whose last line is being written: the index reads complete lines only
    with open(os.path.join(root, manifest_name("cdga-ig", 1, 2)), "a") as f:
        f.write('{"file": "cut')
    index = domains.index("cdga-ig")
    assert len(index) == len(make_records()) + 1


def test_a_missing_index_in_a_read_only_folder_names_the_command(synthetic_root, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(SyntheticDataError, match="python -m offline_generation index --synthetic_root"):
        SyntheticDomains(synthetic_root, "Tiny").index("cdga-ig")


def test_the_index_command_builds_and_verifies(synthetic_root, capsys):
    from offline_generation.cli import main
    assert main(["index", "--synthetic_root", synthetic_root, "--dataset", "Tiny"]) == 0
    assert "cdga-ig: " in capsys.readouterr().out
    root = os.path.join(synthetic_root, "Tiny")
    victim = make_records()[5]["file"]
    os.remove(os.path.join(root, victim))
    write(root, [dict(make_records()[0], sample=1)])  # any change forces a new build, which verifies
    assert main(["index", "--synthetic_dir", synthetic_root, "--dataset", "Tiny"]) == 2  # the old spelling works
    err = capsys.readouterr().err
    assert "note: --synthetic_dir is now --synthetic_root" in err and "not on disk" in err and victim in json.dumps(victim)


def test_selection_is_leak_free_and_a_vanished_file_is_named_when_loaded(synthetic_root):
    from domainbed_diffusion.training.inputs import SyntheticImages
    domains = SyntheticDomains(synthetic_root, "Tiny")
    training = {1: {"env_b/cat/img0.png", "env_b/dog/img1.png"}, 2: {"env_c/cat/img1.png", "env_c/dog/img0.png",
                                                                     "env_c/cat/img0.png"}}
    selected = domains.select("cdga-ig", ENVS, CLASSES, [0], training_sources=training)
    assert set(selected) == {1, 2}
    expected = [r for r in make_records() if "env a" not in (r["source_env"], r["guide_env"])
                and r["source"] in training[ENVS.index(r["source_env"])]
                and r["guide"] in training[ENVS.index(r["guide_env"])]]
    got = [r for s in selected.values() for r in s.records()]
    assert sorted(r["file"] for r in got) == sorted(r["file"] for r in expected) and got
    for env, selection in selected.items():
        assert isinstance(selection.rows, np.ndarray) and isinstance(selection.labels, np.ndarray)
        for k, r in enumerate(selection.records()):
            assert r["source_env"] == ENVS[env] and selection.labels[k] == CLASSES.index(r["class_name"])
    images = SyntheticImages(selected[1], None, "cdga-ig")
    x, y = images[0]
    assert x.shape == (3, 4, 4) and y == selected[1].labels[0]
    # what a DataLoader worker receives is arrays and the index's folder, not a list of records per image
    assert len(pickle.dumps(images.selection.rows)) < 200 + 8 * len(images)
    index = pickle.loads(pickle.dumps(selected[1].index))
    assert len(pickle.dumps(selected[1].index)) < 500 and index.file(3) == selected[1].index.file(3)
    os.remove(images.selection.path(0))
    with pytest.raises(SyntheticDataError, match="not on disk.*Re-run the generator"):
        images[0]
    # where-filters are vectorised over the index's columns
    none = domains.select("cdga-ig", ENVS, CLASSES, [], where=lambda ix: ix.param("rho") < 0.5)
    assert sum(len(s) for s in none.values()) == 0


def test_unknown_env_in_an_index_names_a_record(synthetic_root):
    with pytest.raises(SyntheticDataError, match="names env 'env a', not one of"):
        SyntheticDomains(synthetic_root, "Tiny").select("cdga-ig", ["env_b", "env_c", "env_d"], CLASSES, [])


def test_manifest_writer_drops_a_cut_last_line_before_appending(tmp_path):
    path = str(tmp_path / "manifest.x.shard-00000-of-00001.jsonl")
    with open(path, "w") as f:
        f.write('{"a": 1}\n{"b": 2')
    with ManifestWriter(path) as writer:
        writer.write([{"c": 3}])
    with open(path) as f:
        assert [json.loads(line) for line in f] == [{"a": 1}, {"c": 3}]


def test_spill_store_round_trips_and_keeps_nothing_in_memory(tmp_path):
    store = SpillStore(1000, (3, 16, 16), str(tmp_path))
    assert not os.listdir(tmp_path)  # unlinked at once: the file never outlives the run
    images = {i: torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8) for i in (0, 7, 999)}
    for i, image in images.items():
        store.put(i, image)
    store.put(7, images[7].flip(0))
    assert torch.equal(store.get(0), images[0]) and torch.equal(store.get(999), images[999])
    assert torch.equal(store.get(7), images[7].flip(0)) and store.versions[7] == 2
    assert 5 not in store and 7 in store and store.refreshed() == [0, 7, 999]
    with pytest.raises(ValueError, match="bytes for a slot"):
        store.put(1, torch.zeros(3, 8, 8, dtype=torch.uint8))
    store.close()


def test_recorded_files_and_streamed_plans(tmp_path):
    from offline_generation.generate import Plan, RecordedFiles, make_batches

    class Unit:
        def __init__(self, n):
            self.size = n

    batches = make_batches(iter([Unit(2), Unit(3), Unit(1), Unit(4)]), 5)
    assert not isinstance(batches, list)  # a generator: the plan is never held whole
    assert [[u.size for u in b] for b in batches] == [[2, 3], [1, 4]]
    root = str(tmp_path / "Tiny")
    records = make_records()
    write(root, records)
    recorded = RecordedFiles(root, "cdga-ig")
    assert len(recorded) == len(records)
    assert all(recorded.done(r["file"]) for r in records)
    os.remove(os.path.join(root, records[0]["file"]))
    recorded = RecordedFiles(root, "cdga-ig")
    assert not recorded.done(records[0]["file"]) and not recorded.done("cdga-ig__env_b__to__env_c/cat/other.png")

    class Runner:
        def plan(self, folder, envs):
            yield from (Unit(1) for _ in range(7))

    plan = Plan(Runner(), None, None, 2, num_shards=2, shard_id=1)
    assert [len(b) for b in plan] == [2, 1] and [len(b) for b in plan] == [2, 1]  # batches 1 and 3; re-iterable


def test_records_without_source_images_pass_the_split_filter(tmp_path):
    """Latent-prior's records have no single source image: the training-split filter keeps them."""
    root = str(tmp_path / "Tiny")
    records = [dict(file=f"latent-prior__env_b/cat/prior_{k:06d}.png", method="latent-prior", source_env="env_b",
                    class_name="cat", sample=k, params=dict(eta=0.0)) for k in range(3)]
    write(root, records, method="latent-prior")
    selected = SyntheticDomains(str(tmp_path), "Tiny").select("latent-prior", ENVS, CLASSES, [0],
                                                              training_sources={1: {"env_b/cat/img0.png"}, 2: set()})
    assert len(selected[1]) == 3 and len(selected[2]) == 0


def test_a_run_reads_its_own_trials_draw_and_the_shared_draw_only_without_one(tmp_path):
    """Records made per trial carry their split's digest: a run reads the ones of its own split, and only those
    when there are any; a run whose trial has none reads the shared draw; a method that always fits on a split
    (``per_split``) never falls back to a shared draw."""
    root = str(tmp_path / "Tiny")
    shared = [dict(file=f"edsam__env_b/cat/img{k}_0.png", method="edsam", source_env="env_b", class_name="cat",
                   sample=0, params=dict(rho=0.5)) for k in range(2)]
    drawn = [dict(file=f"edsam__env_b/cat/t{t}_img{k}_0.png", method="edsam", source_env="env_b", class_name="cat",
                  sample=0, params=dict(rho=0.5, trial_seed=t, validation_digest=digest, holdout_fraction=0.2))
             for t, digest in ((7, 111), (8, 222)) for k in range(3)]
    write(root, shared + drawn, method="edsam")
    domains = SyntheticDomains(str(tmp_path), "Tiny")

    def files(digest, per_split=False):
        selected = domains.select("edsam", ENVS, CLASSES, [0], validation_digests={1: digest, 2: 5},
                                  per_split=per_split)
        return sorted(r["file"].rsplit("/", 1)[1] for r in selected[1].records())
    assert files(111) == ["t7_img0_0.png", "t7_img1_0.png", "t7_img2_0.png"]
    assert files(222) == ["t8_img0_0.png", "t8_img1_0.png", "t8_img2_0.png"]
    assert files(333) == ["img0_0.png", "img1_0.png"]
    assert files(333, per_split=True) == [] and files(111, per_split=True)[0] == "t7_img0_0.png"
