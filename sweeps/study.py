"""The pre-registered study of ``docs/protocol.md``: which methods beat ERM on DigitStyles, with generators that
never saw the test style, on fresh trials that each draw their own synthetic images.

    python sweeps/study.py [--data_dir data] [--output_dir outputs/study] [--lanes N]
    python sweeps/study.py --status                  # runs finished per row, no accuracy
    python sweeps/study.py --tables_from sweeps/results/digitstyles_study_runs.json

1. writes DigitStyles (as the main job);
2. generates every row's synthetic images with the per-test-env embedded models, one draw per trial
   (``--per_trial``: each trial's images from its own training split, the trial in their seeds), resumable;
3. sweeps the protocol's rows over every test env on trials ``TRIAL_SEED_FROM`` ... (``launchers.sweep``: the stock
   sweep with fresh trial seeds), resumable (finished runs kept, interrupted ones redone);
4. analyses as the protocol says, once every run is done: the primary family (each method - ERM) and the secondary
   family (each method - its control, with TOST at +/- ``MARGIN``), Holm within each, under training-domain
   validation; the oracle's the same way, exploratory. Writes the tables, a forest plot and the per-run file.

Constants below are the protocol's; changing one after the first run is a deviation the protocol must record.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import main_job  # noqa: E402  (the main job's stages: DigitStyles, generation calls, the sweep's subprocess)

from domainbed_diffusion import results  # noqa: E402

REPO = main_job.REPO
METHODS = ["MIRO", "CDGA_PG", "CDGA_IG", "EDSAM", "LatentPrior", "DomainFusion"]
CONTROLS = ["Regenerated", "Regenerated_Balanced", "Composite", "ERM_FusionMatched"]
ROWS = ["ERM", *METHODS, *CONTROLS]
PRIMARY = [(m, "ERM") for m in METHODS]
SECONDARY = [("CDGA_PG", "Regenerated"), ("CDGA_IG", "Regenerated"), ("CDGA_IG", "Composite"),
             ("EDSAM", "Regenerated_Balanced"), ("LatentPrior", "Regenerated_Balanced"),
             ("DomainFusion", "ERM_FusionMatched")]
FAMILIES = {"primary": PRIMARY, "secondary": SECONDARY}
MARGIN = 0.03  # equivalence margin: +/- 3 points of Avg
TRIAL_SEED_FROM = 100  # earlier tables used trials 0, 1, 2
EDSAM_M = 3  # ED-SAM's samples per image (the paper's 10 would triple its generation; see the protocol)
GENERATION = {"cdga-pg": 1, "cdga-ig": 1, "composite": 1, "latent-prior": 1, "edsam": EDSAM_M, "regenerate": 2}
PROFILES = {
    "study": dict(trials=12, steps=None, synthetic="synthetic-study", generation=[], title=""),
    # the same stages on 5 images per (env, class), one short trial: checks the wiring, measures nothing
    "smoke": dict(trials=1, steps=26, synthetic="synthetic-study-smoke", title="SMOKE: 1 trial, 26 steps, not a "
                  "result.", generation=["--max_per_class", "5", "--bandwidth_references", "8"]),
}


def trial_seeds(profile):
    return [TRIAL_SEED_FROM + t for t in range(profile["trials"])]


def generate(data_dir, profile, workers):
    from offline_generation.cli import main as generator
    for samples in sorted(set(GENERATION.values())):
        methods = [m for m, n in GENERATION.items() if n == samples]
        code = generator(["--dataset", "DigitStyles", "--data_dir", data_dir, "--methods", *methods,
                          "--synthetic_root", os.path.join(data_dir, profile["synthetic"]), "--model", "embedded",
                          "--num_samples", str(samples), "--batch_size", "64", "--workers", str(workers),
                          "--per_trial", "--trial_seeds", *map(str, trial_seeds(profile)), *profile["generation"]])
        if code:
            return code
    return 0


def sweep_arguments(data_dir, sweep_dir, profile):
    args = main_job.sweep_args(data_dir, sweep_dir, dict(profile, edsam_m=EDSAM_M, n_hparams=1), ROWS,
                               profile["synthetic"])
    return args + ["--trial_seed_from", str(TRIAL_SEED_FROM)]


def analyse(tidy, selection):
    """The protocol's comparisons of one selection's table: Holm within each family, TOST for every pair."""
    table = results.tables.build(tidy, "DigitStyles", selection)
    return results.tables.compare_families(table, FAMILIES, "ERM", MARGIN)


def text(table, title, exploratory=False):
    header, rows = results.tables.cells(table, "ERM")
    widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
    lines = [f"-------- {title + ' ' if title else ''}DigitStyles, model selection: {table['title']}"
             + (" (exploratory)" if exploratory else " (the protocol's primary analysis)")]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    for name, pairs in FAMILIES.items():
        mine = [c for c in table["comparisons"] if c["family"] == name]
        lines += [f"{name.capitalize()} family ({len(pairs)} comparisons, Holm within it; TOST at +/-"
                  f"{100 * MARGIN:g} points, Holm within it):", *results.tables.contrast_lines(mine)]
    trials = min((r["trials"] for r in table["rows"]), default=0)
    lines.append(f"Test-env accuracy (%): mean +/- standard error over trials (n - 1); Avg: mean of the test envs' "
                 f"means; vs ERM: the primary family's paired difference of per-trial Avg with its 95% t-interval; "
                 f"differences paired by trial seed ({trials} trials at least per row); verdicts: 'differs' (Holm p "
                 f"< 0.05), 'equivalent' (TOST within +/-{100 * MARGIN:g}), 'differs, within margin', "
                 f"'inconclusive'. img/step, s/step: measured over every run of the row.")
    lines += table["notes"]
    return "\n".join(lines)


def tables(tidy, folder, title):
    """The protocol's tables (training-domain validation, then the oracle's, exploratory), the forest plot and the
    per-run file under ``folder``; returns the text."""
    os.makedirs(folder, exist_ok=True)
    training, oracle = analyse(tidy, "training"), analyse(tidy, "oracle")
    out = "\n\n".join([text(training, title), text(oracle, title, exploratory=True)])
    with open(os.path.join(folder, "study.txt"), "w") as f:
        f.write(out + "\n")
    results.write_tidy(tidy, os.path.join(folder, "runs.json"))
    results.plots.forest([training], os.path.join(folder, "forest.png"), "ERM", title, MARGIN)
    results.plots.accuracy(training, os.path.join(folder, "accuracy.png"), "ERM", title)
    return out


def status(sweep_dir):
    """Runs finished per row, from the ``done`` files alone: no accuracy is read before the study ends."""
    import glob
    import json
    done = {}
    for marker in glob.glob(os.path.join(sweep_dir, "*", "done")):
        with open(os.path.join(os.path.dirname(marker), "results.jsonl")) as f:
            first = json.loads(f.readline())
        done[first["args"]["algorithm"]] = done.get(first["args"]["algorithm"], 0) + 1
    return done


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    parser.add_argument("--output_dir", default=None, help="default: outputs/study (outputs/study-smoke)")
    parser.add_argument("--smoke", action="store_true", help="the stages on a few images and one short trial")
    parser.add_argument("--lanes", type=int, default=None, help="parallel runs and generation workers")
    parser.add_argument("--status", action="store_true", help="print the runs finished per row and stop")
    parser.add_argument("--tables_from", default=None, metavar="RUNS_JSON",
                        help="recompute the study's tables from a per-run file alone")
    args = parser.parse_args(argv)
    profile = PROFILES["smoke" if args.smoke else "study"]
    out = os.path.abspath(args.output_dir or os.path.join(REPO, "outputs", "study-smoke" if args.smoke else "study"))
    sweep_dir = os.path.join(out, "sweep")
    if args.tables_from:
        print(tables(results.read_tidy(args.tables_from), out, profile["title"]))
        return 0
    if args.status:
        done = status(sweep_dir)
        expected = 4 * profile["trials"]
        for row in ROWS:
            print(f"{row:<22} {done.get(row, 0):>3}/{expected} runs done")
        print(f"{sum(done.values())}/{expected * len(ROWS)} runs done")
        return 0
    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [REPO, os.environ.get("PYTHONPATH")] if p),
               PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    if args.lanes:
        env["DOMAINBED_DIFFUSION_LANES"] = str(args.lanes)
    main_job._START = start = time.time()
    main_job.step("1/4 DigitStyles")
    from domainbed_diffusion.benchmark import digitstyles
    digitstyles.prepare(data_dir, pool=False)
    main_job.step(f"2/4 synthetic domains, one draw per trial (trials {trial_seeds(profile)[0]}-"
                  f"{trial_seeds(profile)[-1]})")
    from domainbed_diffusion.launchers.cpu_parallel import default_lanes
    code = generate(data_dir, profile, args.lanes or default_lanes())
    if code:
        return code
    main_job.step("3/4 DomainBed sweep (fresh trial seeds)")
    main_job.sweep(sweep_arguments(data_dir, sweep_dir, profile), env, module="domainbed_diffusion.launchers.sweep")
    main_job.step("4/4 the protocol's analysis")
    tidy = results.load(sweep_dir, order=ROWS, warn=lambda line: print(line, file=sys.stderr))
    print(tables(tidy, out, profile["title"]))
    print(f"wrote {os.path.join(out, 'study.txt')}, runs.json, forest.png, accuracy.png; the study took "
          f"{(time.time() - start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    main_job.run_script(main)
