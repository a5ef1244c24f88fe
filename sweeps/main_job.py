"""The main job on the embedded default: DigitStyles from data to a results table, on a CPU.

    python sweeps/main_job.py [--quick] [--all_styles] [--data_dir data] [--output_dir outputs/digitstyles]
                              [--trials N] [--steps N]

1. writes DigitStyles (scikit-learn's digits in four styles) in DomainBed's folder layout;
2. generates every method's synthetic domains with the embedded diffusion models, one per test env: the images
   a run with test env k reads were made by the model that never saw style k (resumable);
3. writes a preview grid of each method's synthetic images;
4. writes the synthetic-domain report (``python -m offline_generation report``: label fidelity, style
   attribution, FID/KID, copies, a map) under ``<output_dir>/report``;
5. runs a stock DomainBed sweep of ERM and every algorithm of the catalogue over every test env (resumable:
   finished runs are kept, interrupted ones redone);
6. prints stock collect_results' tables and saves them, with a bar chart of test-env accuracy (training-domain
   validation) per method per test env.

``--all_styles`` is the ablation: ERM and the rows that use a diffusion model, with the all-styles model (it saw
every benchmark style; the runs opt in with ``UNSAFE_generator_saw_test_env``), in their own folders. A row's
difference between the two tables is the part of its gain owed to a generator that saw the test style.
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
# from the first 5 images per (env, class), kept in their own folder so the full job never mixes them in.
PROFILES = {
    "full": dict(trials=3, steps=None, edsam_m=3, max_per_class=None, synthetic="synthetic"),
    "quick": dict(trials=1, steps=40, edsam_m=2, max_per_class=5, synthetic="synthetic-quick"),
}


def step(title):
    print(f"\n== {title} ==", flush=True)


def uses_generator(algorithm):
    """Whether an algorithm's images come from a diffusion model: those that define the leak opt-in."""
    from domainbed import hparams_registry
    return "UNSAFE_generator_saw_test_env" in hparams_registry.default_hparams(algorithm, "DigitStyles")


def sweep_args(data_dir, sweep_dir, profile, all_styles=False):
    hparams = {"edsam_m": profile["edsam_m"], "synthetic_root": os.path.join(data_dir, profile["synthetic"])}
    algorithms = ALGORITHMS
    if all_styles:
        hparams.update(diffusion_model=ALL_STYLES, UNSAFE_generator_saw_test_env=True)
        algorithms = ["ERM"] + [a for a in ALGORITHMS if uses_generator(a)]
    args = ["--datasets", "DigitStyles", "--algorithms", *algorithms, "--data_dir", data_dir,
            "--output_dir", sweep_dir, "--command_launcher", "cpu_parallel", "--n_trials", str(profile["trials"]),
            "--n_hparams", "1", "--single_test_envs", "--skip_confirmation",
            "--hparams", json.dumps(hparams)]
    if profile["steps"]:
        args += ["--steps", str(profile["steps"])]
    return args


def summarize(sweep_dir):
    """Per algorithm: test-env accuracy under training-domain validation (mean, standard error, trials) per test
    env and averaged over them, and its cost: images per step and seconds per step (also relative to ERM's)."""
    import numpy as np
    from domainbed import model_selection
    from domainbed.lib import reporting
    records = reporting.load_records(sweep_dir)
    out = {}
    for group in reporting.get_grouped_records(records):
        acc = model_selection.IIDAccuracySelectionMethod.sweep_acc(group["records"])
        if acc is not None:
            out.setdefault(group["algorithm"], {}).setdefault(group["test_env"], {})[group["trial_seed"]] = acc
    last = {}  # each run's last checkpoint: its step_time and images averaged over the steps since the one before
    for r in records:
        key = (r["args"]["algorithm"], tuple(r["args"]["test_envs"]), r["args"]["trial_seed"])
        if key not in last or r["step"] > last[key]["step"]:
            last[key] = r
    summary = {}
    for algorithm, envs in out.items():
        per_env = {int(e): _mean_sem(list(t.values())) for e, t in envs.items()}
        trials = sorted(set.intersection(*(set(t) for t in envs.values())))
        per_trial = {t: float(np.mean([envs[e][t] for e in envs])) for t in trials}  # over test envs
        runs = [r for (a, _, _), r in last.items() if a == algorithm]
        # our algorithms report the images of each step; DomainBed's ERM takes batch_size from each training env
        images = [r["images"] if "images" in r else r["hparams"]["batch_size"] * _train_envs(r) for r in runs]
        summary[algorithm] = dict(test_env=per_env, average=_mean_sem(list(per_trial.values())),
                                  per_run={int(e): {int(t): float(v) for t, v in sorted(ts.items())}
                                           for e, ts in sorted(envs.items())},  # test env -> trial seed -> acc
                                  average_per_trial=per_trial, images_per_step=float(np.mean(images)),
                                  seconds_per_step=float(np.mean([r["step_time"] for r in runs])), runs=len(runs))
    erm = summary.get("ERM")
    comparisons = statistics.compare_to({a: row["average_per_trial"] for a, row in summary.items()}, "ERM")
    for algorithm, row in summary.items():
        row["seconds_vs_erm"] = row["seconds_per_step"] / erm["seconds_per_step"] if erm else None
        row["images_vs_erm"] = row["images_per_step"] / erm["images_per_step"] if erm else None
        if algorithm in comparisons:
            row["vs_erm"] = comparisons[algorithm]
    return summary


def _train_envs(record):
    from domainbed import datasets
    return datasets.num_environments(record["args"]["dataset"]) - len(record["args"]["test_envs"])


def _mean_sem(values):
    import numpy as np
    values = np.asarray(values, dtype=float)
    sem = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
    return dict(mean=float(values.mean()), sem=sem, n=int(len(values)))


def results_table(summary, env_names):
    """The main job's table: accuracy per test env and on average (%, mean +/- standard error, trials), the
    difference with ERM paired by trial seed with its 95% t-interval and Holm-corrected p-value, and each row's
    cost."""
    def cell(v):
        return f"{100 * v['mean']:.1f} +/- {100 * v['sem']:.1f}" if v["n"] > 1 else f"{100 * v['mean']:.1f}"
    header = ["Algorithm", *env_names, "Avg", "vs ERM [95% CI]", "p (Holm)", "trials", "img/step", "s/step",
              "x ERM"]
    rows = []
    for algorithm in [a for a in ALGORITHMS if a in summary]:
        row = summary[algorithm]
        envs = [cell(row["test_env"][e]) if e in row["test_env"] else "-" for e in range(len(env_names))]
        vs, p = "", ""
        c = row.get("vs_erm")
        if c is not None:
            vs = f"{100 * c['mean']:+.1f}" + (f" [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]"
                                              if c["n"] > 1 else "")
            p = f"{c['p_holm']:.3f}{' *' if c['p_holm'] < 0.05 else ''}" if c["n"] > 1 else ""
        trials = min(v["n"] for v in row["test_env"].values())
        rows.append([algorithm, *envs, cell(row["average"]), vs, p, str(trials), f"{row['images_per_step']:.0f}",
                     f"{row['seconds_per_step']:.3f}",
                     f"{row['seconds_vs_erm']:.2f}" if row["seconds_vs_erm"] else ""])
    widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    lines.append("Test-env accuracy (%), training-domain validation, mean +/- standard error over trials; Avg: "
                 "per trial over test envs. vs ERM: difference of Avg paired by trial seed, with its 95% "
                 "t-interval (n - 1 degrees of freedom); p: paired t-test, Holm-corrected over the table's "
                 "comparisons with ERM, * below 0.05. img/step: images through the network per step; s/step: "
                 "measured, x ERM: relative to ERM's.")
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    parser.add_argument("--output_dir", default=None, help="default: outputs/digitstyles[-quick]")
    parser.add_argument("--quick", action="store_true", help="one short trial: a first look in minutes")
    parser.add_argument("--all_styles", action="store_true",
                        help="the ablation: the rows that use a diffusion model, with the all-styles model (it saw "
                             "the test styles), beside ERM")
    parser.add_argument("--lanes", type=int, default=None,
                        help="parallel DomainBed runs and generation workers (default: 2 or cores)")
    parser.add_argument("--trials", type=int, default=None, help="trials per (algorithm, test env); default 3, quick 1")
    parser.add_argument("--steps", type=int, default=None, help="training steps; default DigitStyles' N_STEPS, "
                                                                 "quick 40")
    args = parser.parse_args(argv)
    profile = dict(PROFILES["quick" if args.quick else "full"])
    profile.update({k: v for k, v in (("trials", args.trials), ("steps", args.steps)) if v})
    suffix = ("-quick" if args.quick else "") + ("-all-styles" if args.all_styles else "")
    profile["synthetic"] += "-all-styles" if args.all_styles else ""
    out = os.path.abspath(args.output_dir or os.path.join(REPO, "outputs", "digitstyles" + suffix))
    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [REPO, os.environ.get("PYTHONPATH")] if p),
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if args.lanes:
        env["DOMAINBED_DIFFUSION_LANES"] = str(args.lanes)
    start = time.time()

    step("1/6 DigitStyles")
    from domainbed_diffusion import digitstyles
    digitstyles.prepare(data_dir, pool=False)

    step("2/6 synthetic domains with the " + ("all-styles model (ablation)" if args.all_styles else
                                              "embedded models, one per test env"))
    from offline_generation.cli import main as generate
    synthetic_root = os.path.join(data_dir, profile["synthetic"])
    from domainbed_diffusion.launchers.cpu_parallel import default_lanes
    workers = args.lanes or default_lanes()  # the sweep's lanes: one thread each, the same bytes on any machine
    code = generate(["--dataset", "DigitStyles", "--data_dir", data_dir, "--methods", "all",
                     "--output_dir", synthetic_root, "--num_samples", str(profile["edsam_m"]), "--batch_size", "64",
                     "--workers", str(workers), "--trial_seeds", *map(str, range(profile["trials"])),
                     "--model", ALL_STYLES if args.all_styles else "embedded"]
                    + (["--max_per_class", str(profile["max_per_class"])] if profile["max_per_class"] else []))
    if code:
        return code

    step("3/6 preview grids")
    generate(["preview", "--dataset", "DigitStyles", "--data_dir", data_dir, "--output_dir", synthetic_root,
              "--out", os.path.join(out, "preview.png"),
              "--rows", "3", "--variants", "6", "--size", "64"])

    if importlib.util.find_spec("domainbed") is None:
        print(GET_DOMAINBED, file=sys.stderr)
        return 2
    step("4/6 synthetic-domain report")
    code = generate(["report", "--dataset", "DigitStyles", "--data_dir", data_dir, "--synthetic_root", synthetic_root,
                     "--output", os.path.join(out, "report")])
    if code:
        return code

    step("5/6 DomainBed sweep")
    sweep_dir = os.path.join(out, "sweep")
    common = sweep_args(data_dir, sweep_dir, profile, args.all_styles)
    subprocess.run([sys.executable, "-m", "domainbed.scripts.sweep", "delete_incomplete", *common], env=env,
                   check=True, stdout=subprocess.DEVNULL)
    subprocess.run([sys.executable, "-m", "domainbed.scripts.sweep", "launch", *common], env=env, check=True)

    step("6/6 results")
    result = subprocess.run([sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir", sweep_dir],
                            env=env, check=True, capture_output=True, text=True)
    summary = summarize(sweep_dir)
    table = results_table(summary, digitstyles.DOMAINS)
    print(result.stdout)
    print(table)
    with open(os.path.join(out, "results.txt"), "w") as f:
        f.write(result.stdout + "\n" + table + "\n")
    with open(os.path.join(out, "accuracies.json"), "w") as f:
        json.dump(summary, f, indent=1)
    chart = bar_chart(summary, digitstyles.DOMAINS, os.path.join(out, "accuracy.png"))
    print(f"wrote {os.path.join(out, 'results.txt')}, {chart} and {os.path.join(out, 'preview.png')}")
    print(f"main job finished in {(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
