"""The papers' DomainBed protocol, ready to launch on GPUs: generation commands, then the sweep, then results.

    python sweeps/papers.py --dataset PACS --data_dir /data --output_dir /runs [--launcher multi_gpu|slurm]
                            [--gpus 8] [--n_hparams 1] [--print]

For one of PACS, VLCS, OfficeHome, TerraIncognita, DomainNet it runs (or with --print only prints):

1. each generation method once with Stable Diffusion v1-4 and the papers' settings, split over ``--gpus``
   processes with torchrun (or as a SLURM job array with ``--launcher slurm``);
2. a stock DomainBed sweep of ERM, MIRO and the five methods with a ResNet-50 over every test env, 3 trials,
   the registry's paper defaults (``--n_hparams 1``) or DomainBed's random search (``--n_hparams 20``);
3. stock collect_results, then the results command (``python -m domainbed_diffusion.results``): every row paired
   with ERM by trial seed, Holm-corrected, cost columns, plots and the tidy per-run file in ``<output_dir>/results``.

Backbone for every algorithm: torchvision's ImageNet ResNet-50 with frozen BatchNorm statistics (MIRO's recipe,
``resnet50_augmix=false, freeze_bn=true``), so the rows differ only by algorithm. RegNetY-16GF (SWAG) rows of
the papers need a featurizer DomainBed does not have, so they are not launched here.

``--cost`` prints what these commands cost on a GPU, from FLOPs counted on the meta device at the settings they
pass (``offline_generation.cost``; docs/performance.md).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys

from domainbed_diffusion import catalogue
from domainbed_diffusion.benchmark import PAPERS_DATASETS as DATASETS
from domainbed_diffusion.benchmark.shipped import PAPERS_MODEL as MODEL

ALGORITHMS = ["ERM", *catalogue.algorithms()]  # DomainBed's baseline, then the catalogue's rows
BACKBONE = {"resnet50_augmix": False, "freeze_bn": True}
TRIALS = 3  # the sweep's --n_trials; the generator fits guides and priors to these trials' splits
# The GPU path the cost table assumes (--cost): bf16 (fp16 on GPUs without it: edit both), channels-last, the
# compiled fixed-batch UNet; DomainFusion's online model in bf16 too.
GENERATION = ["--dtype", "bfloat16", "--channels_last", "--compile", "--batch_size", "32"]
SWEEP_HPARAMS = dict(BACKBONE, diffusion_dtype="bfloat16")


def commands(args):
    gen = []
    for method in catalogue.methods():  # each with its spec's defaults, the papers' settings
        base = ["-m", "offline_generation", "--dataset", args.dataset, "--data_dir", args.data_dir, "--methods",
                method, "--model", MODEL, *GENERATION, "--trial_seeds", *map(str, range(TRIALS))]
        if args.launcher == "slurm":
            gen.append([sys.executable, *base, "--slurm", str(args.gpus), "--submit"])
        elif args.gpus > 1:
            gen.append([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.gpus), *base])
        else:
            gen.append([sys.executable, *base])
    sweep_dir = os.path.join(args.output_dir, args.dataset)
    sweep = [sys.executable, "-m", "domainbed.scripts.sweep", "launch", "--datasets", args.dataset,
             "--algorithms", *ALGORITHMS, "--data_dir", args.data_dir, "--output_dir", sweep_dir,
             "--command_launcher", args.launcher, "--n_trials", str(TRIALS), "--n_hparams", str(args.n_hparams),
             "--single_test_envs", "--skip_confirmation", "--hparams", json.dumps(SWEEP_HPARAMS)]
    collect = [[sys.executable, "-m", "domainbed.scripts.collect_results", "--input_dir", sweep_dir],
               [sys.executable, "-m", "domainbed_diffusion.results", "--input_dir", sweep_dir, "--output_dir",
                os.path.join(args.output_dir, "results", args.dataset)]]
    return gen, sweep, collect


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--launcher", default="multi_gpu", choices=["multi_gpu", "slurm", "local"])
    parser.add_argument("--gpus", type=int, default=8, help="generation processes (one per GPU)")
    parser.add_argument("--n_hparams", type=int, default=1, help="1: the papers' defaults; 20: DomainBed's search")
    parser.add_argument("--skip_generation", action="store_true", help="synthetic domains are already made")
    parser.add_argument("--print", action="store_true", help="print the commands instead of running them")
    parser.add_argument("--cost", action="store_true",
                        help="print the GPU cost of these commands (FLOPs counted on the meta device) and stop")
    args = parser.parse_args(argv)
    if args.cost:
        from offline_generation import cost
        hparams = cost.domainfusion_hparams(args.dataset, SWEEP_HPARAMS)
        print("\n".join(cost.text(args.dataset, hparams, cost.Assumptions(trials=TRIALS, n_hparams=args.n_hparams))))
        return 0
    gen, sweep, collect = commands(args)
    stages = ([] if args.skip_generation else [gen]) + [[sweep], collect]
    for stage in stages:
        for command in stage:
            print(" ".join(shlex.quote(c) for c in command), flush=True)
            if not args.print:
                subprocess.run(command, check=True)
        if stage is gen and args.launcher == "slurm" and not args.print:
            print("generation submitted as job arrays: once they finish, run this again with --skip_generation")
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
