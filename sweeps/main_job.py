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
import os
import sys

from domainbed_diffusion import catalogue, results
from offline_generation import pipeline

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

PROFILES = pipeline.PROFILES


def generated_methods(algorithms):
    """The generation methods whose files ``algorithms`` read (catalogue specs; online rows read none)."""
    return [catalogue.entry(a).spec.name for a in algorithms if catalogue.entry(a) and catalogue.entry(a).spec]


def uses_generator(algorithm):
    """Whether an algorithm's images come from a diffusion model: those that define the leak opt-in."""
    from domainbed import hparams_registry
    return "UNSAFE_generator_saw_test_env" in hparams_registry.default_hparams(algorithm, "DigitStyles")


def protocol(profile):
    """The caption's words for how hyperparameters were chosen."""
    if profile["n_hparams"] == 1:
        return ("default hyperparameters, no random search (--n_hparams 1: DigitStyles' lr, batch size and steps "
                "were fixed on ERM's training-domain validation, each method's own settings are its paper's; a "
                "search of 20 sets per row would take 20 times the sweep), checkpoints every 25 steps.")
    return (f"random search, {profile['n_hparams']} hparams sets per (row, test env, trial), the first the "
            "defaults; checkpoints every 25 steps.")


def contrasts_table(pairs, heading):
    """``[(label, paired(...))]`` as lines: the paired difference, its 95% t-interval and Holm-corrected p, Holm
    over these comparisons alone."""
    family = [dict(c, row=label, other="", p_holm=p)
              for (label, c), p in zip(pairs, results.holm([c["p"] for _, c in pairs]))]
    return "\n".join([heading, *results.tables.contrast_lines(family)])


def readings(table, pairs=None):
    """Each row of a table against its control (``catalogue.readings``), paired by trial seed."""
    rows = {r["row"]: r["per_trial"] for r in table["rows"]}
    return [(f"{a} - {b}", results.paired(rows[a], rows[b])) for a, b in (pairs or catalogue.readings())
            if a in rows and b in rows]


def generator_effect(default, all_styles):
    """Each row with the all-styles generator minus the same row with the per-test-env ones, paired by trial."""
    mine = {r["row"]: r["per_trial"] for r in default["rows"]}
    theirs = {r["row"]: r["per_trial"] for r in all_styles["rows"]}
    return [(f"{a}: all-styles - per-test-env", results.paired(theirs[a], mine[a]))
            for a in ALGORITHMS if a != "ERM" and a in mine and a in theirs]


class MainJob:
    """The stages of the main job for one profile, on the pipeline API."""

    def __init__(self, args, profile):
        self.profile, self.lanes = profile, args.lanes
        self.data_dir = os.path.abspath(args.data_dir)
        self.out = os.path.abspath(args.output_dir or os.path.join(REPO, "outputs", "digitstyles"
                                                                   + ("-quick" if profile["quick"] else "")))
        self.clock = pipeline.Clock()

    def synthetic_root(self, suffix=""):
        return os.path.join(self.data_dir, self.profile["synthetic"] + suffix)

    def generate(self, methods, model="embedded", suffix="", hparams=None):
        """``methods``' synthetic domains with ``model`` (the per-test-env models by default), a draw per trial,
        what the sweep's hparams select (``hparams`` over the profile's)."""
        from domainbed_diffusion.launchers.cpu_parallel import default_lanes
        p = self.profile
        pipeline.generate(pipeline.generation(
            "DigitStyles", self.data_dir, methods, self.synthetic_root(suffix), dict(p["hparams"], **(hparams or {})),
            trials=range(p["trials"]), model=model, workers=self.lanes or default_lanes(),
            max_per_class=p["max_per_class"], settings=p["settings"]))

    def sweep(self, sweep_dir, algorithms, suffix="", **hparams):
        p = self.profile
        pipeline.sweep(pipeline.Sweep(
            self.data_dir, sweep_dir, tuple(algorithms), trials=p["trials"], n_hparams=p["n_hparams"],
            steps=p["steps"], hparams=dict(p["hparams"], synthetic_root=self.synthetic_root(suffix), **hparams)),
            self.lanes)

    def tables(self, sources, order, folder):
        return pipeline.tables(sources, folder, order=order, title=pipeline.title(self.profile),
                               caption=f"Protocol: {protocol(self.profile)}")


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
    job = MainJob(args, profile)
    out = job.out
    os.makedirs(out, exist_ok=True)

    job.clock.step("1/6 DigitStyles")
    pipeline.prepare(job.data_dir)

    job.clock.step("2/6 synthetic domains with the embedded models, one per test env")
    methods = generated_methods(algorithms)
    if methods:
        job.generate(methods)

    job.clock.step("3/6 preview grids")
    if methods:
        pipeline.preview("DigitStyles", job.data_dir, job.synthetic_root(), methods, os.path.join(out, "preview.png"),
                         rows=3, variants=6, size=64)

    if importlib.util.find_spec("domainbed") is None:
        print(GET_DOMAINBED, file=sys.stderr)
        return 2
    job.clock.step("4/6 synthetic-domain report")
    pipeline.report("DigitStyles", job.data_dir, job.synthetic_root(), methods, os.path.join(out, "report"))

    job.clock.step("5/6 DomainBed sweep")
    sweep_dir = os.path.join(out, "sweep")
    job.sweep(sweep_dir, algorithms)

    job.clock.step("6/6 results")
    summaries, text = job.tables(sweep_dir, ALGORITHMS, out)
    print(text)
    print(f"wrote {out}/results.txt (.md, .tex), runs.json, accuracy_*.png, forest_DigitStyles.png and "
          f"{os.path.join(out, 'preview.png')}")
    print(f"main job finished in {job.clock.minutes():.1f} min")
    if args.ablation:
        return ablation(job, algorithms, sweep_dir, summaries["training"])
    return 0


def ablation(job, algorithms, sweep_dir, headline):
    """The controls (with the per-test-env generators) and the generator rows with the all-styles model, read
    against the main job's rows, paired by trial seed."""
    start = job.clock.minutes()
    folder = os.path.join(job.out, "ablation")
    job.clock.step("ablation 1/3 controls: regenerations (ED-SAM at rho = 0), CDGA-IG's composites, and their sweep")
    job.generate(["regenerate", "composite"])
    controls_dir = os.path.join(folder, "controls", "sweep")
    job.sweep(controls_dir, catalogue.controls())

    job.clock.step("ablation 2/3 the rows that use a diffusion model, with the all-styles model")
    rows = [a for a in algorithms if a != "ERM" and uses_generator(a)]
    made = generated_methods(rows)  # the files those rows read; DomainFusion loads the model itself
    if made:
        job.generate(made, ALL_STYLES, "-all-styles")
    # the same report as the main job's, for the generator that saw the test styles
    pipeline.report("DigitStyles", job.data_dir, job.synthetic_root("-all-styles"), made,
                    os.path.join(folder, "all-styles", "report"))
    all_styles_dir = os.path.join(folder, "all-styles", "sweep")
    job.sweep(all_styles_dir, rows, "-all-styles", diffusion_model=ALL_STYLES, UNSAFE_generator_saw_test_env=True)

    job.clock.step("ablation 3/3 tables")
    order = ["ERM", *catalogue.controls(), *ALGORITHMS[1:]]
    controls, text = job.tables([controls_dir, sweep_dir], order, os.path.join(folder, "controls"))
    text = [text, contrasts_table(readings(controls["training"]),
                                  "Each row against its control (training-domain validation), paired by trial seed; "
                                  "Holm over these comparisons:")]
    all_styles, more = job.tables([all_styles_dir, (sweep_dir, ["ERM"])], ALGORITHMS,
                                  os.path.join(folder, "all-styles"))
    text += ["With the all-styles generator (it saw every test style; UNSAFE_generator_saw_test_env):", more]
    text.append(contrasts_table(generator_effect(headline, all_styles["training"]),
                                "The part of each row owed to a generator that saw the test style (training-domain "
                                "validation), paired by trial seed; Holm over these comparisons:"))
    print("\n\n".join(text))
    with open(os.path.join(folder, "ablation.txt"), "w") as f:
        f.write("\n\n".join(text) + "\n")
    print(f"wrote {os.path.join(folder, 'ablation.txt')} (runs.json and plots under controls/ and all-styles/); "
          f"ablation finished in {job.clock.minutes() - start:.1f} min")
    return 0


if __name__ == "__main__":
    pipeline.run_script(main)
