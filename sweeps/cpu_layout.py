"""The ``channels_last`` hparam's speed on this CPU: an ERM step and a DomainBed evaluation pass at DigitStyles'
size, in the default layout and channels-last, in one process (ratios against the default layout).

    PYTHONPATH=../DomainBed python sweeps/cpu_layout.py [--threads 1] [--repeats 5]
"""
import argparse
import time

import torch
import torch.nn.functional as F


def timed(fn, repeats):
    fn()  # warm-up: oneDNN picks its kernels on the first call
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def measure(channels_last, repeats, batch=24, evaluated=1320, eval_batch=64, seed=0):
    from domainbed import networks
    from domainbed_diffusion.training.networks import wrap_featurizer
    torch.manual_seed(seed)
    featurizer = wrap_featurizer(lambda shape, hparams: networks.MNIST_CNN(shape))(
        (3, 28, 28), {"channels_last": channels_last})  # the plugin's own wrap, as every algorithm gets it
    model = torch.nn.Sequential(featurizer, torch.nn.Linear(featurizer.n_outputs, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, 28, 28), torch.randint(0, 10, (batch,))  # inputs as DomainBed's loaders give them
    images = torch.randn(evaluated, 3, 28, 28)

    def step():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def evaluate():
        for k in range(0, evaluated, eval_batch):
            model(images[k:k + eval_batch])
    return timed(step, repeats * 10), timed(evaluate, repeats)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the sweep's lanes run one each)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    default, channels_last = measure(False, args.repeats), measure(True, args.repeats)
    for what, a, b in (("ERM step (24 images)", default[0], channels_last[0]),
                       ("evaluation (1320 images)", default[1], channels_last[1])):
        print(f"{what}: default layout {a * 1000:.0f} ms, channels-last {b * 1000:.0f} ms, ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
