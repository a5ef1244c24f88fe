"""The main job on the embedded default: DigitStyles from data to a results table, on a CPU.

    python sweeps/main_job.py [--quick] [--ablation] [--data_dir data] [--output_dir outputs/digitstyles]
                              [--trials N] [--steps N] [--n_hparams N] [--algorithms A ...]

1. writes DigitStyles (scikit-learn's digits in four styles) in DomainBed's folder layout;
2. generates every method's synthetic domains with the embedded diffusion models, one per test env: the images
   a run with test env k reads were made by the model that never saw style k (resumable);
3. writes a preview grid of each method's synthetic images;
4. writes the synthetic-domain report (``python -m offline_generation report``: label fidelity, style
   attribution, FID/KID, copies, a map) under ``<output_dir>/report``;
5. runs a stock DomainBed sweep of ERM and every algorithm of the catalogue over every test env (resumable:
   finished runs are kept, interrupted ones redone), a checkpoint every 25 steps;
6. prints stock collect_results' tables, then the table under training-domain validation (the headline) and under
   the oracle, each row's difference with ERM paired by trial seed; saves them, with a bar chart.

``--ablation`` then runs the controls (``catalogue.CONTROLS``: augmentation, fewer real images, regenerations
that move toward no style) and the rows that use a diffusion model with the all-styles model (it saw every
benchmark style; those runs opt in with ``UNSAFE_generator_saw_test_env``), in ``<output_dir>/ablation``, and
reads each row against its control and against itself with the all-styles model, paired by trial seed.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

from domainbed_diffusion import catalogue, statistics

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
    "full": dict(trials=3, steps=None, edsam_m=3, synthetic="synthetic", generation=[]),
    "quick": dict(trials=1, steps=26, edsam_m=1, synthetic="synthetic-quick",
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


SELECTIONS = ("IIDAccuracySelectionMethod", "OracleSelectionMethod")  # DomainBed's; the first is the headline


def load_records(sweep_dirs):
    """DomainBed's records of the sweep folder(s): each a path, or ``(path, algorithms to read from it)``."""
    from domainbed.lib import reporting
    from domainbed.lib.query import Q
    sources = [(d, None) if isinstance(d, str) else d for d in ([sweep_dirs] if isinstance(sweep_dirs, str)
                                                                   else sweep_dirs)]
    return Q([r for d, only in sources for r in reporting.load_records(d)
              if only is None or r["args"]["algorithm"] in only])


def summarize(sweep_dirs, selection="IIDAccuracySelectionMethod", baseline="ERM", records=None):
    """Per algorithm of the sweep folder(s) (each a path, or ``(path, algorithms to read from it)``): test-env
    accuracy under one of DomainBed's model selection methods (mean, standard error, trials) per test env and
    averaged over them, the checkpoint and hparams set it chose in each run, the difference with ``baseline``
    paired by trial seed, and each row's cost: images and seconds per step (also relative to the baseline's).
    ``records``: the folders' records, when already read (``load_records``)."""
    import numpy as np
    from domainbed import model_selection
    from domainbed.lib import reporting
    method = getattr(model_selection, selection)
    records = load_records(sweep_dirs) if records is None else records
    out, chosen = {}, {}
    for group in reporting.get_grouped_records(records):
        pick = _chosen(method, group["records"])
        if pick is not None:
            key = group["algorithm"], int(group["test_env"]), int(group["trial_seed"])
            out.setdefault(key[0], {}).setdefault(key[1], {})[key[2]] = pick["test_acc"]
            chosen[key] = pick
    last = {}  # each run's last checkpoint: its step_time and images averaged over the steps since the one before
    for r in records:
        key = (r["args"]["algorithm"], tuple(r["args"]["test_envs"]), r["args"]["trial_seed"],
               r["args"]["hparams_seed"])
        if key not in last or r["step"] > last[key]["step"]:
            last[key] = r
    summary = {}
    for algorithm, envs in out.items():
        per_env = {e: _mean_sem(list(t.values())) for e, t in envs.items()}
        trials = sorted(set.intersection(*(set(t) for t in envs.values())))
        per_trial = {t: float(np.mean([envs[e][t] for e in envs])) for t in trials}  # over test envs
        runs = [r for key, r in last.items() if key[0] == algorithm]
        # our algorithms report the images of each step; DomainBed's ERM takes batch_size from each training env
        images = [r["images"] if "images" in r else r["hparams"]["batch_size"] * _train_envs(r) for r in runs]
        picks = [p for (a, _, _), p in chosen.items() if a == algorithm]
        summary[algorithm] = dict(
            test_env=per_env, average=_mean_sem(list(per_trial.values())),
            per_run={e: {t: float(v) for t, v in sorted(ts.items())} for e, ts in sorted(envs.items())},
            average_per_trial=per_trial, images_per_step=float(np.mean(images)),
            seconds_per_step=float(np.mean([r["step_time"] for r in runs])), runs=len(runs),
            selected={e: {t: {k: chosen[algorithm, e, t][k] for k in ("step", "hparams_seed")} for t in sorted(ts)}
                      for e, ts in sorted(envs.items())},
            selected_step=float(np.median([p["step"] for p in picks])),
            hparams_sets=len({r["args"]["hparams_seed"] for r in runs}))
    base = summary.get(baseline)
    comparisons = statistics.compare_to({a: row["average_per_trial"] for a, row in summary.items()}, baseline)
    for algorithm, row in summary.items():
        row["seconds_vs_erm"] = row["seconds_per_step"] / base["seconds_per_step"] if base else None
        row["images_vs_erm"] = row["images_per_step"] / base["images_per_step"] if base else None
        if algorithm in comparisons:
            row["vs_erm"] = comparisons[algorithm]
    return summary


def _chosen(method, records):
    """What a DomainBed selection method picks among one (algorithm, test env, trial)'s runs: its test accuracy,
    the checkpoint's step and the hparams set (DomainBed's ``sweep_acc`` returns the accuracy only)."""
    from domainbed import model_selection
    ranked = method.hparams_accs(records)
    if not len(ranked):
        return None
    acc, run = ranked[0]
    run = model_selection.get_test_records(run)
    if hasattr(method, "_step_acc"):  # per-checkpoint selection (training-domain validation)
        step = run.map(lambda r: dict(method._step_acc(r), step=r["step"])).argmax("val_acc")["step"]
    else:  # the oracle takes the last checkpoint of the hparams set it picks
        step = max(r["step"] for r in run)
    return dict(test_acc=acc["test_acc"], step=int(step), hparams_seed=int(run[0]["args"]["hparams_seed"]))


def _train_envs(record):
    from domainbed import datasets
    return datasets.num_environments(record["args"]["dataset"]) - len(record["args"]["test_envs"])


def _mean_sem(values):
    import numpy as np
    values = np.asarray(values, dtype=float)
    sem = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return dict(mean=float(values.mean()), sem=sem, n=int(len(values)))


def results_table(summary, env_names, selection="IIDAccuracySelectionMethod", order=None, protocol=None):
    """A table of ``summarize``'s rows: accuracy per test env and on average (%, mean +/- standard error, trials),
    the difference with ERM paired by trial seed with its 95% t-interval and Holm-corrected p-value, the median
    checkpoint step the selection chose, and each row's cost; its caption names the selection and the protocol."""
    def cell(v):
        return f"{100 * v['mean']:.1f} +/- {100 * v['sem']:.1f}" if v["n"] > 1 else f"{100 * v['mean']:.1f}"
    header = ["Algorithm", *env_names, "Avg", "vs ERM [95% CI]", "p (Holm)", "step", "trials", "img/step",
              "s/step", "x ERM"]
    rows = []
    for algorithm in [a for a in (order or ALGORITHMS) if a in summary]:
        row = summary[algorithm]
        envs = [cell(row["test_env"][e]) if e in row["test_env"] else "-" for e in range(len(env_names))]
        vs, p = "", ""
        c = row.get("vs_erm")
        if c is not None:
            vs = f"{100 * c['mean']:+.1f}" + (f" [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"
                                              if c["n"] > 1 else "")
            p = f"{c['p_holm']:.3f}{' *' if c['p_holm'] < 0.05 else ''}" if c["n"] > 1 else ""
        trials = min(v["n"] for v in row["test_env"].values())
        rows.append([algorithm, *envs, cell(row["average"]), vs, p, f"{row.get('selected_step', 0):.0f}",
                     str(trials), f"{row['images_per_step']:.0f}", f"{row['seconds_per_step']:.3f}",
                     f"{row['seconds_vs_erm']:.2f}" if row["seconds_vs_erm"] else ""])
    widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    selected = {"IIDAccuracySelectionMethod": "training-domain validation (the checkpoint with the best mean "
                                              "accuracy on the training envs' validation splits)",
                "OracleSelectionMethod": "test-domain validation, the oracle (the last checkpoint; among hparams "
                                         "sets, the best on the test env's validation split)"}[selection]
    lines.append(f"Test-env accuracy (%), model selection: {selected}; mean +/- standard error over trials; Avg: "
                 "per trial over test envs. vs ERM: difference of Avg paired by trial seed, with its 95% "
                 "t-interval (n - 1 degrees of freedom); p: paired t-test, Holm-corrected over the table's "
                 "comparisons with ERM, * below 0.05. step: median selected checkpoint. img/step: images through "
                 "the network per step; s/step: measured (both over every run of the row); x ERM: relative to "
                 "ERM's."
                 + (f" Protocol: {protocol}" if protocol else ""))
    return "\n".join(lines)


def bar_chart(accuracies, env_names, path):
    """Grouped bars: one group per test env, one bar per algorithm, with standard-error whiskers."""
    from PIL import Image, ImageDraw
    colors = [(110, 110, 110), (60, 120, 200), (230, 140, 40), (240, 190, 60), (80, 170, 90), (160, 90, 190),
              (210, 70, 70)]
    algorithms = [a for a in ALGORITHMS if a in accuracies]
    groups = list(range(len(env_names))) + ["avg"]
    bar, gap, left, top, height = 14, 24, 60, 40, 300
    width = left + len(groups) * (len(algorithms) * bar + gap) + 200
    image = Image.new("RGB", (width, top + height + 60), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), "DigitStyles: test-env accuracy (training-domain validation), mean and standard error; "
                         "(Nx): seconds per step relative to ERM", fill="black")
    for tick in range(0, 101, 20):
        y = top + height - tick * height / 100
        draw.line([(left - 4, y), (width - 200, y)], fill=(225, 225, 225))
        draw.text((left - 30, y - 6), f"{tick}%", fill="black")
    for g, env in enumerate(groups):
        x0 = left + g * (len(algorithms) * bar + gap) + gap // 2
        label = "average" if env == "avg" else env_names[env]
        draw.text((x0, top + height + 8), label, fill="black")
        for k, algorithm in enumerate(algorithms):
            row = accuracies[algorithm]
            value = row["average"] if env == "avg" else row["test_env"].get(env)
            if value is None:
                continue
            mean, sem = value["mean"], (value["sem"] if value["sem"] == value["sem"] else 0.0)
            x = x0 + k * bar
            y = top + height - mean * height
            draw.rectangle([x, y, x + bar - 2, top + height], fill=colors[k % len(colors)])
            if sem > 0:
                draw.line([(x + bar // 2 - 1, y - sem * height), (x + bar // 2 - 1, y + sem * height)], fill="black")
    for k, algorithm in enumerate(algorithms):
        y = top + 10 + 16 * k
        draw.rectangle([width - 190, y, width - 180, y + 10], fill=colors[k % len(colors)])
        cost = accuracies[algorithm].get("seconds_vs_erm")
        draw.text((width - 174, y - 1), f"{algorithm}" + (f" ({cost:.1f}x)" if cost else ""), fill="black")
    image.save(path)
    return path


# What each control reads (the ablation table): (row, control), each difference paired by trial seed.
READINGS = (
    ("CDGA_PG", "Regenerated"), ("CDGA_IG", "Regenerated"), ("EDSAM", "Regenerated_Balanced"),
    ("LatentPrior", "Regenerated_Balanced"), ("Regenerated", "ERM_RealMatched"), ("ERM_Augment", "ERM"),
    ("ERM_RealMatched", "ERM"),
)


def contrasts_table(pairs, title):
    """``[(label, paired(...))]`` as a table: the paired difference, its 95% t-interval and Holm-corrected p."""
    adjusted = statistics.holm([c["p"] for _, c in pairs])
    lines = [title]
    for (label, c), p in zip(pairs, adjusted):
        interval = f" [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]" if c["n"] > 1 else ""
        lines.append(f"  {label:<40} {100 * c['mean']:+6.1f}{interval:<17} p (Holm) {p:.3f}"
                     f"{' *' if p < 0.05 else ''}  n={c['n']}")
    return "\n".join(lines)


def readings(summary, pairs=READINGS):
    return [(f"{a} - {b}", statistics.paired(summary[a]["average_per_trial"], summary[b]["average_per_trial"]))
            for a, b in pairs if a in summary and b in summary]


def generator_effect(default, all_styles):
    """Each row with the all-styles generator minus the same row with the per-test-env ones, paired by trial."""
    return [(f"{a}: all-styles - per-test-env", statistics.paired(all_styles[a]["average_per_trial"],
                                                                   default[a]["average_per_trial"]))
            for a in ALGORITHMS if a != "ERM" and a in default and a in all_styles]


def sweep(common, env):
    subprocess.run([sys.executable, "-m", "domainbed.scripts.sweep", "delete_incomplete", *common], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "domainbed.scripts.sweep", "launch", *common], env=env, check=True)
    stale = stale_runs(common[common.index("--output_dir") + 1])
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


def tables(sources, env_names, order, profile):
    """Both selections' tables and summaries of records from ``sources`` (folders, or (folder, algorithms))."""
    out, text = {}, []
    records = load_records(sources)  # read once for both selections
    for selection in SELECTIONS:
        summary = summarize(sources, selection, records=records)
        out[selection] = summary
        text.append(results_table(summary, env_names, selection, order, protocol(profile)))
    return out, text


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
    from domainbed_diffusion import digitstyles
    digitstyles.prepare(data_dir, pool=False)

    step("2/6 synthetic domains with the embedded models, one per test env")
    from offline_generation.cli import main as generate
    from domainbed_diffusion.launchers.cpu_parallel import default_lanes
    workers = args.lanes or default_lanes()  # the sweep's lanes: one thread each, the same bytes on any machine

    def generation(methods, model, synthetic, num_samples=profile["edsam_m"]):
        return generate(["--dataset", "DigitStyles", "--data_dir", data_dir, "--methods", *methods,
                         "--output_dir", os.path.join(data_dir, synthetic), "--num_samples", str(num_samples),
                         "--batch_size", "64", "--workers", str(workers),
                         "--trial_seeds", *map(str, range(profile["trials"])), "--model", model,
                         *profile["generation"]])
    synthetic_root = os.path.join(data_dir, profile["synthetic"])
    methods = generated_methods(algorithms)
    code = generation(methods, "embedded", profile["synthetic"]) if methods else 0
    if code:
        return code

    step("3/6 preview grids")
    if methods:
        generate(["preview", "--dataset", "DigitStyles", "--data_dir", data_dir, "--output_dir", synthetic_root,
                  "--methods", *methods, "--out", os.path.join(out, "preview.png"),
                  "--rows", "3", "--variants", "6", "--size", "64"])

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
    result = subprocess.run([sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir", sweep_dir],
                            env=env, check=True, capture_output=True, text=True)
    summaries, text = tables(sweep_dir, digitstyles.DOMAINS, ALGORITHMS, profile)
    print(result.stdout)
    print("\n\n".join(text))
    with open(os.path.join(out, "results.txt"), "w") as f:
        f.write(result.stdout + "\n" + "\n\n".join(text) + "\n")
    with open(os.path.join(out, "accuracies.json"), "w") as f:
        json.dump(summaries, f, indent=1)
    headline = summaries[SELECTIONS[0]]
    chart = bar_chart(headline, digitstyles.DOMAINS, os.path.join(out, "accuracy.png"))
    print(f"wrote {os.path.join(out, 'results.txt')}, {chart} and {os.path.join(out, 'preview.png')}")
    print(f"main job finished in {(time.time() - start) / 60:.1f} min")
    if args.ablation:
        return ablation(args, profile, algorithms, data_dir, out, sweep_dir, generation, env, headline)
    return 0


def ablation(args, profile, algorithms, data_dir, out, sweep_dir, generation, env, headline):
    """The controls (with the per-test-env generators) and the generator rows with the all-styles model, read
    against the main job's rows, paired by trial seed."""
    from domainbed_diffusion import digitstyles
    start = time.time()
    folder = os.path.join(out, "ablation")
    step("ablation 1/3 controls: regenerations (ED-SAM at rho = 0) and their sweep")
    from domainbed import hparams_registry
    per_image = hparams_registry.default_hparams("Regenerated", "DigitStyles")["regenerations_per_image"]
    code = generation(["regenerate"], "embedded", profile["synthetic"], per_image)
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
    controls, text = tables([controls_dir, sweep_dir], digitstyles.DOMAINS, order, profile)
    text.append(contrasts_table(readings(controls[SELECTIONS[0]]),
                                "Each row against its control (training-domain validation), paired by trial seed; "
                                "Holm over these comparisons:"))
    all_styles, more = tables([all_styles_dir, (sweep_dir, ["ERM"])], digitstyles.DOMAINS, ALGORITHMS, profile)
    text += ["With the all-styles generator (it saw every test style; UNSAFE_generator_saw_test_env):", *more]
    text.append(contrasts_table(generator_effect(headline, all_styles[SELECTIONS[0]]),
                                "The part of each row owed to a generator that saw the test style (training-domain "
                                "validation), paired by trial seed; Holm over these comparisons:"))
    print("\n\n".join(text))
    with open(os.path.join(folder, "ablation.txt"), "w") as f:
        f.write("\n\n".join(text) + "\n")
    with open(os.path.join(folder, "ablation.json"), "w") as f:
        json.dump(dict(controls=controls, all_styles=all_styles), f, indent=1)
    print(f"wrote {os.path.join(folder, 'ablation.txt')}; ablation finished in {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
