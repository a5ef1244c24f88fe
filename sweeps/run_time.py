"""Where one DomainBed run's time goes, and what the run's speed options save: each setting runs DomainBed's stock
train script as its own process, alone, and the table gives its parts and its ratio to the first setting.

    python sweeps/run_time.py [--data_dir data] [--algorithm ERM] [--threads 2] [--repeats 2]

Settings (hparams over DigitStyles' defaults): ``float32, full evaluation`` (the runs before these options),
``lean evaluation`` (``eval_training_splits`` False: the training splits' accuracies, which no selection method
reads, are not measured), ``bfloat16`` (``autocast``: the featurizer's convolutions in bfloat16) and both (the
DigitStyles default). Parts: interpreter start and imports, the dataset, the algorithm's updates, the evaluations;
the run's accuracies are printed too, so a reader sees which ones a setting changes.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {
    "float32, full evaluation": dict(autocast="", eval_training_splits=True),
    "lean evaluation": dict(autocast="", eval_training_splits=False),
    "bfloat16": dict(autocast="bfloat16", eval_training_splits=True),
    "bfloat16 + lean (default)": dict(autocast="bfloat16", eval_training_splits=False),
}

# Runs inside the child process: times DomainBed's parts by wrapping them, then runs the stock script.
CHILD = r"""
import json, runpy, sys, time
start = time.perf_counter()
import torch
from domainbed import algorithms, datasets
from domainbed.lib import misc
import domainbed.scripts.train  # noqa: F401  (its imports: what every run pays at start)
parts = {"imports": time.perf_counter() - start, "dataset": 0.0, "updates": 0.0, "evaluation": 0.0}
def timed(key, f):
    def g(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); parts[key] += time.perf_counter() - t; return r
    return g
misc.accuracy = timed("evaluation", misc.accuracy)
datasets.DigitStyles.__init__ = timed("dataset", datasets.DigitStyles.__init__)
stock = algorithms.get_algorithm_class
def get_algorithm_class(name):
    def build(*a, **k):
        algorithm = stock(name)(*a, **k)
        algorithm.update = timed("updates", algorithm.update)
        return algorithm
    return build
algorithms.get_algorithm_class = get_algorithm_class
out = sys.argv[1]
sys.argv = ["train.py", *sys.argv[2:]]
runpy.run_module("domainbed.scripts.train", run_name="__main__")
parts["total"] = time.perf_counter() - start
with open(out, "w") as f:
    json.dump(parts, f)
"""


def run(setting, args, folder):
    out = os.path.join(folder, "run")
    argv = ["--dataset", "DigitStyles", "--algorithm", args.algorithm, "--data_dir", args.data_dir, "--test_envs",
            str(args.test_env), "--output_dir", out, "--hparams", json.dumps(setting)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    parts = os.path.join(folder, "parts.json")
    subprocess.run([sys.executable, "-c", CHILD, parts, *argv], env=env, check=True, capture_output=True)
    with open(parts) as f:
        timing = json.load(f)
    with open(os.path.join(out, "results.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    n = len([k for k in last if k.startswith("env") and k.endswith("_in_acc")])
    accuracies = [last[f"env{i}_{s}_acc"] for i in range(n) for s in ("in", "out")]
    return timing, accuracies


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    parser.add_argument("--algorithm", default="ERM")
    parser.add_argument("--test_env", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="the run's threads (alone on 2 cores: 2)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per setting, in turn; the table shows the mean")
    args = parser.parse_args(argv)
    times = {name: [] for name in SETTINGS}
    accuracies = {}
    for _ in range(args.repeats):  # settings in turn, so a slow spell of the machine hits each alike
        for name, setting in SETTINGS.items():
            with tempfile.TemporaryDirectory() as folder:
                timing, accuracies[name] = run(setting, args, folder)
            times[name].append(timing)
    base = None
    print(f"{args.algorithm} on DigitStyles, test env {args.test_env}, {args.threads} thread(s), mean of "
          f"{args.repeats} run(s) per setting (s):")
    print(f"{'setting':<28}{'total':>7}{'imports':>9}{'dataset':>9}{'updates':>9}{'evaluation':>12}{'run':>7}"
          f"{'speed-up':>10}{'run speed-up':>14}")
    for name in SETTINGS:
        mean = {k: sum(t[k] for t in times[name]) / len(times[name]) for k in times[name][0]}
        mean["run"] = mean["total"] - mean["imports"]
        base = base or mean
        print(f"{name:<28}{mean['total']:>7.1f}{mean['imports']:>9.1f}{mean['dataset']:>9.1f}{mean['updates']:>9.1f}"
              f"{mean['evaluation']:>12.1f}{mean['run']:>7.1f}{base['total'] / mean['total']:>10.2f}"
              f"{base['run'] / mean['run']:>14.2f}")
    print("last checkpoint's accuracies (env0 in, env0 out, env1 in, ...; nan: not measured):")
    for name, values in accuracies.items():
        print(f"  {name:<28}" + " ".join(f"{v:.4f}" for v in values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
