"""DomainBed's sweep with trial seeds of one's choosing: ``domainbed.scripts.sweep`` numbers a sweep's trials 0, 1,
..., so a study that must run on trials no earlier table used cannot ask it for fresh ones. This command takes the
stock sweep's job list (its ``make_args_list``), moves every job's trial seed by ``--trial_seed_from`` and
recomputes its ``seed`` as the stock sweep does from the moved trial, and hands the jobs to the stock ``Job``
(folders named by the hash of their arguments, ``done`` files, ``delete_incomplete``) and launchers. Its output
folder is read by ``collect_results`` and ``python -m domainbed_diffusion.results`` like any sweep's.

    python -m domainbed_diffusion.launchers.sweep launch --trial_seed_from 100 --n_trials 12 --datasets ... \\
        --algorithms ... --data_dir DIR --output_dir DIR --command_launcher cpu_parallel [--single_test_envs]
"""
import argparse


def parser():
    p = argparse.ArgumentParser(prog="python -m domainbed_diffusion.launchers.sweep", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("command", choices=["launch", "delete_incomplete"])
    p.add_argument("--trial_seed_from", type=int, required=True,
                   help="the first trial seed: the trials are FROM, FROM + 1, ..., FROM + n_trials - 1")
    p.add_argument("--n_trials", type=int, default=3)
    p.add_argument("--datasets", nargs="+", required=True)
    p.add_argument("--algorithms", nargs="+", required=True)
    p.add_argument("--task", default="domain_generalization")
    p.add_argument("--n_hparams_from", type=int, default=0)
    p.add_argument("--n_hparams", type=int, default=20)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--command_launcher", required=True)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--hparams", default=None)
    p.add_argument("--holdout_fraction", type=float, default=0.2)
    p.add_argument("--single_test_envs", action="store_true")
    p.add_argument("--skip_confirmation", action="store_true", help="accepted for the stock sweep's command lines; "
                   "this command never asks")
    return p


def job_arguments(args):
    """The stock sweep's train arguments for ``args``, each job's trial seed moved by ``args.trial_seed_from`` and
    its ``seed`` recomputed from it as the stock sweep computes it."""
    from domainbed.lib import misc
    from domainbed.scripts import sweep
    jobs = sweep.make_args_list(args.n_trials, args.datasets, args.algorithms, args.n_hparams_from, args.n_hparams,
                                args.steps, args.data_dir, args.task, args.holdout_fraction, args.single_test_envs,
                                args.hparams)
    for job in jobs:
        job["trial_seed"] += args.trial_seed_from
        job["seed"] = misc.seed_hash(job["dataset"], job["algorithm"], job["test_envs"], job["hparams_seed"],
                                     job["trial_seed"])
    return jobs


def main(argv=None):
    args = parser().parse_args(argv)
    from domainbed import command_launchers
    from domainbed.scripts.sweep import Job
    if args.command_launcher not in command_launchers.REGISTRY:
        raise SystemExit(f"--command_launcher {args.command_launcher!r}: one of "
                         f"{', '.join(sorted(command_launchers.REGISTRY))}")
    jobs = [Job(train_args, args.output_dir) for train_args in job_arguments(args)]
    for job in jobs:
        print(job)
    states = [j.state for j in jobs]
    print(f"{len(jobs)} jobs: {states.count(Job.DONE)} done, {states.count(Job.INCOMPLETE)} incomplete, "
          f"{states.count(Job.NOT_LAUNCHED)} not launched.")
    if args.command == "launch":
        to_launch = [j for j in jobs if j.state == Job.NOT_LAUNCHED]
        print(f"About to launch {len(to_launch)} jobs.")
        Job.launch(to_launch, command_launchers.REGISTRY[args.command_launcher])
    else:
        to_delete = [j for j in jobs if j.state == Job.INCOMPLETE]
        print(f"About to delete {len(to_delete)} jobs.")
        Job.delete(to_delete)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
