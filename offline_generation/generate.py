"""Generation runs: deterministic batches, shards, resumption, a writer thread, progress.

Work is cut into batches in a fixed order before anything is skipped or sharded, and batch ``b`` belongs to
shard ``b % num_shards``: a batch is made of the same images whatever the number of shards and whatever an
earlier run finished, so for a given batch size an image's bytes do not depend on how the job was split or
interrupted. (Seeds come from image paths, so another batch size changes pixels only by float rounding.) A batch is
done when each of its images is on disk and recorded in a manifest (or recorded as skipped): a rerun skips it.
Images are written atomically by a background thread while the next batch runs on the device.
"""
import collections
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from domainbed_diffusion import catalogue
from domainbed_diffusion.data.files import save_png
from domainbed_diffusion.diffusion.choice import generators, trained_on
from domainbed_diffusion.generation import make_batches
from domainbed_diffusion.benchmark.shipped import EMBEDDED, MODEL_CARD
from domainbed_diffusion.data.layout import ManifestWriter, manifest_name
from domainbed_diffusion.data.index import build as build_index
from domainbed_diffusion.data.index import manifest_paths, recorded_file_names

from .job import GenerationJob, save_config
from .sources import scan


def shard_of(batches, num_shards, shard_id):
    return (b for i, b in enumerate(batches) if i % num_shards == shard_id)


class Plan:
    """The batches of one method for one shard, made anew on each iteration from the streamed plan."""

    def __init__(self, runner, folder, envs, per_batch, num_shards=1, shard_id=0):
        self.runner, self.folder, self.envs = runner, folder, envs
        self.per_batch, self.num_shards, self.shard_id = per_batch, num_shards, shard_id

    def __iter__(self):
        return shard_of(make_batches(self.runner.plan(self.folder, self.envs), self.per_batch), self.num_shards,
                        self.shard_id)


class RecordedFiles:
    """The files a method's manifests (and skip lists) record, as a sorted array of 64-bit hashes: a resumed
    DomainNet job holds 8 bytes per recorded image, not its record. A recorded file counts as done only if it
    is also on disk (checked against cached listings of the most recent folders, not one ``stat`` per file)."""

    def __init__(self, out_root, method, cached_folders=256):
        names = recorded_file_names(manifest_paths(out_root, method))
        self.hashes = np.unique(np.fromiter((_hash(n) for n in names), dtype=np.int64))
        self.skipped = _read_skips(out_root, method)
        self.out_root, self.cached_folders = out_root, cached_folders
        self._listings = collections.OrderedDict()

    def __len__(self):
        return len(self.hashes)

    def recorded(self, file):
        h = _hash(file)
        i = int(np.searchsorted(self.hashes, h))
        return i < len(self.hashes) and self.hashes[i] == h

    def on_disk(self, file):
        folder, name = os.path.split(file)
        names = self._listings.get(folder)
        if names is None:
            try:
                names = set(os.listdir(os.path.join(self.out_root, folder)))
            except FileNotFoundError:
                names = set()
            self._listings[folder] = names
            if len(self._listings) > self.cached_folders:
                self._listings.popitem(last=False)
        else:
            self._listings.move_to_end(folder)
        return name in names

    def done(self, file):
        return file in self.skipped or (self.recorded(file) and self.on_disk(file))


def _hash(text):
    return hash(text)  # a process-stable 64-bit hash; a collision still needs the file on disk to be skipped


def distributed_shard(job):
    """``--num_shards/--shard_id``, else torchrun/accelerate's ``WORLD_SIZE/RANK``, else a SLURM array's."""
    if job.num_shards is not None:
        return job.num_shards, job.shard_id or 0
    env = os.environ
    if "WORLD_SIZE" in env and "RANK" in env:
        return int(env["WORLD_SIZE"]), int(env["RANK"])
    if "SLURM_ARRAY_TASK_COUNT" in env and "SLURM_ARRAY_TASK_ID" in env:
        return int(env["SLURM_ARRAY_TASK_COUNT"]), int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    return 1, 0


def record_of(item, dataset, model_id, model_trained_on=None):
    """An image's manifest record; ``model_trained_on``: the envs its model's card lists (None: no card)."""
    return dict(file=item.file, method=item.method, dataset=dataset, source_env=item.source_env, source=item.source,
                guide_env=item.guide_env, guide=item.guide, prompt=item.prompt, class_name=item.class_name,
                sample=item.sample, params=item.params, seed=item.seed, model_id=model_id,
                model_trained_on=model_trained_on)


def skip_reason(item):
    """Why an item of a batch was not made: an item made from one source image lost it (unreadable, named in the
    warning above); one sampled from a domain's prior (latent-prior) found no candidate within the tolerance."""
    if item.source is not None:
        return f"source image unreadable: {item.source}"
    return "no accepted candidate within the tolerance (latent-prior's rejection sampling)"


def skips_name(method, shard_id, num_shards):
    return manifest_name(method, shard_id, num_shards).replace("manifest.", "skipped.", 1)


def _read_skips(out_root, method):
    skipped = set()
    for name in os.listdir(out_root) if os.path.isdir(out_root) else []:
        if name.startswith(f"skipped.{method}.") and name.endswith(".jsonl"):
            with open(os.path.join(out_root, name)) as f:
                skipped.update(json.loads(line)["file"] for line in f if line.strip().endswith("}"))
    return skipped


class Writer(threading.Thread):
    """Saves a batch's PNGs atomically, then appends their records (and the batch's skips) to the manifests."""

    def __init__(self, out_root, manifest, skips):
        super().__init__(daemon=True)
        self.out_root, self.manifest, self.skips = out_root, manifest, skips
        self.queue = queue.Queue(maxsize=4)
        self.error = None

    def run(self):
        while True:
            job = self.queue.get()
            if job is None:
                return
            results, records, skipped = job
            try:
                for (item, pixels) in results:
                    save_png(Image.fromarray(pixels), os.path.join(self.out_root, item.file))
                self.manifest.write(records)
                self.skips.write(skipped)
            except Exception as error:  # surfaced to the main thread by put/close
                self.error = error
                return

    def put(self, job):
        if self.error:
            raise self.error
        self.queue.put(job)

    def close(self):
        self.queue.put(None)
        self.join()
        if self.error:
            raise self.error


def plan_method(job, folder, envs, method, embedded, num_shards=1, shard_id=0, generator=None):
    # per-test-env models write under their own folder (their tag)
    cfg = job.config(method, embedded, generator.tag if generator else None)
    if generator and generator.held_out is not None:
        envs = [e for e in envs if e != generator.held_out]  # its images serve runs whose test env it excludes
    runner = catalogue.spec(method).make(cfg)
    return cfg, runner, Plan(runner, folder, envs, runner.units_per_batch or cfg.batch_size, num_shards, shard_id)


def describe_plan(folder, method, batches, cfg, stream=None, out_root=None):
    """Images per (source env, guide env), the disk they need (PNG, estimated) and, given the output folder,
    how many a rerun would skip as done."""
    counts, done = {}, 0
    recorded = RecordedFiles(out_root, method) if out_root and os.path.isdir(out_root) else None
    for batch in batches:
        for unit in batch:
            for item in unit.items:
                key = f"{item.source_env} -> {item.guide_env}" if item.guide_env else item.source_env
                counts[key] = counts.get(key, 0) + 1
                done += bool(recorded is not None and recorded.done(item.file))
    total = sum(counts.values())
    per_image = cfg.resolution * cfg.resolution * 3 * 0.5 + 300  # PNG of generated images: about half of raw
    print(f"{method}: {total} images at {cfg.resolution}px, steps {cfg.steps}, strength {cfg.strength}, "
          f"guidance {cfg.guidance}; disk ~{total * per_image / 2 ** 20:.1f} MiB; {done} already done", file=stream)
    for key in sorted(counts):
        print(f"    {key}: {counts[key]}", file=stream)
    return total


def run(job, stream=None):
    """Generate the selected methods' synthetic domains; returns {method: images made in this run}."""
    folder = scan(job.data_dir, job.dataset, job.dataset_dir, job.envs,
                  max_per_class=job.max_per_class)
    envs = job.envs or folder.env_names
    num_shards, shard_id = distributed_shard(job)
    if not 0 <= shard_id < num_shards:
        raise ValueError(f"--shard_id {shard_id} is outside 0..{num_shards - 1}")
    embedded = (job.model or EMBEDDED).startswith(EMBEDDED)
    out_root = os.path.join(job.synthetic_root, job.dataset)
    jobs = [(g, {m: plan_method(job, folder, envs, m, embedded, num_shards, shard_id, g) for m in job.methods})
            for g in generators(job.model, job.dataset, folder.env_names)]  # any env can be a test env
    if job.dry_run:
        print(f"plan for {job.dataset} ({len(folder.images)} source images, envs {envs}), shard {shard_id} of "
              f"{num_shards}, into {out_root}:", file=stream)
        for generator, plans in jobs:
            if generator.held_out is not None:
                print(f"model {generator.model} (for test env {generator.held_out}):", file=stream)
            for method, (cfg, runner, batches) in plans.items():
                describe_plan(folder, method, batches, cfg, stream, out_root)
        return {}
    start_shard(out_root, job, num_shards, shard_id)
    from domainbed_diffusion.diffusion import LatentDiffusion, loading
    device = loading.resolve_device(job.device)  # torchrun / accelerate: this rank's own GPU
    made = {}
    for generator, plans in jobs:
        model_folder = loading.resolve_model(generator.model)  # resolved once: its card checked, then loaded
        seen = trained_on(model_folder)
        if generator.held_out is not None and generator.held_out in (seen or ()):
            raise ValueError(f"--model {job.model}: {generator.model} for test env {generator.held_out} lists "
                             f"{generator.held_out} among the envs it was trained on ({MODEL_CARD})")
        model = LatentDiffusion.from_pretrained(model_folder, device=device, dtype=job.dtype)
        if job.compile or job.channels_last:
            model.optimize(channels_last=job.channels_last, compile=job.compile, batch_size=job.batch_size)
        for method, (cfg, runner, batches) in plans.items():
            save_config(out_root, cfg)
            made[method] = made.get(method, 0) + run_method(model, folder, method, runner, batches, out_root,
                                                            num_shards, shard_id, stream, seen, index=False)
    for method in job.methods:
        index_when_last(out_root, method, num_shards, shard_id, stream)
    return made


def shard_marker(out_root, method, shard_id, num_shards):
    return os.path.join(out_root, "logs", f"done.{method}.shard-{shard_id:05d}-of-{num_shards:05d}")


def start_shard(out_root, job, num_shards, shard_id):
    """This shard's markers of an earlier run removed: they say it finished, and it has not yet."""
    for method in job.methods:
        marker = shard_marker(out_root, method, shard_id, num_shards)
        if os.path.exists(marker):
            os.remove(marker)


def index_when_last(out_root, method, num_shards, shard_id, stream=None):
    """Mark this shard of ``method`` done; the shard that finds every shard done builds the index, once, on
    complete manifests (torchrun's and SLURM's shards finish at different times: each building its own would
    cost DomainNet's 3 GB and two minutes per shard, on manifests others are still writing)."""
    if not manifest_paths(out_root, method):
        return
    marker = shard_marker(out_root, method, shard_id, num_shards)
    os.makedirs(os.path.dirname(marker), exist_ok=True)
    open(marker, "w").close()
    pending = [k for k in range(num_shards) if not os.path.exists(shard_marker(out_root, method, k, num_shards))]
    if pending:
        print(f"{method}: the index is built by the last shard to finish ({len(pending)} still running)",
              file=stream)
        return
    build_index(out_root, method)


def run_method(model, folder, method, runner, batches, out_root, num_shards, shard_id, stream=None,
               model_trained_on=None, index=True):
    """Make the images of ``batches`` (re-iterable: a list or a ``Plan``) that are not done yet, then (``index``)
    index the method's manifests so that runs start from the index."""
    os.makedirs(out_root, exist_ok=True)
    recorded = RecordedFiles(out_root, method)
    total = sum(u.size for b in batches for u in b)  # a first pass over the streamed plan, for the progress bar
    infos = []  # a method's summary lines (latent-prior's acceptance rates), printed after its progress bar

    def report(message, level="warning"):
        if level == "info":
            infos.append(message)
        if level == "warning":
            tqdm.write(f"warning: {message}", file=sys.stderr)

    manifest = ManifestWriter(os.path.join(out_root, manifest_name(method, shard_id, num_shards)))
    skips = ManifestWriter(os.path.join(out_root, skips_name(method, shard_id, num_shards)))
    writer = Writer(out_root, manifest, skips)
    writer.start()
    start, made, already, skipped = time.time(), 0, 0, 0
    tag = getattr(runner.cfg, "model_tag", None)
    desc = method if tag is None else f"{method} {tag}"
    desc = desc if num_shards == 1 else f"{desc} [shard {shard_id + 1}/{num_shards}]"
    bar = tqdm(total=total, unit="img", desc=desc, file=stream, dynamic_ncols=True, mininterval=1.0)
    try:
        for batch in batches:
            size = sum(u.size for u in batch)
            if all(recorded.done(it.file) for u in batch for it in u.items):
                already += size
                bar.update(size)
                continue
            results = runner.run(model, batch, folder, report)
            produced = {item.file for item, _ in results}
            skipped_items = [{"file": it.file, "reason": skip_reason(it)}
                             for u in batch for it in u.items if it.file not in produced]
            skipped += len(skipped_items)
            records = [record_of(item, folder.name, model.model_id, model_trained_on) for item, _ in results]
            writer.put((results, records, skipped_items))
            made += len(results)
            bar.update(size)
    finally:
        bar.close()
        writer.close()
        manifest.close()
        skips.close()
    elapsed = time.time() - start
    rate = made / elapsed if elapsed > 0 else 0.0
    print(f"{method}: made {made} images in {elapsed:.1f}s ({rate:.2f} images/s); {already} were already done"
          + (f"; {skipped} skipped (reasons in {skips_name(method, shard_id, num_shards)})" if skipped else "")
          + f"; output {out_root}", file=stream)
    if index:
        build_index(out_root, method)
    if infos:  # per-unit details (latent-prior's bandwidths and acceptance rates): a log, not the console
        details = os.path.join(out_root, "logs", f"{method}.shard-{shard_id + 1:05d}-of-{num_shards:05d}.details.log")
        os.makedirs(os.path.dirname(details), exist_ok=True)
        with open(details, "a") as f:
            f.write("\n".join(infos) + "\n")
        print(f"{method}: {len(infos)} lines of details (bandwidths, acceptance rates) in {details}", file=stream)
    return made


class WorkerFailed(RuntimeError):
    """A worker of ``--workers`` exited with an error; what the others finished is on disk and kept."""


WORKER = "DOMAINBED_DIFFUSION_GENERATION_WORKER"  # set in a worker's environment: it stops without a word


def stop_workers(procs, grace=60):
    """Interrupt the workers as Ctrl-C would (each saves the images it holds and closes its manifests), then wait;
    kill what is still running after ``grace`` seconds."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.time() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


def worker_commands(job_file, workers, num_shards=1, shard_id=0):
    """The command of each of ``workers`` processes (each reads the job saved in ``job_file``): worker j runs shard
    ``shard_id + j * num_shards`` of ``num_shards * workers``, so together they make exactly this job's batches
    (b mod num_shards)."""
    total = num_shards * workers
    return [[sys.executable, "-m", "offline_generation", "worker", job_file, "--num_shards", str(total),
             "--shard_id", str(shard_id + j * num_shards)] for j in range(workers)]


def run_worker(job_file, num_shards, shard_id):
    """A worker of ``--workers``: one shard of the saved job, in this process."""
    job = GenerationJob.load(job_file)
    return run(replace(job, num_shards=num_shards, shard_id=shard_id, workers=None))


MADE = re.compile(r"made (\d+) images .*?; (\d+) were already done(?:; (\d+) skipped)?")


def worker_summary(log, most=5):
    """One line for a worker's log: images made, already done and skipped over every (model, method) it ran, then
    its first warnings and errors, if any."""
    made = done = skipped = 0
    problems = []
    with open(log, errors="replace") as f:
        for line in f:
            m = MADE.search(line)
            if m:
                made, done, skipped = made + int(m[1]), done + int(m[2]), skipped + int(m[3] or 0)
            elif line.startswith(("warning", "error")):
                problems.append(line.strip())
    text = f"made {made} images, {done} already done, {skipped} skipped (its log: {log})"
    return "\n".join([text, *problems[:most]] + ([f"... {len(problems) - most} more in the log"]
                                                  if len(problems) > most else []))


class ShardProgress:
    """Images recorded so far by one shard, read from the growth of its manifests (only the new bytes are read)."""

    def __init__(self, out_root, shard_id, num_shards):
        self.out_root, self.suffix = out_root, f".shard-{shard_id:05d}-of-{num_shards:05d}.jsonl"
        self.seen, self.lines = {}, 0

    def count(self):
        try:
            names = [n for n in os.listdir(self.out_root) if n.startswith("manifest.") and n.endswith(self.suffix)]
        except FileNotFoundError:
            return 0
        for name in names:
            path = os.path.join(self.out_root, name)
            with open(path, "rb") as f:
                f.seek(self.seen.get(name, 0))
                chunk = f.read()
            self.seen[name] = self.seen.get(name, 0) + len(chunk)
            self.lines += chunk.count(b"\n")
        return self.lines


def run_workers(job, stream=None, command=None, every=30.0):
    """``--workers W``: W processes of one thread each, as shards of this command, then one index per method.

    On a CPU one thread per process is at least as fast as threads in one process (``docs/performance.md``) and
    makes the bytes independent of the machine's cores and of W. Each worker writes its output to
    ``<synthetic_root>/<dataset>/logs/``; the console gets one line for all of them every ``every`` seconds (images
    recorded per worker) and one summary line per worker when it ends. ``command`` (the arguments as given,
    ``--workers`` included) is what a failure says to rerun.
    """
    stream = stream or sys.stdout
    num_shards, shard_id = distributed_shard(job)
    out_root = os.path.join(job.synthetic_root, job.dataset)
    log_dir = os.path.join(out_root, "logs")
    os.makedirs(log_dir, exist_ok=True)
    job_file = job.save(os.path.join(log_dir, f"job.{os.getpid()}.json"))
    commands = worker_commands(job_file, job.workers, num_shards, shard_id)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    env[WORKER] = "1"
    total = num_shards * job.workers
    shards = [shard_id + j * num_shards for j in range(job.workers)]
    print(f"{job.workers} worker(s) of one thread each: shard(s) {', '.join(str(k + 1) for k in shards)} of "
          f"{total}; their output: {log_dir}", file=stream, flush=True)
    progress = [ShardProgress(out_root, k, total) for k in shards]
    start, procs, logs = time.time(), [], []
    try:
        for k, worker in zip(shards, commands):
            logs.append(os.path.join(log_dir, f"worker-shard-{k + 1:05d}-of-{total:05d}.log"))
            with open(logs[-1], "w") as log:  # this run's output only; the child holds its own descriptor
                # a session of its own: Ctrl-C reaches this process only, which stops the workers below
                procs.append(subprocess.Popen(worker, env=env, stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        last = time.time()
        while any(p.poll() is None for p in procs):
            time.sleep(0.5)
            if time.time() - last >= every:
                last = time.time()
                counts = ", ".join(f"worker {j + 1}: {p.count()}" for j, p in enumerate(progress))
                print(f"generation: images recorded {counts} ({(last - start) / 60:.1f} min)", file=stream,
                      flush=True)
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        stop_workers(procs)
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for j, path in enumerate(logs):
        print(f"[worker {j + 1}] {worker_summary(path)}", file=stream, flush=True)
    failed = [j for j, code in enumerate(codes) if code]
    if failed:
        raise WorkerFailed(f"generation worker(s) {', '.join(str(j + 1) for j in failed)} of {job.workers} failed "
                           f"(exit status {codes[failed[0]]}; its log: {logs[failed[0]]}). Finished images are kept: "
                           f"fix the cause and rerun the same command, it resumes"
                           + (f": python -m offline_generation {shlex.join(command)}" if command else ""))
    for method in job.methods:  # the workers built theirs as each finished; this one sees every shard's records
        if manifest_paths(out_root, method):
            build_index(out_root, method)
    print(f"{job.workers} workers finished in {time.time() - start:.1f}s", file=stream, flush=True)
    return {}
