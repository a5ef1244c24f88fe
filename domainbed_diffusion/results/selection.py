"""DomainBed's model selection applied to the runs read, kept as a tidy list of choices (one per row, test env,
trial seed and selection method: the hparams set and checkpoint chosen, its validation and test accuracies) and a
list of runs with their costs. The selection itself is DomainBed's own code (``domainbed.model_selection``), so the
accuracies are those of stock ``collect_results``; what this adds is which checkpoint and hparams set each choice
took, and rows defined by hparams as well as by algorithm.
"""
import os

FORMAT = "domainbed-diffusion results 1"
# DomainBed's selection methods, by the names this command takes, with DomainBed's own titles
SELECTIONS = {
    "training": ("IIDAccuracySelectionMethod", "training-domain validation set"),
    "lodo": ("LeaveOneOutSelectionMethod", "leave-one-domain-out cross-validation"),
    "oracle": ("OracleSelectionMethod", "test-domain validation set (oracle)"),
}


def row_label(algorithm, hparams, group_by):
    """``algorithm``, or ``algorithm [v1, v2]`` with the values of the ``group_by`` hparams that the run has."""
    values = [str(hparams[k]) for k in group_by if k in (hparams or {})]
    return f"{algorithm} [{', '.join(values)}]" if values else algorithm


def environment_names(dataset, n_envs):
    """The dataset's environment names from DomainBed's registry (``env<i>`` for a dataset it does not know)."""
    try:
        from domainbed import datasets
        names = list(datasets.get_dataset_class(dataset).ENVIRONMENTS)
        if len(names) == n_envs:
            return names
    except (ImportError, NotImplementedError, AttributeError, KeyError):
        pass
    return [f"env{i}" for i in range(n_envs)]


def _run_cost(run):
    last = max(run["records"], key=lambda r: r["step"])
    hparams = last.get("hparams") or {}
    train_envs = run["n_envs"] - len(last["args"]["test_envs"])
    # this project's algorithms record the images of each step; DomainBed's take batch_size from each training env
    images = last.get("images", hparams.get("batch_size", float("nan")) * train_envs)
    memory = [r["mem_gb"] for r in run["records"] if r.get("mem_gb")]  # DomainBed records 0 on a CPU
    return dict(images_per_step=float(images), seconds_per_step=float(last.get("step_time", float("nan"))),
                mem_gb=float(max(memory)) if memory else None, checkpoints=len(run["records"]),
                last_step=int(last["step"]))


def _choice(method, records):
    """What one of DomainBed's selection methods picks among one (row, test env, trial)'s records: the hparams
    set DomainBed ranks first and, within it, the checkpoint (DomainBed's ``sweep_acc`` returns the accuracy only)."""
    from domainbed import model_selection
    ranked = method.hparams_accs(records)
    if not len(ranked):
        return None
    acc, run = ranked[0]
    if method is model_selection.IIDAccuracySelectionMethod:
        step = model_selection.get_test_records(run).map(
            lambda r: dict(method._step_acc(r), step=r["step"])).argmax("val_acc")["step"]
    elif method is model_selection.LeaveOneOutSelectionMethod:
        def at(step, records):
            acc = method._step_acc(records)
            return None if acc is None else dict(acc, step=step)
        step = run.group("step").map(at).filter_not_none().argmax("val_acc")["step"]
    else:  # the oracle takes the last checkpoint of the hparams set it picks
        step = max(r["step"] for r in model_selection.get_test_records(run))
    return dict(hparams_seed=int(run[0]["args"]["hparams_seed"]), step=int(step), val_acc=float(acc["val_acc"]),
                test_acc=float(acc["test_acc"]))


def select(reading, selections=("training", "lodo", "oracle"), group_by=(), order=None):
    """The tidy results of a ``records.Reading``: ``{format, environments, rows, group_by, read, runs, choices}``."""
    from domainbed import model_selection
    from domainbed.lib.query import Q
    unknown = [s for s in selections if s not in SELECTIONS]
    if unknown:
        raise ValueError(f"--selection {unknown}: choose from {', '.join(SELECTIONS)}")
    runs, groups, n_envs, seen = [], {}, {}, {}
    for run in reading.runs:
        first = run["records"][0]
        args = first["args"]
        row = row_label(args["algorithm"], first.get("hparams"), group_by)
        key = (args["dataset"], row, tuple(args["test_envs"]), args["trial_seed"], args["hparams_seed"])
        if key in seen:  # DomainBed's selection would read the two runs' records as one run's
            other = seen[key]
            differ = sorted(k for k in set(other[1]) | set(first.get("hparams") or {})
                            if other[1].get(k) != (first.get("hparams") or {}).get(k))
            raise ValueError(f"{run['folder']} and {other[0]} are two runs of row {row!r} with the same test envs, "
                             f"trial and hparams seeds but other hparams ({', '.join(differ)}): split the rows with "
                             f"--group_by {' '.join(differ[:2])}, or read the folders separately")
        seen[key] = (run["folder"], first.get("hparams") or {})
        n_envs[args["dataset"]] = max(n_envs.get(args["dataset"], 0), run["n_envs"])
        runs.append(dict(dataset=args["dataset"], algorithm=args["algorithm"], row=row,
                         test_envs=list(args["test_envs"]), trial_seed=int(args["trial_seed"]),
                         hparams_seed=int(args["hparams_seed"]), done=run["done"],
                         folder=os.path.join(*os.path.normpath(run["folder"]).split(os.sep)[-2:]),  # sweep/run
                         **_run_cost(run)))
        for test_env in args["test_envs"]:  # as DomainBed groups: a run with two test envs is in both groups
            key = (args["dataset"], row, int(test_env), int(args["trial_seed"]))
            groups.setdefault(key, []).extend(run["records"])
    choices = []
    for (dataset, row, test_env, trial), records in sorted(groups.items(), key=lambda kv: kv[0]):
        algorithm = records[0]["args"]["algorithm"]
        for name in selections:
            picked = _choice(getattr(model_selection, SELECTIONS[name][0]), Q(records))
            if picked is not None:
                choices.append(dict(dataset=dataset, row=row, algorithm=algorithm, selection=name,
                                    test_env=test_env, trial_seed=trial, **picked))
    return dict(format=FORMAT, environments={d: environment_names(d, n) for d, n in sorted(n_envs.items())},
                rows=_row_order({(r["row"], r["algorithm"]) for r in runs}, order), group_by=list(group_by),
                selections=list(selections), read=reading.summary(), runs=runs, choices=choices)


def _row_order(rows, order):
    """``order`` first (rows or algorithms named there), then DomainBed's order of algorithms, then by name."""
    try:
        from domainbed import algorithms
        known = list(algorithms.ALGORITHMS)
    except ImportError:
        known = []
    order = list(order or [])

    def rank(item):
        row, algorithm = item
        for i, name in enumerate(order):
            if name in (row, algorithm):
                return (0, i, row)
        return (1, known.index(algorithm) if algorithm in known else len(known), row)
    return [row for row, _ in sorted(rows, key=rank)]
