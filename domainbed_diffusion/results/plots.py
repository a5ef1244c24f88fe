"""Figures of a results table, drawn with matplotlib: test-env accuracy per row with 95% t-intervals, and a forest
plot of the paired differences with the baseline. Each title names the dataset, the selection method and the
trial count."""
import math
import textwrap

import numpy as np
from scipy import stats


def _matplotlib():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on a cluster node
    import matplotlib.pyplot as plt
    return plt


def _half_width(cell):
    if cell is None or cell["n"] < 2 or not cell["sem"] == cell["sem"]:
        return 0.0
    return float(stats.t.ppf(0.975, cell["n"] - 1)) * cell["sem"]


def _trials(table):
    counts = sorted({r["trials"] for r in table["rows"]})
    return f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def accuracy(table, path, baseline="ERM", prefix=""):
    """Grouped bars: one group per test env and one for Avg, one bar per row, 95% t-interval whiskers; the legend
    gives each row's seconds per step relative to the baseline."""
    plt = _matplotlib()
    rows = table["rows"]
    groups = [*table["env_names"], "Avg"]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.22 * len(groups) * max(1, len(rows)) + 4), 4.2))
    for k, row in enumerate(rows):
        values = [*row["envs"], row["average"]]
        means = [100 * v["mean"] if v else math.nan for v in values]
        errors = [100 * _half_width(v) for v in values]
        ratio = row.get("seconds_vs_baseline")
        label = row["row"] + (f" ({ratio:.1f}x)" if ratio else "")
        ax.bar(np.arange(len(groups)) + (k - (len(rows) - 1) / 2) * width, means, width, yerr=errors, capsize=2,
               label=label)
    ax.set_xticks(np.arange(len(groups)), groups)
    ax.set_ylabel("test-env accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{prefix + ' ' if prefix else ''}{table['dataset']}: {table['title']}, {_trials(table)} trial(s)\n"
                 f"mean and 95% t-interval over trials; (Nx): seconds per step relative to {baseline}", fontsize=9)
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def forest(tables, path, baseline="ERM", prefix="", margin=None):
    """One line per comparison of the given tables: the paired difference of Avg (points) with its 95% t-interval,
    labelled with the Holm-corrected p; the equivalence margin shaded when one was given."""
    plt = _matplotlib()
    items = [(t, c) for t in tables for c in t.get("comparisons", []) if c["n"]]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.32 * max(1, len(items))))
    for y, (table, c) in enumerate(reversed(items)):
        low, high = (100 * c["low"], 100 * c["high"]) if c["n"] > 1 else (math.nan, math.nan)
        color = "tab:red" if c.get("p_holm", 1) < 0.05 else "tab:blue"
        ax.plot([low, high], [y, y], color=color, lw=2)
        ax.plot([100 * c["mean"]], [y], "o", color=color)
        ax.text(1.01, y, f"p(Holm) {c['p_holm']:.3f}" + (f", {c['verdict']}" if c.get("verdict") else ""),
                transform=ax.get_yaxis_transform(), va="center", fontsize=7)
    labels = [f"{c['row']} - {c['other']}" + (f"  [{t['selection']}]" if len(tables) > 1 else "")
              for t, c in reversed(items)]
    ax.set_yticks(range(len(items)), labels, fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    if margin:
        ax.axvspan(-100 * margin, 100 * margin, color="grey", alpha=0.15)
    # the margin is named in the axis label, not a legend, so that no line of the plot is ever covered
    ax.set_xlabel("paired difference of Avg test-env accuracy (points), 95% t-interval"
                  + (f"\nshaded: equivalence margin +/-{100 * margin:g}" if margin else ""))
    datasets = ", ".join(dict.fromkeys(t["dataset"] for t in tables))
    selections = ", ".join(dict.fromkeys(t["title"] for t in tables))
    trials = ", ".join(dict.fromkeys(_trials(t) for t in tables))
    ax.set_title(textwrap.fill(f"{prefix + ' ' if prefix else ''}{datasets}: {selections}; {trials} trial(s), "
                               "paired by trial seed", 95), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
