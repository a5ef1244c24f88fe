"""The pre-registered study of ``docs/protocol.md``: which methods beat ERM on DigitStyles, with generators that
never saw the test style, on fresh trials that each draw their own synthetic images.

    python sweeps/study.py [--data_dir data] [--output_dir outputs/study] [--lanes N]
    python sweeps/study.py --status                  # runs finished per row, no accuracy
    python sweeps/study.py --tables_from sweeps/results/digitstyles_study_runs.json [--headline]

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

from domainbed_diffusion import results
from offline_generation import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
HPARAMS = dict(edsam_m=EDSAM_M)  # every run's; what is generated follows their twins (regenerations: 2, default)
GENERATED = ["cdga-pg", "cdga-ig", "composite", "latent-prior", "edsam", "regenerate"]
PROFILES = {
    "study": dict(trials=12, steps=None, synthetic="synthetic-study", max_per_class=None, settings={}, title=""),
    # the same stages on 5 images per (env, class), one short trial: checks the wiring, measures nothing
    "smoke": dict(trials=1, steps=26, synthetic="synthetic-study-smoke", title="SMOKE: 1 trial, 26 steps, not a "
                  "result.", max_per_class=5, settings={"latent-prior": dict(bandwidth_references=8)}),
}


def trial_seeds(profile):
    return [TRIAL_SEED_FROM + t for t in range(profile["trials"])]


def generation(data_dir, profile, workers):
    return pipeline.generation("DigitStyles", data_dir, GENERATED, os.path.join(data_dir, profile["synthetic"]),
                               HPARAMS, trials=trial_seeds(profile), workers=workers,
                               max_per_class=profile["max_per_class"], settings=profile["settings"])


def sweep(data_dir, sweep_dir, profile):
    return pipeline.Sweep(data_dir, sweep_dir, tuple(ROWS), trials=profile["trials"], steps=profile["steps"],
                          hparams=dict(HPARAMS, synthetic_root=os.path.join(data_dir, profile["synthetic"])),
                          trial_seed_from=TRIAL_SEED_FROM)


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


def headline(table):
    """The README's narrow view of the primary analysis: each row's Avg, its difference with ERM and the verdict,
    its cost; then the secondary family's readings."""
    header, rows = results.tables.cells(table, "ERM")
    keep = [header.index(k) for k in ("Algorithm", "Avg", "vs ERM [95% CI]", "equivalence", "x ERM")]
    lines = [[r[k] for k in keep] for r in [header] + rows]
    lines[0][3] = "verdict"
    widths = [max(len(r[k]) for r in lines) for k in range(len(keep))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    out.append("Each method against its control (secondary family):")
    out += results.tables.contrast_lines([c for c in table["comparisons"] if c["family"] == "secondary"])
    return "\n".join(out)


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    parser.add_argument("--output_dir", default=None, help="default: outputs/study (outputs/study-smoke)")
    parser.add_argument("--smoke", action="store_true", help="the stages on a few images and one short trial")
    parser.add_argument("--lanes", type=int, default=None, help="parallel runs and generation workers")
    parser.add_argument("--status", action="store_true", help="print the runs finished per row and stop")
    parser.add_argument("--headline", action="store_true", help="with --tables_from: the README's narrow table")
    parser.add_argument("--tables_from", default=None, metavar="RUNS_JSON",
                        help="recompute the study's tables from a per-run file alone")
    args = parser.parse_args(argv)
    profile = PROFILES["smoke" if args.smoke else "study"]
    out = os.path.abspath(args.output_dir or os.path.join(REPO, "outputs", "study-smoke" if args.smoke else "study"))
    sweep_dir = os.path.join(out, "sweep")
    if args.tables_from and args.headline:
        print(headline(analyse(results.read_tidy(args.tables_from), "training")))
        return 0
    if args.tables_from:
        print(tables(results.read_tidy(args.tables_from), out, profile["title"]))
        return 0
    if args.status:
        done = pipeline.finished_runs(sweep_dir)
        expected = 4 * profile["trials"]
        for row in ROWS:
            print(f"{row:<22} {done.get(row, 0):>3}/{expected} runs done")
        print(f"{sum(done.values())}/{expected * len(ROWS)} runs done")
        return 0
    data_dir = os.path.abspath(args.data_dir)
    os.makedirs(out, exist_ok=True)
    clock = pipeline.Clock()
    clock.step("1/4 DigitStyles")
    pipeline.prepare(data_dir)
    clock.step(f"2/4 synthetic domains, one draw per trial (trials {trial_seeds(profile)[0]}-"
               f"{trial_seeds(profile)[-1]})")
    from domainbed_diffusion.launchers.cpu_parallel import default_lanes
    pipeline.generate(generation(data_dir, profile, args.lanes or default_lanes()))
    clock.step("3/4 DomainBed sweep (fresh trial seeds)")
    pipeline.sweep(sweep(data_dir, sweep_dir, profile), args.lanes)
    clock.step("4/4 the protocol's analysis")
    tidy = results.load(sweep_dir, order=ROWS, warn=lambda line: print(line, file=sys.stderr))
    print(tables(tidy, out, profile["title"]))
    print(f"wrote {os.path.join(out, 'study.txt')}, runs.json, forest.png, accuracy.png; the study took "
          f"{clock.minutes():.1f} min")
    return 0


if __name__ == "__main__":
    pipeline.run_script(main)
