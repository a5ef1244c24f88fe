"""The tidy per-run file: every run (its algorithm, row, test envs, trial and hparams seeds, cost) and every choice
a selection method made (row, test env, trial seed, the hparams set and checkpoint chosen, validation and test
accuracy). Reading it back needs neither the sweep folders nor DomainBed, and gives the same tables."""
import json
import os

from . import records, selection


class TidyError(ValueError):
    """A file given as results is not a tidy file of this command."""


def write_tidy(tidy, path):
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(tidy, f, indent=0, sort_keys=True)
    os.replace(path + ".tmp", path)  # a reader never sees half a file
    return path


def read_tidy(path):
    try:
        with open(path, encoding="utf-8") as f:
            tidy = json.load(f)
    except json.JSONDecodeError as error:
        raise TidyError(f"{path}: not a JSON file ({error.msg}, line {error.lineno}): give a sweep folder or a "
                        "runs.json written by `python -m domainbed_diffusion.results --output_dir`") from None
    if not isinstance(tidy, dict) or tidy.get("format") != selection.FORMAT:
        raise TidyError(f"{path}: not a runs.json of this command (no 'format': {selection.FORMAT!r})")
    return tidy


def load(inputs, selections=("training", "lodo", "oracle"), group_by=(), order=None, unfinished="skip",
         warn=None):
    """Tidy results of ``inputs``: sweep folders (or ``(folder, algorithms)`` pairs), or one or more tidy files
    (merged). ``warn`` receives each warning line of the reading (``print`` to stderr, say)."""
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    files = [i for i in inputs if isinstance(i, str) and os.path.isfile(i)]
    if files and len(files) < len(inputs):
        raise TidyError("--input_dir: give sweep folders or runs.json files, not both")
    if files:
        tidies = [read_tidy(f) for f in files]
        if group_by and any(t["group_by"] != list(group_by) for t in tidies):
            raise TidyError(f"--group_by applies when reading sweep folders; {files[0]} was written with "
                            f"--group_by {' '.join(tidies[0]['group_by']) or '(none)'}")
        merged = dict(tidies[0], runs=[r for t in tidies for r in t["runs"]],
                      choices=[c for t in tidies for c in t["choices"] if c["selection"] in selections],
                      selections=[s for s in tidies[0]["selections"] if s in selections],
                      read="; ".join(t["read"] for t in tidies))
        for t in tidies[1:]:
            merged["environments"].update(t["environments"])
            merged["rows"] += [r for r in t["rows"] if r not in merged["rows"]]
        return merged
    reading = records.read_sweeps(inputs, unfinished)
    for line in reading.warnings():
        if warn:
            warn(line)
    return selection.select(reading, selections, group_by, order)
