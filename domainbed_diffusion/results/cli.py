"""``python -m domainbed_diffusion.results``: the tables, paired comparisons and plots of any DomainBed sweep."""
import argparse
import os
import sys

from . import plots, records, selection, tables, tidy

FORMATS = {"text": tables.text, "markdown": tables.markdown, "latex": tables.latex}


def parser():
    p = argparse.ArgumentParser(prog="python -m domainbed_diffusion.results", description=__doc__)
    p.add_argument("--input_dir", nargs="+", required=True,
                   help="DomainBed sweep output folder(s) (their runs are read together), or runs.json file(s) "
                        "written by this command")
    p.add_argument("--selection", nargs="+", default=list(selection.SELECTIONS), choices=list(selection.SELECTIONS),
                   help="DomainBed's model selection methods: training-domain validation, leave-one-domain-out, "
                        "the oracle (default: all three, as collect_results)")
    p.add_argument("--baseline", default="ERM", help="the row every other row is paired with (default ERM)")
    p.add_argument("--group_by", nargs="+", default=[], metavar="HPARAM",
                   help="rows by algorithm and these hparams' values, e.g. --group_by diffusion_model")
    p.add_argument("--family", default="all", choices=tables.FAMILIES,
                   help="Holm's family: every comparison printed (all, default) or each table's own (table)")
    p.add_argument("--margin", type=float, default=None, metavar="POINTS",
                   help="equivalence margin in accuracy points (e.g. 3): adds TOST and a verdict per comparison")
    p.add_argument("--contrast", nargs="+", default=[], metavar="ROW:OTHER",
                   help="more paired comparisons than those with the baseline, e.g. CDGA_PG:Regenerated")
    p.add_argument("--format", default="text", choices=list(FORMATS), help="what is printed (all are saved)")
    p.add_argument("--output_dir", default=None,
                   help="write results.txt/.md/.tex, runs.json and the plots (PNG) there")
    p.add_argument("--unfinished", default="skip", choices=records.UNFINISHED,
                   help="runs without 'done': skip them (default), include them (as collect_results), or error")
    p.add_argument("--title", default="", help="a prefix for every title and caption, e.g. 'QUICK: not a result'")
    return p


def report(tidy_results, baseline="ERM", family="all", margin=None, contrasts=(), title="", selections=None):
    """The analysed tables and their text in every format: ``(tables, {format: text})``."""
    analysed = tables.analyse(tidy_results, baseline, family, margin, contrasts, selections)
    texts = {}
    for name, render in FORMATS.items():
        parts = [render(t, baseline, family, title) for t in analysed]
        if len(tidy_results["environments"]) > 1 and name == "text":
            for s in dict.fromkeys(t["selection"] for t in analysed):
                header, rows = tables.averages([t for t in analysed if t["selection"] == s])
                widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
                parts.append("\n".join([f"-------- {title + ' ' if title else ''}Averages, model selection method: "
                                        f"{selection.SELECTIONS[s][1]}"] +
                                       ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
                                        for r in [header] + rows]))
        texts[name] = "\n\n".join(parts)
    return analysed, texts


def save(output_dir, tidy_results, analysed, texts, baseline="ERM", title="", margin=None):
    """Every format, the tidy file and the plots under ``output_dir``; returns the paths written."""
    os.makedirs(output_dir, exist_ok=True)
    written = []
    for name, ext in (("text", "txt"), ("markdown", "md"), ("latex", "tex")):
        path = os.path.join(output_dir, f"results.{ext}")
        with open(path, "w", encoding="utf-8") as f:
            f.write(texts[name] + "\n")
        written.append(path)
    written.append(tidy.write_tidy(tidy_results, os.path.join(output_dir, "runs.json")))
    for t in analysed:
        if any(r["average"] or any(r["envs"]) for r in t["rows"]):
            written.append(plots.accuracy(t, os.path.join(output_dir, f"accuracy_{t['dataset']}_{t['selection']}.png"),
                                          baseline, title))
    for dataset in dict.fromkeys(t["dataset"] for t in analysed):
        mine = [t for t in analysed if t["dataset"] == dataset and any(c["n"] for c in t.get("comparisons", []))]
        if mine:
            written.append(plots.forest(mine, os.path.join(output_dir, f"forest_{dataset}.png"), baseline, title,
                                        margin))
    return written


def main(argv=None):
    args = parser().parse_args(argv)
    contrasts = []
    for item in args.contrast:
        row, sep, other = item.partition(":")
        if not sep or not row or not other:
            print(f"error: --contrast {item!r}: write ROW:OTHER, e.g. CDGA_PG:Regenerated", file=sys.stderr)
            return 2
        contrasts.append((row, other))
    try:
        results = tidy.load(args.input_dir, args.selection, args.group_by, unfinished=args.unfinished,
                            warn=lambda line: print(line, file=sys.stderr))
    except records.UnfinishedRuns as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, ImportError) as error:
        if isinstance(error, ImportError):
            error = (f"reading a sweep folder needs DomainBed's model selection ({error}): put a DomainBed checkout "
                     "on PYTHONPATH, or read a runs.json written by this command")
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(results["read"])
    if not results["choices"]:
        print("error: no run could be scored (see the warnings above)", file=sys.stderr)
        return 2
    margin = args.margin / 100 if args.margin is not None else None
    analysed, texts = report(results, args.baseline, args.family, margin, contrasts, args.title, results["selections"])
    if not any(r["row"] == args.baseline for t in analysed for r in t["rows"]):
        print(f"warning: no row named {args.baseline!r} (rows: {', '.join(results['rows'])}): no paired comparison; "
              "choose one with --baseline", file=sys.stderr)
    print(texts[args.format])
    if args.output_dir:
        written = save(args.output_dir, results, analysed, texts, args.baseline, args.title, margin)
        print(f"wrote {len(written)} files to {args.output_dir}: " + ", ".join(os.path.basename(p) for p in written))
    return 0
