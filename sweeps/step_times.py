"""Per-step time of every algorithm relative to ERM, measured in one process on the same minibatches.

    python sweeps/step_times.py [--data_dir data] [--steps 20] [--dataset DigitStyles] [--algorithms ...]

Needs DomainBed importable and, for the synthetic-data algorithms, their synthetic domains (the main job makes
them). Each algorithm is built as DomainBed's train script builds it (dataset, split, default hparams), warmed up
for 3 steps, then timed over ``--steps`` updates on fixed minibatches.
"""
import argparse
import json
import os
import time

import torch

from domainbed_diffusion import catalogue

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHMS = ["ERM", *catalogue.algorithms()]  # DomainBed's baseline, then the catalogue's rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=os.path.join(REPO, "data"))
    parser.add_argument("--dataset", default="DigitStyles")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--test_env", type=int, default=0)
    parser.add_argument("--hparams", default="{}", help="JSON overrides for every algorithm")
    parser.add_argument("--algorithms", nargs="+", default=ALGORITHMS, help="ERM is always timed first")
    args = parser.parse_args(argv)
    import domainbed_diffusion
    domainbed_diffusion.register()
    from domainbed import algorithms, datasets, hparams_registry
    from domainbed.lib import misc
    torch.manual_seed(0)
    results = {}
    for name in ["ERM"] + [a for a in args.algorithms if a != "ERM"]:
        hparams = hparams_registry.default_hparams(name, args.dataset)
        hparams.update(json.loads(args.hparams))
        dataset = datasets.get_dataset_class(args.dataset)(args.data_dir, [args.test_env], hparams)
        splits = [misc.split_dataset(env, int(len(env) * 0.2), misc.seed_hash(0, i)) for i, env in enumerate(dataset)]
        train = [i for i in range(len(dataset)) if i != args.test_env]
        g = torch.Generator().manual_seed(0)
        minibatches = []
        for i in train:
            keys = torch.randint(len(splits[i][1]), (hparams["batch_size"],), generator=g).tolist()
            items = [splits[i][1][k] for k in keys]
            minibatches.append((torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])))
        algorithm = algorithms.get_algorithm_class(name)(dataset.input_shape, dataset.num_classes, len(train), hparams)
        for _ in range(3):
            algorithm.update(minibatches)
        start = time.perf_counter()
        for _ in range(args.steps):
            algorithm.update(minibatches)
        results[name] = (time.perf_counter() - start) / args.steps
        print(f"{name}: {results[name] * 1000:.0f} ms/step ({results[name] / results['ERM']:.2f}x ERM)", flush=True)
    return results


if __name__ == "__main__":
    main()
