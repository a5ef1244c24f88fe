"""DomainNet at scale, simulated: a run's start over millions of synthetic records, DomainFusion's pool, and the
generator's plan and resume over a 600k-image folder tree. Prints the reader before the index as the baseline,
measured in the same invocation.

    python sweeps/scale.py                       # 1M and 6M records, pool, generator (cost: docs/performance.md)
    python sweeps/scale.py --records 1000000     # one size
    python sweeps/scale.py --parts reader        # reader | workers | pool | generator | report

Each measurement runs in a fresh process so its peak memory (``ru_maxrss``) is its own. Records are shaped like
CDGA-IG's on DomainNet (source and guide image, prompt, parameters): 6 envs, 345 classes, 586,575 source images.
Nothing here needs image files: the index is built without its on-disk check (``verify=False``), which a real
build does with one directory listing per folder.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ENVS = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]
CLASSES = [f"class_{k:03d}_{'object' * (1 + k % 3)}" for k in range(345)]
IMAGES = 586_575
METHOD = "cdga-ig"


def per_env_class():
    per = IMAGES // (len(ENVS) * len(CLASSES))
    extra = IMAGES - per * len(ENVS) * len(CLASSES)
    return [per + (1 if k < extra else 0) for k in range(len(ENVS) * len(CLASSES))]


def source_images():
    """DomainNet-shaped relative image paths, in the generator's (sorted) order."""
    counts = per_env_class()
    for e, env in enumerate(ENVS):
        for c, cls in enumerate(CLASSES):
            for k in range(counts[e * len(CLASSES) + c]):
                yield env, cls, f"{env}/{cls}/{env}_{c:03d}_{k:06d}.jpg"


def training_paths(env):
    """The 80% of an env's images a run trains on (DomainBed's holdout fraction 0.2)."""
    return [p for e, _, p in source_images() if e == env and hash(p) % 5]


def write_manifests(dataset_root, n_records):
    """``n_records`` CDGA-IG-shaped records over the DomainNet source images, written as one shard."""
    from domainbed_diffusion.data.layout import env_folder, manifest_name
    os.makedirs(dataset_root, exist_ok=True)
    path = os.path.join(dataset_root, manifest_name(METHOD))
    written = 0
    by_env = [[s for s in source_images() if s[0] == env] for env in ENVS]
    interleaved = [s for group in zip(*by_env) for s in group]  # any prefix covers every env, as a full set does
    with open(path, "w") as f:
        for sample in range(10 ** 6):
            for env, cls, rel in interleaved:
                for guide_env in ENVS:
                    if guide_env == env:
                        continue
                    stem = os.path.splitext(os.path.basename(rel))[0]
                    record = dict(file=f"{env_folder(METHOD, env, guide_env)}/{cls}/{stem}_{sample}.png",
                                  method=METHOD, dataset="DomainNet", source_env=env, source=rel, guide_env=guide_env,
                                  guide=f"{guide_env}/{cls}/{guide_env}_{CLASSES.index(cls):03d}_000000.jpg",
                                  prompt=f"a {cls.replace('_', ' ')}", class_name=cls, sample=sample,
                                  params=dict(steps=50, strength=0.75, guidance=7.5, resolution=256, guide_mix=1.0),
                                  seed=hash(rel) % 2 ** 31, model_id="CompVis/stable-diffusion-v1-4")
                    f.write(json.dumps(record, sort_keys=True) + "\n")
                    written += 1
                    if written == n_records:
                        return path


# -- measured in child processes ------------------------------------------------------------------------------
def _peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _private_mib():
    fields = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                fields[parts[0].rstrip(":")] = int(parts[1])
    return (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / 1024


def baseline_select(domains, env_names, class_names, test_envs, training_sources):
    """The reader before the index: every JSON record parsed into a dict, then filtered one by one."""
    env_index = {name: i for i, name in enumerate(env_names)}
    class_index = {name: i for i, name in enumerate(class_names)}
    selected = {i: [] for i in range(len(env_names)) if i not in test_envs}
    for record in domains.records(METHOD, check_files=False):
        source = env_index[record["source_env"]]
        guide = env_index.get(record.get("guide_env"))
        if source in test_envs or guide in test_envs:
            continue
        if record["source"] not in training_sources.get(source, ()):
            continue
        if guide is not None and record["guide"] not in training_sources.get(guide, ()):
            continue
        selected[source].append((os.path.join(domains.dataset_root, record["file"]),
                                 class_index[record["class_name"]], record))
    return selected


def child_start(root, reader):
    """A run's start: the training split's paths, then the leak-free selection for test env 0."""
    from domainbed_diffusion.data.layout import SyntheticDomains
    training = {i: set(training_paths(env)) for i, env in enumerate(ENVS) if i != 0}  # the dataset's side
    base = _peak_mib()
    start = time.perf_counter()
    domains = SyntheticDomains(root, "DomainNet")
    if reader == "baseline":
        selected = baseline_select(domains, ENVS, CLASSES, [0], training)
    else:
        selected = domains.select(METHOD, ENVS, CLASSES, [0], training_sources=training)
    elapsed = time.perf_counter() - start
    n = sum(len(v) for v in selected.values())
    return dict(seconds=elapsed, peak_mib=_peak_mib(), import_mib=base, selected=n)  # import_mib: before start


def child_workers(root, reader, workers):
    """Private memory of each DataLoader worker after it touched every selected image's path once."""
    import torch
    from domainbed_diffusion.data.layout import SyntheticDomains
    training = {i: set(training_paths(env)) for i, env in enumerate(ENVS) if i != 0}
    domains = SyntheticDomains(root, "DomainNet")
    if reader == "baseline":
        items = [item for v in baseline_select(domains, ENVS, CLASSES, [0], training).values() for item in v]
        path_of = lambda k: items[k][0]  # noqa: E731
        n = len(items)
    else:
        selections = list(domains.select(METHOD, ENVS, CLASSES, [0], training_sources=training).values())
        offsets = [0]
        for s in selections:
            offsets.append(offsets[-1] + len(s))
        n = offsets[-1]

        def path_of(k):
            for s, lo, hi in zip(selections, offsets, offsets[1:]):
                if k < hi:
                    return s.path(k - lo)

    class Touch(torch.utils.data.Dataset):
        def __len__(self):
            return max(1, workers)

        def __getitem__(self, w):
            chunk = range(w, n, max(1, workers))
            total = sum(len(path_of(k)) for k in chunk)
            return torch.tensor([_private_mib(), total])

    parent = _private_mib()
    loader = torch.utils.data.DataLoader(Touch(), batch_size=None, num_workers=workers)
    private = [float(x[0]) for x in loader]
    return dict(parent_private_mib=parent, worker_private_mib=private if workers else [], selected=n)


def child_build(root):
    from domainbed_diffusion.data.index import build
    start = time.perf_counter()
    build(os.path.join(root, "DomainNet"), METHOD, verify=False)
    return dict(seconds=time.perf_counter() - start, peak_mib=_peak_mib())


def child_pool(size, refreshes, store):
    """RSS growth of DomainFusion's pool over ``refreshes`` refreshed images at ``size`` px, for the in-memory
    dict the pool used before and for the spill store, at DomainNet's training-set size."""
    import numpy as np
    import torch
    from domainbed_diffusion.methods.domainfusion import SpillStore
    n = int(IMAGES * 0.8 * 5 / 6)  # the 5 training envs' training splits
    image = torch.randint(0, 256, (3, size, size), dtype=torch.uint8)
    base = _private_mib()
    start = time.perf_counter()
    if store == "memory":
        kept = {}
        for i in range(refreshes):
            kept[i * 7 % n] = image.clone()
    else:
        with tempfile.TemporaryDirectory() as folder:
            spill = SpillStore(n, (3, size, size), folder)
            for i in range(refreshes):
                spill.put(i * 7 % n, image)
            read = spill.get(7)
            assert torch.equal(read, image)
            spill.close()
    return dict(seconds=time.perf_counter() - start, growth_mib=_private_mib() - base, entries=n,
                versions_mib=np.zeros(n, dtype=np.int32).nbytes / 2 ** 20)


def child_generator(data_dir, out_dir, methods):
    """Time and peak memory of the generator's ``--dry_run`` over the simulated tree (with recorded images, it
    checks each as a resume does)."""
    from offline_generation.cli import main
    start = time.perf_counter()
    argv = ["--dataset", "DomainNet", "--data_dir", data_dir, "--methods", *methods, "--dry_run", "--synthetic_root",
            out_dir, "--num_samples", "10", "--model", "sim", "--batch_size", "64"]
    with open(os.devnull, "w") as devnull:
        stdout, sys.stdout = sys.stdout, devnull
        try:
            code = main(argv)
        finally:
            sys.stdout = stdout
    return dict(seconds=time.perf_counter() - start, peak_mib=_peak_mib(), code=code)


def child_report(root):
    """The report's pass over a method's records: codes, the bounded sample, CDGA-IG's guide-less pairs."""
    from domainbed_diffusion.data.index import open_index
    from offline_generation import report
    start = time.perf_counter()
    index = open_index(os.path.join(root, "DomainNet"), METHOD)
    source_env, guide_env, labels = report.codes(index, ENVS, CLASSES, METHOD, root)
    rows = report.sample(index, source_env, guide_env, labels, len(ENVS), len(CLASSES), 50, 0)
    lost = report.pairs_without_guide(index, guide_env, len(ENVS))
    return dict(seconds=time.perf_counter() - start, peak_mib=_peak_mib(), sampled=len(rows), lost=lost["count"])


def run_child(*args):
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONHASHSEED="0"))
    if out.returncode:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the parts ---------------------------------------------------------------------------------------------------
def part_reader(work, sizes, baseline_max):
    print("\n## A run's start: training split + leak-free selection for one test env (CDGA-IG records)")
    print(f"{'records':>10} {'reader':>9} {'start s':>9} {'peak MiB':>9} {'before MiB':>11} {'selected':>10}")
    rows = []
    for n in sizes:
        root = os.path.join(work, f"synthetic-{n}")
        if not os.path.isfile(os.path.join(root, "DomainNet", "manifest.cdga-ig.shard-00000-of-00001.jsonl")):
            t = time.perf_counter()
            write_manifests(os.path.join(root, "DomainNet"), n)
            print(f"    (wrote {n:,} records in {time.perf_counter() - t:.0f}s)")
        built = run_child("build", root)
        print(f"    (index built once, by the generator or `offline_generation index`: {built['seconds']:.1f}s, "
              f"peak {built['peak_mib']:.0f} MiB)")
        readers = (["baseline"] if n <= baseline_max else []) + ["index"]
        for reader in readers:
            r = run_child("start", root, reader)
            rows.append(dict(records=n, reader=reader, **r))
            print(f"{n:>10,} {reader:>9} {r['seconds']:>9.2f} {r['peak_mib']:>9.0f} {r['import_mib']:>11.0f} "
                  f"{r['selected']:>10,}")
    return rows


def part_report(work, sizes):
    print("\n## The synthetic-domain report's pass over the records (50 per source env, guide env and class)")
    for n in sizes:
        root = os.path.join(work, f"synthetic-{n}")
        if not os.path.isfile(os.path.join(root, "DomainNet", "manifest.cdga-ig.shard-00000-of-00001.jsonl")):
            write_manifests(os.path.join(root, "DomainNet"), n)
        run_child("build", root)
        r = run_child("report", root)
        print(f"{n:>10,} records: {r['seconds']:.2f}s, peak {r['peak_mib']:.0f} MiB, {r['sampled']:,} rows sampled "
              f"for features")


def part_workers(work, n, workers_list):
    print(f"\n## DataLoader workers ({n:,} records): private memory per worker after touching every selected path")
    root = os.path.join(work, f"synthetic-{n}")
    for reader in ("baseline", "index"):
        for workers in workers_list:
            r = run_child("workers", root, reader, workers)
            per = ", ".join(f"{m:.0f}" for m in r["worker_private_mib"]) or "-"
            print(f"    {reader:>8}, {workers} workers: parent private {r['parent_private_mib']:.0f} MiB; "
                  f"workers' private MiB: {per}")


def part_pool(size, refreshes):
    print(f"\n## DomainFusion's pool at DomainNet size, {refreshes:,} refreshed images at {size} px")
    for store in ("memory", "spill"):
        r = run_child("pool", size, refreshes, store)
        print(f"    {store:>6}: private memory growth {r['growth_mib']:.0f} MiB in {r['seconds']:.1f}s "
              f"({r['entries']:,} entries; version counts {r['versions_mib']:.1f} MiB)")


def make_tree(data_dir):
    """DomainNet's folder tree with 586,575 empty image files (the generator's plan only lists them)."""
    root = os.path.join(data_dir, "domain_net")
    marker = os.path.join(data_dir, ".complete")
    if os.path.isfile(marker):
        return
    for env, cls, rel in source_images():
        path = os.path.join(root, rel)
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            os.makedirs(folder)
        open(path, "w").close()
    open(marker, "w").close()


def half_done(data_dir, out_dir):
    """A half-done job: manifests (and empty image files) for the first half of each method's plan."""
    from domainbed_diffusion.data.layout import ManifestWriter, manifest_name
    from offline_generation.generate import plan_method, record_of
    from offline_generation.job import GenerationJob
    from offline_generation.sources import scan
    job = GenerationJob("DomainNet", data_dir, ("cdga-ig",), out_dir, model="sim", batch_size=64,
                        settings={"cdga-ig": dict(dataset="DomainNet", batch_size=64)})
    folder = scan(data_dir, "DomainNet")
    root = os.path.join(out_dir, "DomainNet")
    for method in job.methods:
        _, _, plan = plan_method(job, folder, folder.env_names, method, embedded=False)
        total = sum(u.size for b in plan for u in b)
        written = 0
        with ManifestWriter(os.path.join(root, manifest_name(method))) as writer:
            for batch in plan:
                items = [it for u in batch for it in u.items]
                for it in items:
                    path = os.path.join(root, it.file)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    open(path, "w").close()
                writer.write([record_of(it, "DomainNet", "sim") for it in items])
                written += len(items)
                if written >= total // 2:
                    break
        print(f"    (half-done {method}: {written:,} of {total:,} images recorded)")


def part_generator(work):
    print("\n## Generator over a simulated DomainNet tree (586,575 empty images): cdga-ig + edsam (M=10) plans")
    data_dir = os.path.join(work, "tree")
    t = time.perf_counter()
    make_tree(data_dir)
    print(f"    (tree ready in {time.perf_counter() - t:.0f}s)")
    out_dir = os.path.join(work, "tree-synthetic")
    r = run_child("generator", data_dir, out_dir, ["cdga-ig", "edsam"])
    print(f"    --dry_run, cdga-ig + edsam (2.9M + 5.9M images planned): {r['seconds']:.1f}s, "
          f"peak {r['peak_mib']:.0f} MiB")
    if not os.path.isdir(os.path.join(out_dir, "DomainNet")):
        t = time.perf_counter()
        half_done(data_dir, out_dir)
        print(f"    (half-done job written in {time.perf_counter() - t:.0f}s)")
    r = run_child("generator", data_dir, out_dir, ["cdga-ig"])
    print(f"    resume of a half-done cdga-ig (--dry_run checks every image as a rerun does): {r['seconds']:.1f}s, "
          f"peak {r['peak_mib']:.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, nargs="+", default=[1_000_000, 6_000_000])
    parser.add_argument("--baseline_max", type=int, default=6_000_000, help="skip the baseline above this size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--pool_refreshes", type=int, default=5000)
    parser.add_argument("--parts", nargs="+", default=["reader", "workers", "pool", "generator", "report"])
    parser.add_argument("--work_dir", default=None, help="where the simulated files go (default: a temp folder, "
                                                         "removed at the end)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        fn = {"start": child_start, "workers": child_workers, "build": child_build, "pool": child_pool,
              "generator": child_generator, "report": child_report}[kind]
        print(json.dumps(fn(*rest)))
        return
    work = args.work_dir or tempfile.mkdtemp(prefix="scale-")
    print(f"# DomainNet-scale simulation ({os.cpu_count()} CPUs), files under {work}")
    try:
        if "reader" in args.parts:
            part_reader(work, args.records, args.baseline_max)
        if "workers" in args.parts:
            part_workers(work, min(args.records), args.workers)
        if "pool" in args.parts:
            part_pool(320, args.pool_refreshes)
        if "generator" in args.parts:
            part_generator(work)
        if "report" in args.parts:
            part_report(work, args.records)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
