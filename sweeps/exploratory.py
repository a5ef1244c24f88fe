"""Exploratory rows beyond the papers, on DigitStyles with the main job's settings (3 trials, default hparams, the
per-test-env generators, one draw per trial): SWAD on ERM and on CDGA-IG, CORAL with CDGA-IG's images as an extra
environment against CORAL, and ED-SAM with and without the label filter, with each method's filter drop rate.
Exploratory: no protocol, no confirmatory claim (``docs/results.md``).

    python sweeps/exploratory.py [--quick] [--data_dir data] [--output_dir outputs/exploratory]
    python sweeps/exploratory.py --tables_from sweeps/results/digitstyles_exploratory_runs.json

Reuses the main job's synthetic images where they are (``<data_dir>/synthetic``), makes what is missing, runs
one stock sweep folder per distinct hparams set (a CORAL run with extra environments is still ``CORAL``), and prints
one table with every row paired with ERM by trial seed.
"""
import argparse
import json
import os
import sys

from domainbed_diffusion import results
from offline_generation import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# label -> (DomainBed algorithm, hparams over the defaults); one sweep folder per distinct hparams set
ROWS = {
    "ERM": ("ERM", {}),
    "ERM_SWAD": ("ERM_SWAD", {}),
    "CDGA_IG": ("CDGA_IG", {}),
    "CDGA_IG_SWAD": ("CDGA_IG_SWAD", {}),
    "CORAL": ("CORAL", {}),
    "CORAL + CDGA-IG env": ("CORAL", {"synthetic_methods": ["cdga-ig"], "synthetic_as": "environments"}),
    "EDSAM": ("EDSAM", {}),
    "EDSAM filtered": ("EDSAM", {"synthetic_filter": "label"}),
}
FILTERED = ["cdga-pg", "cdga-ig", "edsam", "latent-prior"]  # drop rates reported for each
# each option against the same row without it, paired by trial seed (ERM_SWAD - ERM is the table's own column)
CONTRASTS = [("CDGA_IG_SWAD", "CDGA_IG"), ("CORAL + CDGA-IG env", "CORAL"), ("EDSAM filtered", "EDSAM")]


def folders(rows):
    """``{folder slug: (hparams, [(label, algorithm)])}``: rows that share hparams share a sweep folder."""
    out = {}
    for label, (algorithm, hparams) in rows.items():
        slug = "default" if not hparams else "-".join(f"{k}={v if not isinstance(v, list) else '+'.join(v)}"
                                                     for k, v in sorted(hparams.items()))
        out.setdefault(slug, (hparams, []))[1].append((label, algorithm))
    return out


def relabel(tidy, labels):
    """``tidy`` with its rows named by their labels (``{algorithm: label}``): one sweep folder's rows."""
    for item in tidy["runs"] + tidy["choices"]:
        item["row"] = labels.get(item["algorithm"], item["row"])
    return tidy


def merged(tidies, rows):
    """One tidy result of several folders' (their rows distinct once relabelled), rows in ``rows``' order."""
    out = dict(tidies[0], runs=[r for t in tidies for r in t["runs"]], choices=[c for t in tidies for c in t["choices"]],
               rows=[r for r in rows if any(r in t["rows"] for t in tidies)])
    out["read"] = "; ".join(t.get("read", "") for t in tidies)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    parser.add_argument("--output_dir", default=None, help="default: outputs/exploratory[-quick]")
    parser.add_argument("--quick", action="store_true", help="one short trial on a few images: wiring only")
    parser.add_argument("--tables_from", default=None, metavar="RUNS_JSON",
                        help="print the tables from a per-run file this script wrote (no generation, no run)")
    args = parser.parse_args(argv)
    if args.tables_from:
        print(tables_text(results.load(args.tables_from), pipeline.PROFILES["full"]))
        return 0
    profile = pipeline.PROFILES["quick" if args.quick else "full"]
    out = os.path.abspath(args.output_dir or os.path.join(REPO, "outputs",
                                                          "exploratory" + ("-quick" if args.quick else "")))
    data_dir = os.path.abspath(args.data_dir)
    synthetic_root = os.path.join(data_dir, profile["synthetic"])
    clock = pipeline.Clock()
    clock.step("1/4 DigitStyles and the synthetic images (the main job's where they are)")
    from domainbed_diffusion.launchers.cpu_parallel import default_lanes
    pipeline.prepare(data_dir)
    trials = list(range(profile["trials"]))
    pipeline.generate(pipeline.generation("DigitStyles", data_dir, FILTERED, synthetic_root, profile["hparams"],
                                          trials=trials, workers=default_lanes(),
                                          max_per_class=profile["max_per_class"], settings=profile["settings"]))
    clock.step("2/4 the label filter (per test env and trial)")
    pipeline.filter_images("DigitStyles", data_dir, synthetic_root, FILTERED, trial_seeds=trials)
    clock.step("3/4 DomainBed sweeps, one folder per hparams set")
    sources = []
    for slug, (hparams, rows) in folders(ROWS).items():
        sweep_dir = os.path.join(out, slug, "sweep")
        pipeline.sweep(pipeline.Sweep(data_dir, sweep_dir, tuple(a for _, a in rows), trials=profile["trials"],
                                      steps=profile["steps"], hparams=dict(profile["hparams"],
                                                                           synthetic_root=synthetic_root, **hparams)))
        sources.append((sweep_dir, {a: label for label, a in rows}))
    clock.step("4/4 results")
    tidies = []
    for folder, labels in sources:
        tidy = relabel(results.load([(folder, list(labels))], warn=lambda line: print(line, file=sys.stderr)), labels)
        tidy["rows"] = [labels.get(r, r) for r in tidy["rows"]]
        tidies.append(tidy)
    tidy = merged(tidies, list(ROWS))
    drops = filter_drops(synthetic_root)
    text = tables_text(tidy, profile) + "\n\nLabel filter (python -m offline_generation filter, --criterion disagree), images " \
        "dropped per method over every (test env, trial):\n" + "\n".join(f"  {m:<13} {d}" for m, d in drops.items())
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "exploratory.txt"), "w") as f:
        f.write(text + "\n")
    results.write_tidy(tidy, os.path.join(out, "runs.json"))
    print(text)
    print(f"wrote {os.path.join(out, 'exploratory.txt')} and runs.json; {clock.minutes():.1f} min")
    return 0


def tables_text(tidy, profile):
    """The exploratory tables: every row against ERM and each option against its row without it."""
    from domainbed_diffusion.results import cli
    _, texts = cli.report(tidy, "ERM", "table", contrasts=CONTRASTS,
                          title=("EXPLORATORY " + pipeline.title(profile)).strip())
    return texts["text"]


def filter_drops(synthetic_root):
    """``{method: "dropped of images (share)"}`` from the filter files' headers."""
    from domainbed_diffusion.data.filtering import filter_path
    out = {}
    for method in FILTERED:
        path = filter_path(os.path.join(synthetic_root, "DigitStyles"), method, "label")
        with open(path) as f:
            headers = [h for h in map(json.loads, f) if h.get("header")]
        images, dropped = sum(h["images"] for h in headers), sum(h["dropped"] for h in headers)
        out[method] = f"{dropped} of {images} ({dropped / max(images, 1):.1%})"
    return out


if __name__ == "__main__":
    pipeline.run_script(main)
