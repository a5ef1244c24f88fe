"""Reading DomainBed sweep folders without ever crashing on a half-written run.

A sweep folder holds one sub-folder per run with a ``results.jsonl`` (one record per checkpoint) and, once the run
finished, a ``done`` file. A line cut mid-write, a record without a key the selection methods read, a run that has
not finished: each is skipped with one warning naming the file and the line, and counted in the reading's
summary. DomainBed's own reader (``reporting.load_records``) raises on the first such line, without the file.
"""
import json
import os

REQUIRED_ARGS = ("algorithm", "dataset", "test_envs", "trial_seed", "hparams_seed")
UNFINISHED = ("skip", "include", "error")


class UnfinishedRuns(RuntimeError):
    """Raised when runs without ``done`` are read with ``unfinished='error'``."""


class Reading:
    """What was read: the runs kept, and every line or run skipped with its reason."""

    def __init__(self):
        self.runs, self.skipped_lines, self.unfinished, self.duplicates, self.empty = [], [], [], [], []

    def warnings(self, most=10):
        """One line per problem (the first ``most`` of each kind, then a count of the rest)."""
        lines = []
        for kind, items in (("skipped", self.skipped_lines), ("unfinished run", self.unfinished),
                            ("duplicate run", self.duplicates), ("run without records", self.empty)):
            for item in items[:most]:
                lines.append(f"warning: {kind}: {item}")
            if len(items) > most:
                lines.append(f"warning: ... and {len(items) - most} more of kind '{kind}'")
        return lines

    def summary(self):
        parts = [f"{len(self.runs)} runs read ({sum(len(r['records']) for r in self.runs)} records)"]
        if self.skipped_lines:
            first = self.skipped_lines[0].split(":")[0:2]
            parts.append(f"{len(self.skipped_lines)} line(s) skipped (first in {':'.join(first)})")
        if self.unfinished:
            parts.append(f"{len(self.unfinished)} run(s) unfinished")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} duplicate run(s) ignored")
        if self.empty:
            parts.append(f"{len(self.empty)} run(s) without a record")
        return ", ".join(parts)


def _env_count(record):
    n = 0
    while f"env{n}_out_acc" in record and f"env{n}_in_acc" in record:
        n += 1
    return n


def _problem(record, n_envs):
    """Why a parsed record cannot be used, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    args = record.get("args")
    if not isinstance(args, dict):
        return "missing key 'args'"
    for key in REQUIRED_ARGS:
        if key not in args:
            return f"missing key 'args.{key}'"
    if not isinstance(args["test_envs"], list) or not args["test_envs"]:
        return "'args.test_envs' is not a non-empty list"
    if "step" not in record:
        return "missing key 'step'"
    for i in range(n_envs):
        for split in ("in", "out"):
            if f"env{i}_{split}_acc" not in record:
                return f"missing key 'env{i}_{split}_acc'"
    return None


def read_run(folder, reading):
    """The records of one run folder (skipping bad lines into ``reading``), or None when it has no results file."""
    path = os.path.join(folder, "results.jsonl")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return None
    parsed = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            parsed.append((number, json.loads(line)))
        except json.JSONDecodeError as error:
            cut = "" if line.endswith("\n") else " (the last line, cut mid-write?)"
            reading.skipped_lines.append(f"{path}:{number}: not valid JSON{cut}: {error.msg}")
    # the environments a run has: the most any of its records lists (a record with fewer lacks a key)
    n_envs = max((_env_count(r) for _, r in parsed if isinstance(r, dict)), default=0)
    records = []
    for number, record in parsed:
        problem = _problem(record, n_envs) if n_envs else "no env<i>_in_acc / env<i>_out_acc keys"
        if problem:
            reading.skipped_lines.append(f"{path}:{number}: {problem}")
        else:
            records.append(record)
    swad = [r for r in records if r.get("swad_model")]
    if swad:  # an <Name>_SWAD run's answer is its averaged model (its last record); earlier ones are the online model
        records = swad
    return dict(folder=folder, records=records, done=os.path.exists(os.path.join(folder, "done")), n_envs=n_envs)


def run_key(record):
    """What makes two runs the same run: their arguments and their hparams."""
    args = record["args"]
    return (args["dataset"], args["algorithm"], tuple(args["test_envs"]), args["trial_seed"], args["hparams_seed"],
            json.dumps(record.get("hparams"), sort_keys=True))


def read_sweeps(sources, unfinished="skip"):
    """Runs of one or more sweep folders. ``sources``: paths, or ``(path, algorithms to keep)`` pairs. A run that two
    folders hold (same dataset, algorithm, test envs, trial and hparams seeds, same hparams) is read from the first
    only.
    ``unfinished``: ``skip`` runs without ``done`` (default), ``include`` them (as DomainBed's collect_results does),
    or ``error`` (raise ``UnfinishedRuns`` after reading)."""
    if unfinished not in UNFINISHED:
        raise ValueError(f"unfinished={unfinished!r}: choose one of {', '.join(UNFINISHED)}")
    reading, seen = Reading(), {}
    for source in sources:
        folder, only = (source, None) if isinstance(source, str) else source
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"--input_dir {folder}: no such folder (give a DomainBed sweep's output_dir, "
                                    "or a runs.json written by this command)")
        found = 0
        for name in sorted(os.listdir(folder)):
            run = read_run(os.path.join(folder, name), reading)
            if run is None:
                continue
            found += 1
            if not run["records"]:
                reading.empty.append(run["folder"])
                continue
            if only is not None and run["records"][0]["args"]["algorithm"] not in only:
                continue
            if not run["done"]:
                reading.unfinished.append(run["folder"])
                if unfinished != "include":
                    continue
            key = run_key(run["records"][0])
            if key in seen:
                reading.duplicates.append(f"{run['folder']} is the same run as {seen[key]} (kept the first)")
                continue
            seen[key] = run["folder"]
            reading.runs.append(run)
        if not found:
            raise FileNotFoundError(f"--input_dir {folder}: no DomainBed run in it (looked for "
                                    f"{os.path.join(folder, '*', 'results.jsonl')})")
    if unfinished == "error" and reading.unfinished:
        raise UnfinishedRuns(f"{len(reading.unfinished)} run(s) have no 'done' file, e.g. {reading.unfinished[0]}: "
                             "let the sweep finish, or read them with --unfinished skip or include")
    return reading
