"""Options of every DomainBed algorithm, stock or the plugin's, without a class per combination.

- **Synthetic data** (hparams ``synthetic_methods``, ``synthetic_as``): any algorithm reads the images of one or
  more generation methods, under the same leak rules and per-test-env generator check as the methods' own
  algorithms. ``"minibatch"``: each slot of each training env's minibatch is a synthetic image of that env with
  the synthetic share of the env's real + synthetic union (ERM's images per step, CDGA's mixing). ``"environments"``:
  each method's images, every training env's sources together, are one more training environment, the new
  domain CDGA's paper calls them: the algorithm is built with that many more domains and each step gets one more
  minibatch per method, so env-aware algorithms (CORAL, GroupDRO, Fish, ...) see them as domains. The extra
  environments live inside the algorithm: DomainBed's env indices, its validation splits, the test env and what
  ``results.jsonl`` records are the real ones, so stock selection and ``collect_results`` read the run as ever.
- **SWAD** (algorithm ``<Name>_SWAD`` for any registered ``<Name>``): the algorithm's own updates, with SWAD's
  dense averaging of ``network`` over the loss valley (``swad``); the run's last evaluation is the averaged model.

``with_options(cls)`` is what DomainBed's ``get_algorithm_class`` returns once the plugin is registered: when a
run asks for no option it builds a plain ``cls`` (the stock object, byte for byte); otherwise an instance of a
subclass that adds them.
"""
import sys

import torch

from . import context, inputs, mixing, swad
from ..hparams_registry import SWAD_SUFFIX
MODES = ("minibatch", "environments")
_classes = {}


methods_of, extra_environments = context.synthetic_methods, context.extra_environments


def with_options(base, swad_on=False):
    """``base`` with the options above (``swad_on``: its ``_SWAD`` variant); one class per (base, swad_on)."""
    key = (base, swad_on)
    if key not in _classes:
        name = base.__name__ + (SWAD_SUFFIX if swad_on else "")
        _classes[key] = type(name, (WithOptions, base), dict(_base=base, _swad=swad_on, __qualname__=name,
                                                             __module__=__name__))
    return _classes[key]


class WithOptions:
    """Mixed in before an algorithm class by ``with_options``; see the module's docstring."""
    _base = None
    _swad = False

    def __new__(cls, input_shape, num_classes, num_domains, hparams, *args, **kwargs):
        if not cls._swad and not methods_of(hparams):
            return cls._base(input_shape, num_classes, num_domains, hparams, *args, **kwargs)  # the stock object
        return super().__new__(cls)

    def __init__(self, input_shape, num_classes, num_domains, hparams, *args, **kwargs):
        super().__init__(input_shape, num_classes, num_domains + extra_environments(hparams), hparams, *args,
                         **kwargs)
        name = type(self).__name__
        ctx = context.require(name, input_shape, num_domains + extra_environments(hparams), hparams)
        self._extras = _Extras(ctx, hparams, name) if methods_of(hparams) else None
        self._swad_state = _SWADState(self, ctx, hparams, name) if self._swad else None

    def update(self, minibatches, unlabeled=None):
        if self._extras is not None:
            minibatches = self._extras.minibatches(minibatches)
        out = super().update(minibatches, unlabeled)
        if self._swad_state is not None:
            out = dict(out or {}, **self._swad_state.after_step())
        return out

    def predict(self, x, *args, **kwargs):
        if self._swad_state is not None and self._swad_state.final is not None:
            return self._swad_state.final(x)
        return super().predict(x, *args, **kwargs)


class _Extras:
    """The synthetic images a run of any algorithm asked for, mixed into its minibatches by ``mixing``."""

    def __init__(self, ctx, hparams, name):
        self.mode = hparams.get("synthetic_as", "minibatch")
        if self.mode not in MODES:
            raise ValueError(f"hparam synthetic_as={self.mode!r}: use one of {MODES}")
        base_seed = int(torch.randint(2 ** 31 - 1, (1,)).item())  # DomainBed seeds torch before the algorithm
        generator = torch.Generator().manual_seed(base_seed)
        made = {m: inputs.synthetic_datasets(ctx, m, hparams, f"{name} (synthetic_methods)", base_seed)
                for m in methods_of(hparams)}
        batch, workers = hparams["batch_size"], getattr(ctx.dataset, "N_WORKERS", 0)
        if self.mode == "minibatch":  # per training env: the union of every named method's images of it
            streams = [torch.utils.data.ConcatDataset([made[m][i] for m in made]) for i in ctx.train_envs]
            self.mixer = mixing.Mixer(streams, [len(ctx.training_split(i)) for i in ctx.train_envs], batch, workers,
                                      "union", generator)
        else:  # per method: one environment of its images, every training env's sources together
            streams = [torch.utils.data.ConcatDataset([made[m][i] for i in ctx.train_envs]) for m in made]
            self.mixer = mixing.Mixer(streams, (), batch, workers, "environments", generator)

    def minibatches(self, minibatches):
        return [(x, y) for x, y, _ in self.mixer.mix(minibatches)]


class _SWADState:
    """SWAD beside an algorithm: segment averages of its ``network`` every step, a segment's validation loss every
    ``swad_eval_every`` steps on the training envs' validation splits, the averaged model at the run's last step."""

    def __init__(self, algorithm, ctx, hparams, name):
        network = getattr(algorithm, "network", None)
        from domainbed.algorithms import ERM
        predict = next(vars(k)["predict"] for k in algorithm._base.__mro__ if "predict" in vars(k))
        if not isinstance(network, torch.nn.Module) or predict is not ERM.predict:
            raise ValueError(f"{name}: SWAD averages the algorithm's `network` and predicts with it, so it needs an "
                             f"algorithm that predicts with `network(x)` as DomainBed's ERM does; "
                             f"{algorithm._base.__name__} predicts otherwise")
        self.every, self.total = int(hparams["swad_eval_every"]), ctx.total_steps
        if not self.total:
            raise ValueError(f"{name}: SWAD needs the run's number of steps (the train script's --steps or the "
                             f"dataset's N_STEPS)")
        self.bn = not hparams.get("freeze_bn", False)
        self.ctx, self.hparams, self.name, self.step = ctx, hparams, name, 0
        self.averager = swad.Averager(network, swad.LossValley(
            hparams["swad_n_converge"], hparams["swad_n_tolerance"], hparams["swad_tolerance_ratio"]))
        self.final = None
        self._loader = None

    def loader(self, splits):
        data = torch.utils.data.ConcatDataset(splits)
        return torch.utils.data.DataLoader(data, batch_size=64, shuffle=False,
                                           num_workers=getattr(self.ctx.dataset, "N_WORKERS", 0))

    def after_step(self):
        self.averager.step()
        self.step += 1
        out = {}
        if self.step % self.every == 0:
            if self._loader is None:  # the training envs' validation splits (DomainBed's "out" splits)
                self._loader = self.loader([self.ctx.splits[i][0] for i in self.ctx.train_envs
                                            if i in self.ctx.splits])
            device = next(self.averager.network.parameters()).device
            loss = swad.validation_loss(self.averager.segment_model(), self._loader, device)
            self.averager.close_segment(loss)
            out["swad_val_loss"] = loss
        if self.step == self.total:
            schedule = self.averager.schedule
            bn = self.loader([self.ctx.training_split(i) for i in self.ctx.train_envs]) if self.bn else None
            self.final = self.averager.finish(_inputs(bn, self.hparams.get("swad_bn_batches", 500)) if bn else None)
            if schedule.start is None:
                print(f"{self.name}: SWAD found no loss valley in {self.step} steps (the validation loss never "
                      f"settled): the average is the last {schedule.n_converge} segments'", file=sys.stderr)
            out.update(swad_model=1, swad_start_step=self.every * schedule.joined[0] if schedule.joined else -1,
                       swad_end_step=self.every * (schedule.joined[-1] + 1) if schedule.joined else -1,
                       swad_segments=len(schedule.joined))
        return out


def _inputs(loader, batches):
    """At most ``batches`` batches of ``loader``'s inputs (``update_bn`` reads the first element of each)."""
    for k, batch in enumerate(loader):
        if k >= batches:
            return
        yield batch
