"""Command line of the generator: ``python -m offline_generation [generate|index|preview|report|...]``.

Without a subcommand it generates. Examples::

    python -m offline_generation --dataset DigitStyles --data_dir ./data --methods all
    python -m offline_generation --dataset PACS --data_dir /data --methods cdga-pg \\
        --model CompVis/stable-diffusion-v1-4 --dtype float16 --batch_size 32 --num_shards 8 --shard_id 0
    python -m offline_generation index --dataset PACS --data_dir /data
    python -m offline_generation preview --dataset DigitStyles --data_dir ./data --out preview.png
"""
import argparse
import os
import shlex
import sys

from domainbed_diffusion import catalogue
from domainbed_diffusion.data.layout import synthetic_root

from .options import data_parent, filter_parser, preview_parser, report_parser
from .pipeline import INTERRUPTED, interruptible, reported_errors

SUBCOMMANDS = ("generate", "index", "preview", "samples", "report", "filter", "prepare", "train-embedded",
               "throughput", "benchmark", "worker")


def _methods(names):
    """``--methods`` as given, with ``all`` for every generation method of the catalogue."""
    return list(catalogue.methods()) if "all" in names else list(names)


# Old spellings of --synthetic_root, accepted for a while: the generator's and preview's --output_dir, index's
# --synthetic_dir. Rewritten once in ``main`` so that workers and messages see only the new one.
DEPRECATED = {"--output_dir": "--synthetic_root", "--synthetic_dir": "--synthetic_root"}


def _modern(argv, command, stream=None):
    """``argv`` with deprecated option spellings replaced, and one note per spelling replaced."""
    out, noted = [], set()
    for token in argv:
        flag, eq, value = token.partition("=")
        if flag in DEPRECATED and command in ("generate", "index", "preview"):
            if flag not in noted:
                print(f"note: {flag} is now {DEPRECATED[flag]} (the old spelling still works for a while)",
                      file=stream or sys.stderr)
                noted.add(flag)
            token = DEPRECATED[flag] + eq + value
        out.append(token)
    return out


def _generation_arguments(parser):
    g = parser.add_argument_group("sources")
    g.add_argument("--envs", nargs="+", default=None, help="env folders to use (default: all)")
    g.add_argument("--max_per_class", type=int, default=None,
                   help="use at most this many source images per (env, class), the first in name order")
    g = parser.add_argument_group("model")
    g.add_argument("--model", default="embedded",
                   help="'embedded', a diffusers checkpoint folder, or a Hugging Face id in the local cache "
                        "(e.g. CompVis/stable-diffusion-v1-4)")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="auto", help="auto (fp16 on CUDA, fp32 on CPU), float32, float16, bfloat16")
    g.add_argument("--channels_last", action="store_true", help="channels-last memory for UNet and VAE (GPU)")
    g.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU; keep batches full)")
    g = parser.add_argument_group("sampling (default: each method's own, see README)")
    g.add_argument("--resolution", type=int, default=None)
    g.add_argument("--steps", type=int, default=None, help="DDIM steps of the schedule")
    g.add_argument("--strength", type=float, default=None, help="img2img strength (CDGA)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch_size", type=int, default=32, help="images per batch")
    g = parser.add_argument_group("trials (DomainBed's train/validation splits the images must respect)")
    g.add_argument("--per_trial", action="store_true",
                   help="one draw per trial: each trial's images from its own training split, with the trial in "
                        "their seeds (CDGA-IG and latent-prior always are; default: one draw every trial reads)")
    g.add_argument("--trial_seeds", type=int, nargs="+", default=None,
                   help="the sweep's trial seeds (default: 0 1 2, DomainBed's --n_trials 3)")
    g.add_argument("--holdout_fraction", type=float, default=None,
                   help="the train script's --holdout_fraction (default: 0.2)")
    g = parser.add_argument_group("methods")
    g.add_argument("--methods", nargs="+", default=["all"],
                   help=f"{', '.join(catalogue.methods())} or all (the methods), or a control: "
                        f"{', '.join(m for m in catalogue.methods(controls=True) if m not in catalogue.methods())}")
    for spec in catalogue.specs().values():  # each method's own settings, declared once in its spec
        if not spec.options:
            continue
        group = parser.add_argument_group(f"{spec.name}" + (" (a control)" if spec.control else ""))
        for option in spec.options:
            group.add_argument(f"--{spec.name}.{option.name}", dest=_flag(spec.name, option.name), type=option.type,
                               nargs=option.nargs, default=None, metavar=option.name.upper(),
                               help=f"{option.help} (default: {option.default}"
                                    + (f"; a run chooses among the images with hparam {option.hparam}"
                                       if option.select else "") + ")")
    for name in sorted({o.name for spec in catalogue.specs().values() for o in spec.options}):
        option = next(o for spec in catalogue.specs().values() for o in spec.options if o.name == name)
        g.add_argument(f"--{name}", dest=_flag("", name), type=option.type, nargs=option.nargs, default=None,
                       help=argparse.SUPPRESS)  # the shared spelling of earlier versions (``_method_settings``)
    g = parser.add_argument_group("scale")
    g.add_argument("--num_shards", type=int, default=None, help="split the job into this many independent shards")
    g.add_argument("--shard_id", type=int, default=None, help="which shard this process runs (0-based)")
    g.add_argument("--workers", type=int, default=None, metavar="W",
                   help="CPU: run W processes of one thread each (shards of this command); the images are the same "
                        "bytes whatever W")
    g.add_argument("--slurm", type=int, default=None, metavar="N",
                   help="write an sbatch job array of N shards of this command (DOMAINBED_SLURM_* settings)")
    g.add_argument("--submit", action="store_true", help="with --slurm: also submit it with sbatch")
    g.add_argument("--dry_run", action="store_true", help="print the plan and the disk estimate, generate nothing")


def _flag(method, option):
    """The namespace attribute of ``--<method>.<option>`` (``method`` "": the shared spelling of old)."""
    return f"setting__{method}__{option}"


SAMPLING_FLAGS = ("steps", "strength", "guidance", "resolution", "seed", "batch_size", "per_trial", "trial_seeds",
                  "holdout_fraction")  # what every selected method takes from the command line


def _method_settings(args, methods, stream=None):
    """``{method: {setting: value}}`` given on the command line: the sampling flags for every method, and each
    method's own ``--<method>.<option>``; the shared ``--<option>`` of earlier versions still sets that option of
    every selected method that has it, with a note."""
    out, noted = {}, set()
    for method in methods:
        spec = catalogue.spec(method)
        given = {k: getattr(args, k) for k in SAMPLING_FLAGS if getattr(args, k) is not None}
        given["dataset"] = args.dataset
        for option in spec.options:
            value = getattr(args, _flag(method, option.name))
            shared = getattr(args, _flag("", option.name))
            if value is None and shared is not None:
                value = shared
                if option.name not in noted:
                    noted.add(option.name)
                    owners = [m for m in methods if option.name in {o.name for o in catalogue.spec(m).options}]
                    print(f"note: --{option.name} sets that setting of {', '.join(owners)}; say which method's "
                          f"with --{owners[0]}.{option.name} (the shared spelling still works for a while)",
                          file=stream or sys.stderr)
            if value is not None:
                given[option.name] = value
        out[method] = given
    return out


def _generation_job(args, parser):
    """The typed ``GenerationJob`` of a parsed generate command line (its errors reported by ``parser``)."""
    from .job import GenerationJob
    methods = _methods(args.methods)
    unknown = [m for m in methods if m not in catalogue.methods(controls=True)]
    if unknown:
        parser.error(f"unknown method(s) {unknown}: choose from {', '.join(catalogue.methods(controls=True))} or all")
    if (args.shard_id is None) != (args.num_shards is None):
        parser.error("--num_shards and --shard_id go together")
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be at least 1")
    return GenerationJob(
        dataset=args.dataset, data_dir=args.data_dir, methods=tuple(methods),
        synthetic_root=synthetic_root(args.synthetic_root, args.data_dir), settings=_method_settings(args, methods),
        dataset_dir=args.dataset_dir, envs=tuple(args.envs) if args.envs else None, max_per_class=args.max_per_class,
        model=args.model, device=args.device, dtype=args.dtype, channels_last=args.channels_last,
        compile=args.compile, batch_size=args.batch_size, num_shards=args.num_shards, shard_id=args.shard_id,
        workers=args.workers, dry_run=args.dry_run)


def _drop_option(argv, flag, takes_value):
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = takes_value
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def submit_shards(argv, args):
    """An sbatch job array whose task k runs this very command as shard k of ``--slurm`` shards."""
    from domainbed_diffusion.launchers.slurm import SlurmConfig, launcher
    argv = _drop_option(_drop_option(argv, "--slurm", True), "--submit", False)
    commands = [" ".join([shlex.quote(sys.executable), "-m", "offline_generation", *map(shlex.quote, argv),
                          "--num_shards", str(args.slurm), "--shard_id", str(k)]) for k in range(args.slurm)]
    config = SlurmConfig.from_env()
    config.job_name = f"generate-{args.dataset}"
    return launcher(commands, config, submit=args.submit)


def generate_main(argv):
    parser = argparse.ArgumentParser(prog="python -m offline_generation", parents=[data_parent()],
                                     description="Write synthetic domains in DomainBed's folder layout.")
    _generation_arguments(parser)
    args = parser.parse_args(argv)
    job = _generation_job(args, parser)
    if args.slurm:
        return submit_shards(argv, args)
    from .pipeline import generate
    return generate(job, command=argv)


def worker_main(argv):
    parser = argparse.ArgumentParser(prog="python -m offline_generation worker",
                                     description="One shard of a saved generation job (what --workers starts).")
    parser.add_argument("job", help="the job's JSON file")
    parser.add_argument("--num_shards", type=int, required=True)
    parser.add_argument("--shard_id", type=int, required=True)
    args = parser.parse_args(argv)
    from .generate import run_worker
    return run_worker(args.job, args.num_shards, args.shard_id)


def index_main(argv):
    parser = argparse.ArgumentParser(prog="python -m offline_generation index", parents=[data_parent(False)],
                                     description="(Re)build the columnar index runs read at start from the "
                                                 "manifests (the generator does this after every run).")
    parser.add_argument("--methods", nargs="+", default=["all"])
    parser.add_argument("--no_verify", action="store_true", help="do not check that every recorded image is on disk")
    args = parser.parse_args(argv)
    if not args.synthetic_root and not args.data_dir:
        parser.error("give --data_dir or --synthetic_root")
    import os
    import time

    from domainbed_diffusion.data.index import build, manifest_paths
    dataset_root = os.path.join(synthetic_root(args.synthetic_root, args.data_dir), args.dataset)
    methods = _methods(args.methods)
    found = [m for m in methods if manifest_paths(dataset_root, m)]
    if not found:
        raise FileNotFoundError(f"{dataset_root} has no manifest of {methods}: generate first")
    for method in found:
        start = time.time()
        folder = build(dataset_root, method, verify=not args.no_verify)
        print(f"{method}: {folder} ({time.time() - start:.1f}s)")
    return 0


def preview_main(argv):
    args = preview_parser().parse_args(argv)
    args.methods = _methods(args.methods)
    from .preview import preview
    return preview(args)


def samples_main(argv):
    parser = argparse.ArgumentParser(prog="python -m offline_generation samples",
                                     description="A grid PNG of text-to-image samples: one row per prompt.")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--prompts", nargs="+", required=True)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="pixels per tile")
    parser.add_argument("--out", required=True)
    from .preview import samples_grid
    return samples_grid(parser.parse_args(argv))


def report_main(argv):
    parser = report_parser()
    args = parser.parse_args(argv)
    if args.per_group < 2:
        parser.error("--per_group must be at least 2")
    from .report import run
    return run(args)


def filter_main(argv):
    from .filtering import run
    return run(filter_parser().parse_args(argv))


def prepare_main(argv):
    from domainbed_diffusion.benchmark.digitstyles import main
    return main(argv)


def train_embedded_main(argv):
    parser = argparse.ArgumentParser(
        prog="python -m offline_generation train-embedded",
        description="Train the embedded tiny models on DigitStyles' pool (CPU): by default the four models that "
                    "each never saw one benchmark style; --all_styles for the all-styles ablation model.")
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--out", default=None,
                        help="folder for the models (default: the package's embedded folder); with --all_styles, "
                             "the checkpoint folder")
    parser.add_argument("--all_styles", action="store_true", help="train the all-styles model instead")
    parser.add_argument("--held_out", nargs="+", default=None, metavar="STYLE",
                        help="benchmark styles to build a model without (default: all four)")
    parser.add_argument("--vae_steps", type=int, default=1500)
    parser.add_argument("--base_steps", type=int, default=8000, help="base denoiser steps on pool-only styles")
    parser.add_argument("--finetune_steps", type=int, default=700, help="fine-tune steps per held-out model")
    parser.add_argument("--unet_steps", type=int, default=8000, help="denoiser steps of the all-styles model")
    parser.add_argument("--work_dir", default=None, help="cache of the shared base (default <data_dir>/embedded-base)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from domainbed_diffusion.benchmark import digitstyles
    from domainbed_diffusion.benchmark.shipped import EMBEDDED_MODEL_PATH, FOLDER

    from .train_embedded import train, train_held_out
    if args.all_styles:
        return train(args.data_dir, args.out or EMBEDDED_MODEL_PATH, args.vae_steps, args.unet_steps,
                     seed=args.seed)
    unknown = sorted(set(args.held_out or []) - set(digitstyles.DOMAINS))
    if unknown:
        raise ValueError(f"--held_out {' '.join(unknown)}: not a DigitStyles benchmark style; choose from "
                         f"{', '.join(digitstyles.DOMAINS)}")
    return train_held_out(args.data_dir, args.out or FOLDER, tuple(args.held_out or digitstyles.DOMAINS),
                          args.vae_steps, args.base_steps, args.finetune_steps, seed=args.seed,
                          work_dir=args.work_dir)


def throughput_main(argv, command="throughput"):
    if command == "benchmark":
        print("note: the subcommand benchmark is now throughput (the old name still works for a while)",
              file=sys.stderr)
    from .throughput import main
    return main(argv)


def main(argv=None):
    interruptible()
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "generate"
    argv = _modern(argv, command)
    handler = {"generate": generate_main, "index": index_main, "preview": preview_main, "samples": samples_main,
               "report": report_main, "filter": filter_main, "prepare": prepare_main,
               "train-embedded": train_embedded_main, "throughput": throughput_main,
               "benchmark": lambda a: throughput_main(a, "benchmark"), "worker": worker_main}[command]
    from .generate import WORKER
    try:
        handler(argv)
    except reported_errors() as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if not os.environ.get(WORKER):  # the parent of workers speaks for them
            print(INTERRUPTED, file=sys.stderr)
        return 130
    return 0
