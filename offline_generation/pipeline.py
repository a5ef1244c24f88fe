"""The pipeline API: each stage of a study as one typed call, the same calls the command lines make, so that a
sweep script is a list of stages and never imports another script.

    prepare(data_dir)                                   DigitStyles in DomainBed's folder layout
    generate(GenerationJob(...)) / generation(...)      synthetic domains (``generation`` fills a job from hparams)
    report(...), preview(...), filter_images(...)      the synthetic-domain report, a preview grid, the label filter
    sweep(Sweep(...))                                   a DomainBed sweep (stock, or with fresh trial seeds)
    tables(...)                                         the results command's tables, plots and per-run file

``Clock`` prints each stage's banner with the minutes since the study started; ``run_script`` is a sweep
script's entry point (Ctrl-C stops it with one line).
"""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from domainbed_diffusion import catalogue
from domainbed_diffusion.data.layout import SyntheticDataError, synthetic_root as resolve_root

from .job import GenerationJob

INTERRUPTED = "interrupted: what was finished is kept; run the same command again to resume"


def interruptible():
    """Ctrl-C (SIGINT) stops this process even when it was started in the background, where shells start commands
    with SIGINT ignored and every process they start inherits that."""
    import signal
    import threading
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


def reported_errors():
    """The errors a command reports in one line (``error: ...``, exit 2): bad input and failed workers."""
    from .generate import WorkerFailed
    return FileNotFoundError, ValueError, SyntheticDataError, WorkerFailed


# The main job's profiles on DigitStyles, which other DigitStyles scripts share. Full: three trials of the
# defaults on every image; quick: one short trial on synthetic domains made from the first 5 images per (env,
# class), kept in their own folder so the full job never mixes them in; its 26 steps give two evaluations (steps 0
# and 25); one ED-SAM image per source, and latent-prior's bandwidth estimated on 8 images per domain (32 would be
# most of its quick generation). ``hparams`` are every run's, and what is generated follows their twins.
PROFILES = {
    "full": dict(quick=False, trials=3, steps=None, hparams=dict(edsam_m=3), synthetic="synthetic",
                 max_per_class=None, settings={}),
    "quick": dict(quick=True, trials=1, steps=26, hparams=dict(edsam_m=1), synthetic="synthetic-quick",
                  max_per_class=5, settings={"latent-prior": dict(bandwidth_references=8)}),
}


def title(profile):
    """The prefix of every table, caption and plot title of a quick run: its numbers are not a result."""
    if profile.get("quick"):
        return f"QUICK: {profile['trials']} trial(s), {profile['steps']} steps, not a result."
    return ""


class Clock:
    """A study's stage banners, each with the minutes since the study started."""

    def __init__(self):
        self.start = time.time()

    def minutes(self):
        return (time.time() - self.start) / 60

    def step(self, title):
        print(f"\n== {title} == ({self.minutes():.1f} min)", flush=True)


def prepare(data_dir, pool=False):
    """DigitStyles (and with ``pool`` its pre-training pool) under ``data_dir``; returns the dataset folder."""
    from domainbed_diffusion.benchmark import digitstyles
    return digitstyles.prepare(data_dir, pool=pool)


def settings_from_hparams(methods, hparams):
    """``{method: {option: value}}`` of the options whose hparam twin ``hparams`` sets: what a sweep's runs will
    choose among is what is generated, from one declaration."""
    out = {}
    for method in methods:
        twins = catalogue.spec(method).twins()
        out[method] = {name: hparams[o.hparam] for name, o in twins.items() if o.hparam in (hparams or {})}
    return out


def generation(dataset, data_dir, methods, synthetic_root=None, hparams=None, trials=None, model="embedded",
               workers=None, batch_size=64, per_trial=True, max_per_class=None, settings=None,
               **job) -> GenerationJob:
    """The ``GenerationJob`` of a study's generation stage: ``methods`` with the options ``hparams``' twins set
    (``settings_from_hparams``) and any further ``settings`` (``{method: {option: value}}``), one draw per trial
    of ``trials`` (``per_trial``), each method's defaults for the rest."""
    chosen = settings_from_hparams(methods, hparams or {})
    given = {}
    for method in methods:
        spec = catalogue.spec(method)
        mine = dict(dataset=dataset, batch_size=batch_size, per_trial=per_trial,
                    trial_seeds=tuple(trials) if trials is not None else None)
        mine.update(chosen[method])
        mine.update((k, v) for k, v in (settings or {}).get(method, {}).items() if k in spec.settings())
        given[method] = mine
    return GenerationJob(dataset=dataset, data_dir=data_dir, methods=tuple(methods),
                         synthetic_root=resolve_root(synthetic_root, data_dir), settings=given, model=model,
                         batch_size=batch_size, workers=workers, max_per_class=max_per_class, **job)


def generate(job: GenerationJob, command=None):
    """Run a generation job: in this process, or in ``job.workers`` processes of one thread each (the same
    bytes); ``command``, the words a failure tells the user to rerun."""
    from .generate import run, run_workers
    if job.workers and not job.dry_run:
        return run_workers(job, command=command)
    return run(job)


def _options(parser, command, required, options):
    """A subcommand's options: its parser's defaults, ``required`` and ``options`` (keywords) over them."""
    args = parser.parse_args(required)
    for key, value in options.items():
        if not hasattr(args, key):
            raise TypeError(f"{command}: no option {key!r}")
        setattr(args, key, value)
    return args


def report(dataset, data_dir, synthetic_root, methods, output, **options):
    """The synthetic-domain report of ``methods``' images (``python -m offline_generation report``'s options as
    keywords); nothing to do without methods."""
    if not methods:
        return None
    from .options import report_parser
    from .report import run
    return run(_options(report_parser(), "report", ["--dataset", dataset, "--data_dir", data_dir],
                        dict(options, synthetic_root=synthetic_root, methods=list(methods), output=output)))


def preview(dataset, data_dir, synthetic_root, methods, out, **options):
    """A grid PNG of ``methods``' images beside their sources (``python -m offline_generation preview``)."""
    from .options import preview_parser
    from .preview import preview as draw
    return draw(_options(preview_parser(), "preview", ["--dataset", dataset, "--data_dir", data_dir, "--out", out],
                         dict(options, synthetic_root=synthetic_root, methods=list(methods))))


def filter_images(dataset, data_dir, synthetic_root, methods, **options):
    """The label filter of ``methods``' images per test env and trial (``python -m offline_generation filter``'s
    options as keywords)."""
    from .options import filter_parser
    from .filtering import run
    return run(_options(filter_parser(), "filter", ["--dataset", dataset, "--data_dir", data_dir, "--methods",
                                                     *methods], dict(options, synthetic_root=synthetic_root)))


@dataclass(frozen=True)
class Sweep:
    """A DomainBed sweep: stock ``domainbed.scripts.sweep``, or ``launchers.sweep`` when ``trial_seed_from`` asks
    for trials no earlier table used; ``hparams`` over every run's defaults."""
    data_dir: str
    output_dir: str
    algorithms: Tuple[str, ...]
    datasets: Tuple[str, ...] = ("DigitStyles",)
    trials: int = 3
    n_hparams: int = 1
    steps: Optional[int] = None
    hparams: Dict[str, Any] = field(default_factory=dict)
    trial_seed_from: Optional[int] = None
    launcher: str = "cpu_parallel"
    single_test_envs: bool = True

    @property
    def module(self):
        return "domainbed.scripts.sweep" if self.trial_seed_from is None else "domainbed_diffusion.launchers.sweep"

    def arguments(self):
        args = ["--datasets", *self.datasets, "--algorithms", *self.algorithms, "--data_dir", self.data_dir,
                "--output_dir", self.output_dir, "--command_launcher", self.launcher, "--n_trials", str(self.trials),
                "--n_hparams", str(self.n_hparams), "--skip_confirmation", "--hparams", json.dumps(self.hparams)]
        args += ["--single_test_envs"] if self.single_test_envs else []
        args += ["--steps", str(self.steps)] if self.steps else []
        args += ["--trial_seed_from", str(self.trial_seed_from)] if self.trial_seed_from is not None else []
        return args


# What the console shows of DomainBed's sweep: its counts and the launcher's progress; the job list goes to the log.
SWEEP_LINES = re.compile(r"^(\d+ jobs: |About to launch|Launched \d+|\[cpu_parallel\])")


def subprocess_env(lanes=None):
    """The environment of a stage's subprocess: this interpreter's folder first on PATH (DomainBed's jobs start
    with a bare ``python``), the lanes asked for."""
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if lanes:
        env["DOMAINBED_DIFFUSION_LANES"] = str(lanes)
    return env


def run_stage(command, env, log=None, show=SWEEP_LINES):
    """A stage's subprocess in a session of its own: Ctrl-C stops it from here (its runs are redone on the next
    launch) and prints one line, not every process's traceback. Its output goes to ``log`` (appended), and the
    lines ``show`` matches to the console too."""
    proc = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    try:
        with open(log or os.devnull, "a") as f:
            for line in proc.stdout:
                f.write(line)
                if show.search(line):
                    print(line.rstrip(), flush=True)
        code = proc.wait()
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    if code:
        raise subprocess.CalledProcessError(code, command, f"its output: {log}")


def sweep(spec: Sweep, lanes=None):
    """Run a sweep: its incomplete runs deleted, then what is not done launched (finished runs are kept); its
    output in ``<output_dir>/../sweep.log``. Warns of finished runs with fewer checkpoints than now written."""
    log = os.path.join(os.path.dirname(os.path.abspath(spec.output_dir)), "sweep.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    print(f"(DomainBed's sweep output, the job list included: {log})")
    env = subprocess_env(lanes)
    for command in ("delete_incomplete", "launch"):
        run_stage([sys.executable, "-m", spec.module, command, *spec.arguments()], env, log)
    stale = stale_runs(spec.output_dir)
    if stale:
        print(f"WARNING: {len(stale)} finished run(s) have fewer checkpoints than their dataset now writes (made by "
              f"an earlier version; the sweep keeps finished runs), e.g. {stale[0]}: delete those folders and run "
              f"this command again to redo them.", file=sys.stderr)


def stale_runs(sweep_dir):
    """Finished runs whose checkpoints are fewer than their steps and their dataset's ``CHECKPOINT_FREQ`` give."""
    from domainbed import datasets
    stale = []
    for done in sorted(glob.glob(os.path.join(sweep_dir, "*", "done"))):
        with open(os.path.join(os.path.dirname(done), "results.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
        args = records[-1]["args"]
        dataset = datasets.get_dataset_class(args["dataset"])
        steps, freq = args["steps"] or dataset.N_STEPS, args.get("checkpoint_freq") or dataset.CHECKPOINT_FREQ
        if len(records) < len(range(0, steps - 1, freq)) + 1:
            stale.append(os.path.dirname(done))
    return stale


def finished_runs(sweep_dir):
    """Runs finished per algorithm, from the ``done`` files alone: no accuracy is read."""
    done = {}
    for marker in glob.glob(os.path.join(sweep_dir, "*", "done")):
        with open(os.path.join(os.path.dirname(marker), "results.jsonl")) as f:
            first = json.loads(f.readline())
        done[first["args"]["algorithm"]] = done.get(first["args"]["algorithm"], 0) + 1
    return done


def tables(sources, output_dir, order=None, baseline="ERM", title="", contrasts=(), margin=None, caption=""):
    """The results command's tables of the runs in ``sources`` (sweep folders, ``(folder, algorithms)`` pairs or
    per-run files), every row paired with ``baseline`` by trial seed, Holm over each table; saved under
    ``output_dir`` (text, Markdown, LaTeX, the per-run file, plots). Returns ``({selection: table}, text)``."""
    from domainbed_diffusion import results
    from domainbed_diffusion.results import cli
    tidy = results.load(sources, order=order, warn=lambda line: print(line, file=sys.stderr))
    analysed, texts = cli.report(tidy, baseline, "table", margin, contrasts, title)
    if caption:
        texts = {k: f"{v}\n{caption}" for k, v in texts.items()}
    cli.save(output_dir, tidy, analysed, texts, baseline, title, margin)
    return {t["selection"]: t for t in analysed}, texts["text"]


def run_script(main):
    """A sweep script's entry point: Ctrl-C stops it (even started in the background) with one line, exit 130; an
    error the command lines report in one line (bad input, a failed stage) likewise, exit 2."""
    interruptible()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)
    except (*reported_errors(), subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


