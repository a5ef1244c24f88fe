"""The main job on the embedded default: DigitStyles from data to a results table, on a CPU.

    python sweeps/main_job.py [--quick] [--ablation] [--data_dir data] [--output_dir outputs/digitstyles]
                              [--trials N] [--steps N] [--n_hparams N] [--algorithms A ...]

1. writes DigitStyles (scikit-learn's digits in four styles) in DomainBed's folder layout;
2. generates every method's synthetic domains with the embedded diffusion models, one per test env: the images
   a run with test env k reads were made by the model that never saw style k, a draw per trial (resumable);
3. writes a preview grid of each method's synthetic images;
4. writes the synthetic-domain report (``python -m offline_generation report``: label fidelity, style
   attribution, FID/KID, copies, a map) under ``<output_dir>/report``;
5. runs a stock DomainBed sweep of ERM and every algorithm of the catalogue over every test env (resumable:
   finished runs are kept, interrupted ones redone), a checkpoint every 25 steps;
6. prints the results command's tables (``python -m domainbed_diffusion.results``: DomainBed's selection methods,
   the headline under training-domain validation), each row's difference with ERM paired by trial seed, Holm over
   each table; saves them with the tidy per-run file (runs.json), an accuracy chart and a forest plot.

``--ablation`` then runs the controls (``catalogue.CONTROLS``: augmentation, fewer real images, regenerations
that move toward no style, CDGA-IG's composite without diffusion, ERM with DomainFusion's schedule and batch) and
the rows that use a diffusion model with the all-styles model (it saw every benchmark style; those runs opt in
with ``UNSAFE_generator_saw_test_env``), in ``<output_dir>/ablation``, and reads each row against its control and
against itself with the all-styles model, paired by trial seed.
"""
import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time

from domainbed_diffusion import catalogue, results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_STYLES = "embedded-all-styles"  # the ablation's generator
ALGORITHMS = ["ERM", *catalogue.algorithms()]  # DomainBed's baseline, then the catalogue's rows
GET_DOMAINBED = """DomainBed is not importable, so the report and the sweep cannot run (data and synthetic domains
are ready).
Get it once, then run this command again (it resumes):

    git clone https://github.com/facebookresearch/DomainBed ~/DomainBed
    pip install -e ".[domainbed]"          # DomainBed's own imports: wilds, timm
    export PYTHONPATH=~/DomainBed:$PYTHONPATH
"""

# Full: three trials of the DigitStyles defaults on every image; quick: one short trial on synthetic domains made
# from the first 5 images per (env, class), kept in their own folder so the full job never mixes them in; its 26
# steps give two evaluations (steps 0 and 25), since an evaluation costs about as much as 20 training steps; one
# ED-SAM image per source, and latent-prior's bandwidth estimated on 8 images per domain (32 would be most of its
# quick generation).
PROFILES = {
    "full": dict(quick=False, trials=3, steps=None, edsam_m=3, synthetic="synthetic", generation=[]),
    "quick": dict(quick=True, trials=1, steps=26, edsam_m=1, synthetic="synthetic-quick",
                  generation=["--max_per_class", "5", "--bandwidth_references", "8"]),
}


_START = time.time()  # reset when main() begins: the banners' origin


def step(title):
    """A stage's banner, with the minutes since the job started (the budget's parts are read from these)."""
    print(f"\n== {title} == ({(time.time() - _START) / 60:.1f} min)", flush=True)


def generated_methods(algorithms):
    """The generation methods whose files ``algorithms`` read (catalogue specs; online rows read none)."""
    return [catalogue.entry(a).spec.name for a in algorithms if catalogue.entry(a) and catalogue.entry(a).spec]


def report(data_dir, synthetic_root, methods, output):
    """The synthetic-domain report of ``methods``' images under ``synthetic_root`` (0 when there are none)."""
    from offline_generation.cli import main as generate
    return generate(["report", "--dataset", "DigitStyles", "--data_dir", data_dir, "--synthetic_root",
                     synthetic_root, "--methods", *methods, "--output", output]) if methods else 0


def uses_generator(algorithm):
    """Whether an algorithm's images come from a diffusion model: those that define the leak opt-in."""
    from domainbed import hparams_registry
    return "UNSAFE_generator_saw_test_env" in hparams_registry.default_hparams(algorithm, "DigitStyles")


def sweep_args(data_dir, sweep_dir, profile, algorithms, synthetic, **hparams):
    """Stock ``domainbed.scripts.sweep`` arguments: ``algorithms`` over every test env of DigitStyles, the
    profile's trials, steps and hparams sets (``n_hparams`` 1: the defaults), images from ``synthetic``."""
    hparams = dict(edsam_m=profile["edsam_m"], synthetic_root=os.path.join(data_dir, synthetic), **hparams)
    args = ["--datasets", "DigitStyles", "--algorithms", *algorithms, "--data_dir", data_dir,
            "--output_dir", sweep_dir, "--command_launcher", "cpu_parallel", "--n_trials", str(profile["trials"]),
            "--n_hparams", str(profile["n_hparams"]), "--single_test_envs", "--skip_confirmation",
            "--hparams", json.dumps(hparams)]
    if profile["steps"]:
        args += ["--steps", str(profile["steps"])]
    return args


def protocol(profile):
    """The caption's words for how hyperparameters were chosen."""
    if profile["n_hparams"] == 1:
        return ("default hyperparameters, no random search (--n_hparams 1: DigitStyles' lr, batch size and steps "
                "were fixed on ERM's training-domain validation, each method's own settings are its paper's; a "
                "search of 20 sets per row would take 20 times the sweep), checkpoints every 25 steps.")
    return (f"random search, {profile['n_hparams']} hparams sets per (row, test env, trial), the first the "
            "defaults; checkpoints every 25 steps.")


def title(profile):
    """The prefix of every table, caption and plot title of a quick run: its numbers are not a result."""
    if profile.get("quick"):
        return f"QUICK: {profile['trials']} trial(s), {profile['steps']} steps, not a result."
    return ""


# What each row is read against (the ablation table): (row, control), each difference paired by trial seed.
READINGS = catalogue.readings()


def contrasts_table(pairs, heading):
    """``[(label, paired(...))]`` as lines: the paired difference, its 95% t-interval and Holm-corrected p, Holm
    over these comparisons alone."""
    family = [dict(c, row=label, other="", p_holm=p)
              for (label, c), p in zip(pairs, results.holm([c["p"] for _, c in pairs]))]
    return "\n".join([heading, *results.tables.contrast_lines(family)])


def readings(table, pairs=READINGS):
    """Each row of a table against its control, paired by trial seed."""
    rows = {r["row"]: r["per_trial"] for r in table["rows"]}
    return [(f"{a} - {b}", results.paired(rows[a], rows[b])) for a, b in pairs if a in rows and b in rows]


def generator_effect(default, all_styles):
    """Each row with the all-styles generator minus the same row with the per-test-env ones, paired by trial."""
    mine = {r["row"]: r["per_trial"] for r in default["rows"]}
    theirs = {r["row"]: r["per_trial"] for r in all_styles["rows"]}
    return [(f"{a}: all-styles - per-test-env", results.paired(theirs[a], mine[a]))
            for a in ALGORITHMS if a != "ERM" and a in mine and a in theirs]


# What the console shows of DomainBed's sweep: its counts and the launcher's progress; the job list goes to the log.
SWEEP_LINES = re.compile(r"^(\d+ jobs: |About to launch|Launched \d+|\[cpu_parallel\])")


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


def sweep(common, env, module="domainbed.scripts.sweep"):
    """DomainBed's sweep (``module``: the stock one, or ``domainbed_diffusion.launchers.sweep`` for other trial
    seeds): its incomplete runs deleted, then what is not done launched."""
    sweep_dir = common[common.index("--output_dir") + 1]
    log = os.path.join(os.path.dirname(sweep_dir), "sweep.log")
    os.makedirs(os.path.dirname(log), exist_ok=True)
    print(f"(DomainBed's sweep output, the job list included: {log})")
    run_stage([sys.executable, "-m", module, "delete_incomplete", *common], env, log)
    run_stage([sys.executable, "-m", module, "launch", *common], env, log)
    stale = stale_runs(sweep_dir)
    if stale:
        print(f"WARNING: {len(stale)} finished run(s) have fewer checkpoints than DigitStyles now writes (made by an "
              f"earlier version; the sweep keeps finished runs), e.g. {stale[0]}: delete those folders and run this "
              f"command again to redo them.", file=sys.stderr)


def stale_runs(sweep_dir):
    """Finished runs whose checkpoints are fewer than their steps and DigitStyles' ``CHECKPOINT_FREQ`` give."""
    import glob
    from domainbed import datasets
    DigitStyles = datasets.get_dataset_class("DigitStyles")
    stale = []
    for done in sorted(glob.glob(os.path.join(sweep_dir, "*", "done"))):
        with open(os.path.join(os.path.dirname(done), "results.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
        steps = records[-1]["args"]["steps"] or DigitStyles.N_STEPS
        if len(records) < len(range(0, steps - 1, DigitStyles.CHECKPOINT_FREQ)) + 1:
            stale.append(os.path.dirname(done))
    return stale


def tables(sources, order, profile, folder):
    """Every selection's table of the runs in ``sources`` (folders, or (folder, algorithms)), each row paired with
    ERM, Holm over each table's comparisons; written with the tidy per-run file and the plots under ``folder``.
    Returns ``(tables by selection, text)``."""
    from domainbed_diffusion.results import cli
    tidy = results.load(sources, order=order, warn=lambda line: print(line, file=sys.stderr))
    analysed, texts = cli.report(tidy, "ERM", "table", title=title(profile))
    text = texts["text"] + f"\nProtocol: {protocol(profile)}"
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write(texts["markdown"] + "\n")
    results.write_tidy(tidy, os.path.join(folder, "runs.json"))
    by_selection = {t["selection"]: t for t in analysed}
    results.plots.accuracy(by_selection["training"], os.path.join(folder, "accuracy.png"), "ERM", title(profile))
    results.plots.forest([by_selection["training"], by_selection["oracle"]], os.path.join(folder, "forest.png"),
                         "ERM", title(profile))
    return by_selection, text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    parser.add_argument("--output_dir", default=None, help="default: outputs/digitstyles[-quick]")
    parser.add_argument("--quick", action="store_true", help="one short trial: a first look in minutes")
    parser.add_argument("--ablation", action="store_true",
                        help="after the main job: the controls, and the rows that use a diffusion model with the "
                             "all-styles model (it saw the test styles), in <output_dir>/ablation")
    parser.add_argument("--lanes", type=int, default=None,
                        help="parallel DomainBed runs and generation workers (default: 2 or cores)")
    parser.add_argument("--trials", type=int, default=None, help="trials per (algorithm, test env); default 3, quick 1")
    parser.add_argument("--steps", type=int, default=None, help="training steps; default DigitStyles' N_STEPS, "
                                                                 "quick 26")
    parser.add_argument("--n_hparams", type=int, default=1,
                        help="hparams sets per (algorithm, test env, trial): 1 the defaults, more a random search")
    parser.add_argument("--algorithms", nargs="+", default=None,
                        help="a subset of the table's rows (default: ERM and every algorithm of the catalogue)")
    args = parser.parse_args(argv)
    profile = dict(PROFILES["quick" if args.quick else "full"], n_hparams=args.n_hparams)
    profile.update({k: v for k, v in (("trials", args.trials), ("steps", args.steps)) if v})
    algorithms = args.algorithms or ALGORITHMS
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        parser.error(f"--algorithms {unknown}: choose from {' '.join(ALGORITHMS)}")
    suffix = "-quick" if args.quick else ""
    out = os.path.abspath(args.output_dir or os.path.join(REPO, "outputs", "digitstyles" + suffix))
    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [REPO, os.environ.get("PYTHONPATH")] if p),
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if args.lanes:
        env["DOMAINBED_DIFFUSION_LANES"] = str(args.lanes)
    global _START
    start = _START = time.time()

    step("1/6 DigitStyles")
    from domainbed_diffusion.benchmark import digitstyles
    digitstyles.prepare(data_dir, pool=False)

    step("2/6 synthetic domains with the embedded models, one per test env")
    from offline_generation.cli import main as generate
    from domainbed_diffusion.launchers.cpu_parallel import default_lanes
    workers = args.lanes or default_lanes()  # the sweep's lanes: one thread each, the same bytes on any machine

    def generation(methods, model, synthetic, num_samples=profile["edsam_m"]):
        return generate(["--dataset", "DigitStyles", "--data_dir", data_dir, "--methods", *methods,
                         "--synthetic_root", os.path.join(data_dir, synthetic), "--num_samples", str(num_samples),
                         "--batch_size", "64", "--workers", str(workers),
                         "--per_trial", "--trial_seeds", *map(str, range(profile["trials"])), "--model", model,
                         *profile["generation"]])
    synthetic_root = os.path.join(data_dir, profile["synthetic"])
    methods = generated_methods(algorithms)
    code = generation(methods, "embedded", profile["synthetic"]) if methods else 0
    if code:
        return code

    step("3/6 preview grids")
    if methods:
        code = generate(["preview", "--dataset", "DigitStyles", "--data_dir", data_dir, "--synthetic_root",
                         synthetic_root, "--methods", *methods, "--out", os.path.join(out, "preview.png"),
                         "--rows", "3", "--variants", "6", "--size", "64"])
        if code:
            return code

    if importlib.util.find_spec("domainbed") is None:
        print(GET_DOMAINBED, file=sys.stderr)
        return 2
    step("4/6 synthetic-domain report")
    code = report(data_dir, synthetic_root, methods, os.path.join(out, "report"))
    if code:
        return code

    step("5/6 DomainBed sweep")
    sweep_dir = os.path.join(out, "sweep")
    sweep(sweep_args(data_dir, sweep_dir, profile, algorithms, profile["synthetic"]), env)

    step("6/6 results")
    summaries, text = tables(sweep_dir, ALGORITHMS, profile, out)
    print(text)
    with open(os.path.join(out, "results.txt"), "w") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.join(out, 'results.txt')} (and .md), runs.json, accuracy.png, forest.png and "
          f"{os.path.join(out, 'preview.png')}")
    print(f"main job finished in {(time.time() - start) / 60:.1f} min")
    if args.ablation:
        return ablation(args, profile, algorithms, data_dir, out, sweep_dir, generation, env,
                        summaries["training"])
    return 0


def ablation(args, profile, algorithms, data_dir, out, sweep_dir, generation, env, headline):
    """The controls (with the per-test-env generators) and the generator rows with the all-styles model, read
    against the main job's rows, paired by trial seed."""
    from domainbed_diffusion.benchmark import digitstyles
    start = time.time()
    folder = os.path.join(out, "ablation")
    step("ablation 1/3 controls: regenerations (ED-SAM at rho = 0), CDGA-IG's composites, and their sweep")
    from domainbed import hparams_registry
    per_image = hparams_registry.default_hparams("Regenerated", "DigitStyles")["regenerations_per_image"]
    code = generation(["regenerate"], "embedded", profile["synthetic"], per_image) or \
        generation(["composite"], "embedded", profile["synthetic"])
    if code:
        return code
    controls_dir = os.path.join(folder, "controls", "sweep")
    sweep(sweep_args(data_dir, controls_dir, profile, catalogue.controls(), profile["synthetic"]), env)

    step("ablation 2/3 the rows that use a diffusion model, with the all-styles model")
    rows = [a for a in algorithms if a != "ERM" and uses_generator(a)]
    synthetic = profile["synthetic"] + "-all-styles"
    made = generated_methods(rows)  # the files those rows read; DomainFusion loads the model itself
    code = generation(made, ALL_STYLES, synthetic) if made else 0
    if code:
        return code
    code = report(data_dir, os.path.join(data_dir, synthetic), made,
                  os.path.join(folder, "all-styles", "report"))
    if code:  # the same report as the main job's, for the generator that saw the test styles
        return code
    all_styles_dir = os.path.join(folder, "all-styles", "sweep")
    sweep(sweep_args(data_dir, all_styles_dir, profile, rows, synthetic, diffusion_model=ALL_STYLES,
                     UNSAFE_generator_saw_test_env=True), env)

    step("ablation 3/3 tables")
    order = ["ERM", *catalogue.controls(), *ALGORITHMS[1:]]
    controls, text = tables([controls_dir, sweep_dir], order, profile, os.path.join(folder, "controls"))
    text = [text, contrasts_table(readings(controls["training"]),
                                  "Each row against its control (training-domain validation), paired by trial seed; "
                                  "Holm over these comparisons:")]
    all_styles, more = tables([all_styles_dir, (sweep_dir, ["ERM"])], ALGORITHMS, profile,
                              os.path.join(folder, "all-styles"))
    text += ["With the all-styles generator (it saw every test style; UNSAFE_generator_saw_test_env):", more]
    text.append(contrasts_table(generator_effect(headline, all_styles["training"]),
                                "The part of each row owed to a generator that saw the test style (training-domain "
                                "validation), paired by trial seed; Holm over these comparisons:"))
    print("\n\n".join(text))
    with open(os.path.join(folder, "ablation.txt"), "w") as f:
        f.write("\n\n".join(text) + "\n")
    print(f"wrote {os.path.join(folder, 'ablation.txt')} (runs.json and plots under controls/ and all-styles/); "
          f"ablation finished in {(time.time() - start) / 60:.1f} min")
    return 0

def run_script(main):
    """A sweep script's entry point: Ctrl-C stops it (even started in the background) with one line, exit 130."""
    from offline_generation.cli import INTERRUPTED, interruptible
    interruptible()
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_script(main)
