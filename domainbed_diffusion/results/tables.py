"""Tables of tidy results: DomainBed's accuracy table (per test env and on average) with, per row, its difference
with a baseline row paired by trial seed (t-interval, Holm-corrected p, equivalence verdict) and its cost; as text,
Markdown or LaTeX.

A cell is the mean of the chosen runs' test accuracies over trials, as stock ``collect_results`` prints it; its
+/- is the standard error with the sample standard deviation (n - 1), where DomainBed divides the population
standard deviation by sqrt(n). Avg is the mean of the test envs' means (DomainBed's); its +/- and every comparison
use each trial's average over the test envs, over the trials that have all of them.
"""
import math

import numpy as np

from . import comparisons
from .selection import SELECTIONS

FAMILIES = ("all", "table")


def _cell(values):
    values = np.asarray(list(values), dtype=float)
    if not len(values):
        return None
    sem = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else math.nan
    return dict(mean=float(values.mean()), sem=sem, n=int(len(values)))


def build(tidy, dataset, selection):
    """One table: every row of ``dataset`` under ``selection`` (a key of ``SELECTIONS``)."""
    envs = tidy["environments"][dataset]
    runs = [r for r in tidy["runs"] if r["dataset"] == dataset]
    choices = [c for c in tidy["choices"] if c["dataset"] == dataset and c["selection"] == selection]
    rows, notes = [], []
    for name in [n for n in tidy["rows"] if any(r["row"] == n for r in runs)]:
        mine = [c for c in choices if c["row"] == name]
        per_env = {e: {c["trial_seed"]: c["test_acc"] for c in mine if c["test_env"] == e} for e in range(len(envs))}
        cells = [_cell(per_env[e].values()) for e in range(len(envs))]
        complete = sorted(set.intersection(*(set(t) for t in per_env.values()))) if per_env else []
        per_trial = {t: float(np.mean([per_env[e][t] for e in per_env])) for t in complete}
        average = _cell(per_trial.values())
        if average is not None and all(cells):
            average["mean"] = float(np.mean([c["mean"] for c in cells]))  # DomainBed's Avg: the mean of the means
        elif average is not None:
            average = None
        row_runs = [r for r in runs if r["row"] == name]
        memory = [r["mem_gb"] for r in row_runs if r.get("mem_gb") is not None]
        rows.append(dict(
            row=name, envs=cells, average=average, per_trial=per_trial, per_env=per_env,
            trials=min((c["n"] for c in cells if c), default=0),
            step=float(np.median([c["step"] for c in mine])) if mine else math.nan,
            hparams_sets=len({r["hparams_seed"] for r in row_runs}), runs=len(row_runs),
            images_per_step=float(np.mean([r["images_per_step"] for r in row_runs])),
            seconds_per_step=float(np.mean([r["seconds_per_step"] for r in row_runs])),
            mem_gb=max(memory) if memory else None))
        missing = [envs[e] for e, c in enumerate(cells) if c is None]
        if missing:
            notes.append(_why_missing(selection, name, missing, row_runs))
    if selection == "lodo" and runs and not any(len(r["test_envs"]) == 2 for r in runs):
        notes = ["X: leave-one-domain-out needs runs with two test envs (DomainBed's sweep without "
                 "--single_test_envs); no run here has them"]
    return dict(dataset=dataset, selection=selection, title=SELECTIONS[selection][1], env_names=envs, rows=rows,
                notes=notes)


def _why_missing(selection, row, missing, runs):
    if selection == "lodo" and not any(len(r["test_envs"]) == 2 for r in runs):
        return (f"X ({row}): leave-one-domain-out needs runs with two test envs (DomainBed's sweep without "
                "--single_test_envs); this row has none")
    return f"X ({row}): no finished run with test env {', '.join(missing)}"


def compare(tables, baseline="ERM", family="all", margin=None, contrasts=(), alpha=0.05):
    """Every row of each table against ``baseline`` (and each ``(row, other)`` of ``contrasts``), paired by trial
    seed on the per-trial Avg; Holm over ``family``: ``all`` the comparisons of every table given, ``table`` each
    table's own. With ``margin`` (accuracy, 0.03 for 3 points) also TOST equivalence, Holm over the same family,
    and a verdict. Sets ``table["comparisons"]``: a list of ``dict(row, other, **paired)``."""
    if family not in FAMILIES:
        raise ValueError(f"--family {family!r}: choose one of {', '.join(FAMILIES)}")
    for table in tables:
        by_row = {r["row"]: r for r in table["rows"]}
        pairs = [(r, baseline) for r in by_row if r != baseline and baseline in by_row]
        pairs += [(a, b) for a, b in contrasts if a in by_row and b in by_row and (a, b) not in pairs]
        table["comparisons"] = [_pair(by_row, a, b, margin) for a, b in pairs]
    groups = [[c for t in tables for c in t["comparisons"]]] if family == "all" else [t["comparisons"] for t in tables]
    for group in groups:
        _correct(group, margin, alpha)
    for table in tables:
        _baseline_columns(table, baseline)
    return tables


def compare_families(table, families, baseline="ERM", margin=None, alpha=0.05):
    """Pre-registered comparisons of one table: ``families`` maps a family's name to its ``(row, other)`` pairs;
    each pair paired by trial seed on the per-trial Avg (with TOST at ``margin``), Holm within its own family. A
    pair with a missing row is skipped. Sets ``table["comparisons"]`` (each with its ``family``); the table's
    ``vs baseline`` column shows the comparisons with ``baseline`` that a family holds."""
    by_row = {r["row"]: r for r in table["rows"]}
    table["comparisons"] = []
    for name, pairs in families.items():
        group = [dict(_pair(by_row, a, b, margin), family=name) for a, b in pairs if a in by_row and b in by_row]
        _correct(group, margin, alpha)
        table["comparisons"] += group
    _baseline_columns(table, baseline)
    return table


def _pair(by_row, a, b, margin):
    """Row ``a`` minus row ``b``, paired by trial seed on the per-trial Avg; TOST too given a ``margin``."""
    c = dict(row=a, other=b, **comparisons.paired(by_row[a]["per_trial"], by_row[b]["per_trial"]))
    if margin is not None:
        c["equivalence"] = comparisons.equivalence(by_row[a]["per_trial"], by_row[b]["per_trial"], margin)
    return c


def _correct(group, margin, alpha):
    """Holm over one family: its differences' p-values, and with ``margin`` its equivalence p-values and verdicts."""
    for c, p in zip(group, comparisons.holm([c["p"] for c in group])):
        c["p_holm"] = p
    if margin is not None:
        for c, p in zip(group, comparisons.holm([c["equivalence"]["p"] for c in group])):
            c["equivalence"]["p_holm"] = p
            c["verdict"] = comparisons.verdict(c["p_holm"], p, alpha) if c["n"] > 1 else ""
    for c in group:
        c["family_size"] = sum(1 for x in group if x["p"] == x["p"])


def _baseline_columns(table, baseline):
    base = next((r for r in table["rows"] if r["row"] == baseline), None)
    for row in table["rows"]:
        row["vs_baseline"] = next((c for c in table["comparisons"] if c["row"] == row["row"]
                                   and c["other"] == baseline), None)
        row["seconds_vs_baseline"] = (row["seconds_per_step"] / base["seconds_per_step"]
                                      if base and base["seconds_per_step"] > 0 else None)


def _pct(v):
    return f"{100 * v:.1f}"


def _acc(cell, pm="+/-"):
    if cell is None:
        return "X"
    return f"{_pct(cell['mean'])} {pm} {_pct(cell['sem'])}" if cell["n"] > 1 else _pct(cell["mean"])


def _diff(c):
    if c is None or not c["n"]:
        return ""
    return f"{100 * c['mean']:+.1f}" + (f" [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}]" if c["n"] > 1 else "")


def cells(table, baseline="ERM", pm="+/-"):
    """The table as a header and rows of strings."""
    has_memory = any(r["mem_gb"] is not None for r in table["rows"])
    has_verdict = any("verdict" in c for c in table.get("comparisons", []))
    header = ["Algorithm", *table["env_names"], "Avg", f"vs {baseline} [95% CI]", "p (Holm)",
              *(["equivalence"] if has_verdict else []), "step", "trials", "img/step", "s/step", f"x {baseline}",
              *(["peak GB"] if has_memory else [])]
    rows = []
    for row in table["rows"]:
        c = row.get("vs_baseline")
        p = f"{c['p_holm']:.3f}{' *' if c['p_holm'] < 0.05 else ''}" if c is not None and c["n"] > 1 else ""
        verdict = [c.get("verdict", "") if c is not None else ""] if has_verdict else []
        ratio = row.get("seconds_vs_baseline")
        rows.append([row["row"], *[_acc(e, pm) for e in row["envs"]], _acc(row["average"], pm), _diff(c), p,
                     *verdict, f"{row['step']:.0f}" if row["step"] == row["step"] else "", str(row["trials"]),
                     f"{row['images_per_step']:.0f}", f"{row['seconds_per_step']:.3f}",
                     f"{ratio:.2f}" if ratio else "",
                     *([f"{row['mem_gb']:.2f}" if row["mem_gb"] is not None else ""] if has_memory else [])])
    return header, rows


def caption(table, baseline="ERM", family="all", prefix=""):
    """What the table shows, in words, with the reasons for any X and the Holm family."""
    n = sum(1 for c in table.get("comparisons", []) if c["n"])
    valid = [c for c in table.get("comparisons", []) if c["p"] == c["p"]]
    size = valid[0]["family_size"] if valid else 0
    paired = (f"vs {baseline}: difference of the per-trial Avg paired by trial seed, with its 95% t-interval; "
              f"p: paired t-test, Holm-corrected over {size} comparison(s) "
              f"({'every table printed' if family == 'all' else 'this table'}), * below 0.05." if size else
              f"vs {baseline}: difference of Avg; one trial: no interval, no p-value." if n else
              f"No paired comparison: no row has a trial with every test env that {baseline} has too.")
    words = (f"{prefix + ' ' if prefix else ''}{table['dataset']}: test-env accuracy (%), model selection: "
             f"{table['title']}; mean +/- standard error over trials (n - 1); Avg: mean of the test envs' means. "
             f"{paired} step: median selected checkpoint; trials: the fewest of any test env. img/step: images "
             f"through the network per step; s/step: measured (both over every run of the row); x {baseline}: "
             f"relative to {baseline}'s.")
    if any("verdict" in c for c in table.get("comparisons", [])):
        margin = table["comparisons"][0]["equivalence"]["margin"]
        words += (f" equivalence: TOST with margin +/-{100 * margin:.1f} points, Holm-corrected over the same "
                  "family ('inconclusive': neither a difference nor equivalence is shown).")
    return "\n".join([words, *table["notes"]])


def contrast_lines(comparisons):
    """One line per comparison: ``row - other``, the difference with its 95% t-interval, Holm's p, n, verdict."""
    lines = []
    for c in comparisons:
        if c["n"]:
            label = f"{c['row']} - {c['other']}" if c["other"] else c["row"]
            p = f"p (Holm) {c['p_holm']:.3f}{' *' if c['p_holm'] < 0.05 else ''}" if c["n"] > 1 else "one trial: no p"
            lines.append(f"  {label:<40} {_diff(c):<24} {p}  n={c['n']}" + (f"  {c['verdict']}" if c.get("verdict")
                                                                          else ""))
    return lines


def extra_comparisons(table, baseline="ERM"):
    """Lines for the contrasts that are not against the baseline."""
    return contrast_lines([c for c in table.get("comparisons", []) if c["other"] != baseline])


def text(table, baseline="ERM", family="all", prefix=""):
    header, rows = cells(table, baseline)
    widths = [max(len(r[k]) for r in [header] + rows) for k in range(len(header))]
    lines = [f"-------- {prefix + ' ' if prefix else ''}Dataset: {table['dataset']}, model selection method: "
             f"{table['title']}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header] + rows]
    extra = extra_comparisons(table, baseline)
    if extra:
        lines += ["Other paired comparisons:", *extra]
    lines.append(caption(table, baseline, family, prefix))
    return "\n".join(lines)


def markdown(table, baseline="ERM", family="all", prefix=""):
    header, rows = cells(table, baseline)
    lines = [f"**{prefix + ' ' if prefix else ''}{table['dataset']}, {table['title']}**", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    extra = extra_comparisons(table, baseline)
    return "\n".join(lines + ([""] + ["    " + e for e in extra] if extra else []) +
                     ["", caption(table, baseline, family, prefix)])


def latex(table, baseline="ERM", family="all", prefix=""):
    header, rows = cells(table, baseline, pm="$\\pm$")

    def esc(s):
        return s.replace("%", "\\%").replace("_", "\\_").replace("#", "\\#").replace("&", "\\&")
    lines = ["\\begin{table}", "\\centering", "\\adjustbox{max width=\\textwidth}{%",
             "\\begin{tabular}{l" + "c" * (len(header) - 1) + "}", "\\toprule",
             " & ".join("\\textbf{" + esc(h) + "}" for h in header) + " \\\\", "\\midrule"]
    lines += [" & ".join(esc(c) if "$" not in c else c for c in r) + " \\\\" for r in rows]
    lines += ["\\bottomrule", "\\end{tabular}}", f"\\caption{{{esc(caption(table, baseline, family, prefix))}}}",
              "\\end{table}"]
    return "\n".join(lines)


def averages(tables):
    """DomainBed's 'Averages' table across datasets for one selection: per row, each dataset's Avg and their mean
    (X where a dataset's Avg is)."""
    datasets = [t["dataset"] for t in tables]
    rows = list(dict.fromkeys(r["row"] for t in tables for r in t["rows"]))
    out = []
    for name in rows:
        values = []
        for t in tables:
            row = next((r for r in t["rows"] if r["row"] == name), None)
            values.append(row["average"]["mean"] if row and row["average"] else None)
        mean = _pct(float(np.mean(values))) if None not in values else "X"
        out.append([name, *[_pct(v) if v is not None else "X" for v in values], mean])
    return ["Algorithm", *datasets, "Avg"], out


def analyse(tidy, baseline="ERM", family="all", margin=None, contrasts=(), selections=None):
    """Every (dataset, selection) table of ``tidy``, compared with ``baseline`` (see ``compare``)."""
    tables = [build(tidy, dataset, s) for dataset in tidy["environments"] for s in (selections or tidy["selections"])]
    return compare(tables, baseline, family, margin, contrasts)
