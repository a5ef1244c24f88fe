"""The plugin's DomainBed algorithms: one short class each. The catalogue lists them and pairs each with its
hyperparameter block (``hparams_registry``) and, for those that train on generated images, its generation method.

Each method's math lives in a module of its own (``methods.*``, ``domainfusion``), imported here and,
for the generation methods, by the offline generator too.
"""
import copy
import math
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from domainbed.algorithms import ERM

from . import catalogue, registration
from .data import provenance
from .diffusion import choice
from .methods import cdga, domainfusion, gsd
from .training import context, inputs, mixing
from .methods.miro import FeatureHooks, VarianceEncoder, feature_modules, miro_penalty


class MIRO(ERM):
    """MIRO (Cha et al., ECCV 2022): ERM plus a mutual-information regulariser toward the initial featurizer.

    The oracle is a frozen deep copy of the featurizer as built (the same pretrained weights), run without
    gradients and always in eval mode; one Adam updates the network at ``lr`` and the variance encoders at
    ``lr * lr_mult``, with weight decay on both groups.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self.oracle = copy.deepcopy(self.featurizer)  # copied before any hook is attached
        self.oracle.requires_grad_(False)
        self.oracle.eval()
        self._hooks = FeatureHooks(feature_modules(self.featurizer))
        self._oracle_hooks = FeatureHooks(feature_modules(self.oracle))
        with torch.no_grad():
            out, features = self._oracle_hooks(self.oracle, torch.zeros(2, *input_shape))
        shapes = [f.shape[1:] for f in features] or [out.shape[1:]]
        self.variance_encoders = nn.ModuleList(VarianceEncoder(s) for s in shapes)
        self.optimizer = torch.optim.Adam(
            [{"params": self.network.parameters()},
             {"params": self.variance_encoders.parameters(), "lr": hparams["lr"] * hparams["lr_mult"]}],
            lr=hparams["lr"], weight_decay=hparams["weight_decay"])

    def train(self, mode=True):
        super().train(mode)
        self.oracle.eval()  # DomainBed calls .train() after every evaluation: the oracle's BN must not follow
        return self

    def update(self, minibatches, unlabeled=None):
        all_x = torch.cat([x for x, y in minibatches])
        all_y = torch.cat([y for x, y in minibatches])
        features, inter = self._hooks(self.featurizer, all_x)
        ce = F.cross_entropy(self.classifier(features), all_y)
        with torch.no_grad():
            oracle_features, oracle_inter = self._oracle_hooks(self.oracle, all_x)
        if not inter:
            inter, oracle_inter = [features], [oracle_features]
        reg = miro_penalty(inter, oracle_inter, [v() for v in self.variance_encoders])
        loss = ce + self.hparams["ld"] * reg
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "ce": ce.item(), "miro": reg.item(), "images": len(all_x)}


class SyntheticERM(ERM):
    """ERM on real images plus the synthetic images of one generation method, read leak-free from disk.

    ``synthetic_mode`` says how each training env's minibatch gets them (``training.mixing``: ``union``,
    ``balanced``, ``paired``); synthetic samples' losses are weighted by ``synthetic_weight``; featurizer,
    classifier, optimizer are ERM's. Which method's images it reads is its catalogue entry's, and which of them
    (ED-SAM's first M samples at its rho, CDGA's first images per pair) its method's options' twins select
    (``MethodSpec.record_filter``): a method whose algorithm adds nothing to that has no class written here,
    ``registration`` derives this class under its name.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        if hparams["synthetic_mode"] not in mixing.MINIBATCH_MODES:
            raise ValueError(f"hparam synthetic_mode={hparams['synthetic_mode']!r}: use one of "
                             f"{mixing.MINIBATCH_MODES}")
        name = type(self).__name__
        ctx = context.require(name, input_shape, num_domains, hparams)
        self.run_context = ctx  # which dataset, data_dir and test envs its synthetic images were filtered for
        base_seed = int(torch.randint(2 ** 31 - 1, (1,)).item())  # DomainBed seeds torch before this
        self.method = registration.method_of(type(self))
        if self.method is None:
            raise ValueError(f"{name}: no generation method to read: add it to the catalogue with a MethodSpec "
                             f"(or an Entry with reads=...)")
        spec = catalogue.spec(self.method)
        made = inputs.synthetic_datasets(ctx, self.method, hparams, name, base_seed, spec.record_filter(hparams),
                                         self.allow_test_guides(spec, hparams))
        self.mixer = mixing.Mixer([made[i] for i in ctx.train_envs], [len(ctx.training_split(i)) for i in
                                  ctx.train_envs], hparams["batch_size"], getattr(ctx.dataset, "N_WORKERS", 0),
                                  hparams["synthetic_mode"], torch.Generator().manual_seed(base_seed))

    def allow_test_guides(self, spec, hparams):
        """Whether its method's opt-in to images guided toward the test env is on (loudly: not DG)."""
        if not spec.test_guides_hparam or not hparams[spec.test_guides_hparam]:
            return False
        print(f"WARNING: {type(self).__name__} with {spec.test_guides_hparam}=True trains on images made toward the "
              f"TEST domain: this uses test-domain information (CDGA's starred variant) and is not domain "
              f"generalization.", file=sys.stderr)
        return True

    def update(self, minibatches, unlabeled=None):
        mixed = self.mixer.mix(minibatches)
        w, device = self.hparams["synthetic_weight"], minibatches[0][0].device
        weights = torch.cat([torch.cat([torch.ones(len(x) - k, device=device), torch.full((k,), float(w),
                                                                                          device=device)])
                             for x, _, k in mixed])
        per_sample = F.cross_entropy(self.predict(torch.cat([x for x, _, _ in mixed])),
                                     torch.cat([y for _, y, _ in mixed]), reduction="none")
        # paired: mean CE of the real half plus w times that of the synthetic half (halves of equal size)
        paired = self.hparams["synthetic_mode"] == "paired"
        denominator = sum(len(x) for x, _ in minibatches) if paired else weights.sum()
        loss = (weights * per_sample).sum() / denominator
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "images": len(per_sample)}


def lr_schedule(optimizer, name, total):
    """``"cosine"``: DomainFusion's cosine decay of the learning rate over the run's ``total`` steps; else None."""
    if name != "cosine" or not total:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))


class DomainFusion(ERM):
    """DomainFusion (*Generalizing to Unseen Domains with Latent Diffusion Models*, Gradient Score Distillation):
    ``lambda_raw CE(real) + lambda_gen CE(synthetic) + lambda_gsd L_GSD`` with Adam and a cosine schedule over
    the run's steps. The synthetic set is refreshed every ``refresh_every`` steps by N-candidate img2img and the
    sampling strategy: the images drawn at that step (``refresh_order="drawn"``, the paper's figure 3), or the next
    of a cycle that regenerates the whole set every ``turnover_steps`` steps (``"cycle"``); the share refreshed so
    far is logged as ``refreshed_fraction``. GSD runs every ``gsd_every`` steps. The diffusion model (on
    DigitStyles the one that never saw the test style) is loaded on first use, frozen, outside the state dict;
    prediction is the classifier alone. ``lambda_gsd=0``, ``lambda_gen=0``, ``n_candidates=1`` or
    ``sampling_strategy=False`` give the paper's ablation rows.
    """

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        ctx = context.require("DomainFusion", input_shape, num_domains, hparams)
        self.run_context = ctx
        self.train_envs = ctx.train_envs
        self.mapping = inputs.PixelMapping(inputs.env_transform(ctx, ctx.train_envs[0]), input_shape)
        self.pool = domainfusion.SyntheticPool(ctx, hparams["image_size"], self.mapping, hparams["spill_dir"] or None)
        self.prompts = [hparams["class_prompt"].format(cdga.class_text(c)) for c in ctx.class_names]
        self.base_seed = int(torch.randint(2 ** 31 - 1, (1,)).item())
        self._generator = torch.Generator().manual_seed(self.base_seed)
        self._diffusion = None  # a plain object, so never in state_dict nor moved by .to()
        self.test_env_names = [ctx.env_names[i] for i in ctx.test_envs]
        # "embedded" on DigitStyles: the shipped model that never saw this run's test style (``diffusion.choice``)
        self.diffusion_model = choice.model_for_run(hparams["diffusion_model"], ctx.dataset_name,
                                                        self.test_env_names)
        self.step = 0
        self.pool.cycle(self.base_seed)
        self.refresh_count = math.ceil(len(self.pool) * hparams["refresh_every"] / hparams["turnover_steps"])
        self.scheduler = lr_schedule(self.optimizer, hparams["lr_schedule"], ctx.total_steps)
        per_refresh = self.refresh_count if hparams["refresh_order"] == "cycle" else hparams["batch_size"] * len(
            self.train_envs)
        self.pool.check_disk(math.ceil((ctx.total_steps or 0) / hparams["refresh_every"]) * per_refresh)

    def diffusion(self, device):
        if self._diffusion is None:
            from .diffusion import LatentDiffusion, loading
            folder = loading.resolve_model(self.diffusion_model)  # resolved once: checked, then loaded
            provenance.check(self.diffusion_model, choice.trained_on(folder), self.test_env_names, self.hparams,
                             "DomainFusion")
            self._diffusion = LatentDiffusion.from_pretrained(folder, device=device,
                                                              dtype=self.hparams["diffusion_dtype"])
        return self._diffusion

    def gsd_loss(self, x, y, logits):
        model = self.diffusion(x.device)
        size = self.hparams["image_size"]
        confidence = logits.softmax(1).gather(1, y[:, None]).squeeze(1)
        t = gsd.sample_timesteps(len(x), self.hparams["gsd_t_min"], self.hparams["gsd_t_max"],
                                 model.scheduler.config.num_train_timesteps, self._generator, model.device)
        shape = (model.vae.config.latent_channels, size // model.vae_scale_factor, size // model.vae_scale_factor)
        noise = torch.randn((len(x), *shape), generator=self._generator).to(model.device, model.dtype)
        return gsd.gsd_loss(model, self.mapping.to_pixels(x, (size, size)), confidence,
                            [self.prompts[c] for c in y.tolist()], t, noise, self.hparams["gsd_weighting"],
                            self.hparams["gsd_guidance_scale"], chunk=self.hparams["diffusion_chunk"])

    def update(self, minibatches, unlabeled=None):
        hp = self.hparams
        real_x = torch.cat([x for x, y in minibatches])
        real_y = torch.cat([y for x, y in minibatches])
        device, n = real_x.device, len(real_x)
        use_gen = hp["lambda_gen"] > 0
        indices = [i for env, (x, _) in zip(self.train_envs, minibatches)
                   for i in self.pool.sample(env, len(x), self._generator)] if use_gen else []
        x = real_x
        images = self.pool.images(indices)  # read once: the loss and a refresh both start from them
        if use_gen:
            syn_x, syn_y = self.pool.inputs(indices, images)
            x = torch.cat([real_x, syn_x.to(device)])
        logits = self.predict(x)
        loss_raw = F.cross_entropy(logits[:n], real_y)
        loss = hp["lambda_raw"] * loss_raw
        out = {"loss_raw": loss_raw.item()}
        if use_gen:
            loss_gen = F.cross_entropy(logits[n:], syn_y.to(device))
            loss = loss + hp["lambda_gen"] * loss_gen
            out["loss_gen"] = loss_gen.item()
        if hp["lambda_gsd"] > 0 and self.step % hp["gsd_every"] == 0:
            loss_gsd = self.gsd_loss(real_x, real_y, logits[:n])
            loss = loss + hp["lambda_gsd"] * loss_gsd
            out["loss_gsd"] = loss_gsd.item()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if use_gen and self.step % hp["refresh_every"] == 0:
            if hp["refresh_order"] == "cycle":
                indices = self.pool.next_to_refresh(self.refresh_count)
                images = self.pool.images(indices)
            out["refreshed"] = domainfusion.refresh(self.pool, indices, images, self.diffusion(device), self.network,
                                                    self.featurizer, self.classifier, self.prompts, hp,
                                                    self.base_seed)
        self.step += 1
        if use_gen:
            out["refreshed_fraction"] = self.pool.refreshed_fraction()
            if self.step == self.run_context.total_steps:
                print(f"DomainFusion: {out['refreshed_fraction']:.1%} of the synthetic set ({len(self.pool)} "
                      f"images) was regenerated in {self.step} steps", flush=True)
        out["loss"] = loss.item()
        out["images"] = len(x)  # real + synthetic: DomainFusion's loss has a term for each
        return out


# Controls: rows of the ablation table (``sweeps/main_job.py --ablation``) that say what a method's images add.

class ERM_Augment(ERM):
    """Control: ERM with DomainBed's standard augmentation (random resized crop at scale 0.7-1, colour jitter 0.3,
    random grayscale) drawn per training image; the horizontal flip only with ``augment_flip``, off by default since
    a mirrored digit is another shape. DomainBed's image datasets already augment in their loaders
    (``data_augmentation``); DigitStyles, held in memory, does not, so this row is ERM plus that augmentation."""

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        from torchvision.transforms import v2
        ctx = context.require("ERM_Augment", input_shape, num_domains, hparams)
        self.mapping = inputs.PixelMapping(inputs.env_transform(ctx, ctx.train_envs[0]), input_shape)
        self.augment = v2.Compose(
            [v2.RandomResizedCrop(input_shape[1:], scale=(0.7, 1.0), antialias=True)]
            + ([v2.RandomHorizontalFlip()] if hparams["augment_flip"] else [])
            + [v2.ColorJitter(0.3, 0.3, 0.3, 0.3), v2.RandomGrayscale()])

    def update(self, minibatches, unlabeled=None):
        out = []
        for x, y in minibatches:
            pixels = self.mapping.to_pixels(x)
            # one draw per image: a v2 transform given a batch would apply the same crop and jitter to all of it
            out.append((self.mapping.to_inputs(torch.stack([self.augment(p) for p in pixels])), y))
        return dict(super().update(out), images=sum(len(x) for x, _ in out))


class ERM_RealMatched(ERM):
    """Control: ERM seeing as few real images per step as a union row: each slot of each env's minibatch is kept
    with probability ``real_share`` (default 1/3: CDGA's union of one image per other training env, two synthetic
    per real image with three training envs) and dropped, not replaced."""

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        self._generator = torch.Generator().manual_seed(int(torch.randint(2 ** 31 - 1, (1,)).item()))

    def update(self, minibatches, unlabeled=None):
        kept = []
        for x, y in minibatches:
            keep = torch.rand(len(x), generator=self._generator) < self.hparams["real_share"]
            kept.append((x[keep.to(x.device)], y[keep.to(y.device)]))
        if not sum(len(x) for x, _ in kept):  # no image this step: skip it rather than take a NaN loss
            return {"loss": float("nan"), "images": 0}
        return dict(super().update(kept), images=sum(len(x) for x, _ in kept))


class ERM_FusionMatched(ERM):
    """Control: ERM with DomainFusion's schedule and images per step: the cosine learning-rate decay over the run,
    and a real minibatch of twice DomainFusion's batch size per env (its real and synthetic halves, all real), so
    DomainFusion's row is read for what GSD and its synthetic set add, not its schedule or its larger batch."""

    def __init__(self, input_shape, num_classes, num_domains, hparams):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        ctx = context.require("ERM_FusionMatched", input_shape, num_domains, hparams)
        self.scheduler = lr_schedule(self.optimizer, hparams["lr_schedule"], ctx.total_steps)

    def update(self, minibatches, unlabeled=None):
        out = super().update(minibatches)
        if self.scheduler is not None:
            self.scheduler.step()
        return dict(out, images=sum(len(x) for x, _ in minibatches))


# Imported before DomainBed's algorithms module, this module's classes did not exist yet when it registered them.
registration.register()
