"""The options of the generator's subcommands that read a dataset and its synthetic domains: their parsers, shared by
the command line (``cli``) and the pipeline API (``pipeline``), which takes their defaults."""
import argparse


def data_parent(data_dir_required=True):
    """The options every subcommand that reads a dataset and its synthetic domains shares."""
    parent = argparse.ArgumentParser(add_help=False)
    g = parent.add_argument_group("data")
    g.add_argument("--dataset", required=True, help="DomainBed dataset name (PACS, OfficeHome, DigitStyles, ...)")
    g.add_argument("--data_dir", required=data_dir_required, default=None, help="DomainBed's data_dir")
    g.add_argument("--dataset_dir", default=None, help="the dataset's folder, if not DomainBed's default under data_dir")
    g.add_argument("--synthetic_root", default=None,
                   help="the synthetic domains' root, as the hparam synthetic_root (default: <data_dir>/synthetic)")
    return parent


def preview_parser():
    parser = argparse.ArgumentParser(prog="python -m offline_generation preview", parents=[data_parent()],
                                     description="A grid PNG: source images next to their synthetic variants.")
    parser.add_argument("--methods", nargs="+", default=["all"])
    parser.add_argument("--rows", type=int, default=4, help="source images per method")
    parser.add_argument("--variants", type=int, default=6, help="synthetic images per source image, at most")
    parser.add_argument("--size", type=int, default=96, help="pixels per tile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="PNG file to write")
    return parser


def report_parser():
    from .features import EXTRACTORS
    parser = argparse.ArgumentParser(prog="python -m offline_generation report", parents=[data_parent()],
                                     description="Measure what the generator made: label fidelity, style "
                                                 "attribution, FID/KID, copies and diversity, a t-SNE map.")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method with a manifest")
    parser.add_argument("--output", default=None, help="default: <synthetic_root>/<dataset>/report")
    parser.add_argument("--per_group", type=int, default=50,
                        help="images at most per (source env, target env, class), and real ones per (env, class)")
    parser.add_argument("--extractor", default="auto", choices=EXTRACTORS)
    parser.add_argument("--extractor_weights", default=None, help="a local weights file for the extractor")
    parser.add_argument("--random_weights", action="store_true",
                        help="ResNet-50 with random weights where none are on this machine (smoke tests only)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache_dir", default=None, help="feature cache (default: <output>/feature_cache)")
    parser.add_argument("--trial_seed", type=int, default=0, help="the train/validation split the probes use")
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_map", action="store_true", help="skip the t-SNE map")
    parser.add_argument("--synthetic_filter", default=None, metavar="NAME",
                        help="measure only the images the filter NAME kept for --trial_seed (any test env)")
    return parser


def filter_parser():
    from .features import EXTRACTORS
    parser = argparse.ArgumentParser(prog="python -m offline_generation filter", parents=[data_parent()],
                                     description="Drop synthetic images a classifier fitted on each run's own "
                                                 "training data does not recognise as their label; writes a "
                                                 "named filtered selection, deletes nothing.")
    parser.add_argument("--methods", nargs="+", required=True)
    parser.add_argument("--name", default="label", help="the selection's name: the hparam synthetic_filter")
    parser.add_argument("--test_envs", nargs="+", default=None, help="default: every env in turn")
    parser.add_argument("--trial_seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--holdout_fraction", type=float, default=0.2)
    parser.add_argument("--criterion", default="disagree", choices=("disagree", "none"),
                        help="disagree: drop an image whose predicted label is not its own (none: only the "
                             "thresholds below)")
    parser.add_argument("--min_confidence", type=float, default=None,
                        help="drop an image whose probability of its own label is below this")
    parser.add_argument("--max_entropy", type=float, default=None,
                        help="drop an image whose predictive entropy (nats) is above this")
    parser.add_argument("--per_class", type=int, default=200,
                        help="real images per (env, class) the probe fits on, at most")
    parser.add_argument("--extractor", default="auto", choices=EXTRACTORS)
    parser.add_argument("--extractor_weights", default=None)
    parser.add_argument("--random_weights", action="store_true", help="smoke tests only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache_dir", default=None, help="feature cache (default: <dataset root>/filter_cache)")
    return parser
