"""What the generator made, measured: label fidelity, style attribution, FID/KID, copies and diversity, a map.

    python -m offline_generation report --dataset DigitStyles --data_dir data [--synthetic_root ROOT]
                                        [--methods ...] [--output DIR] [--per_group 50]

For every method and every set it made (one per source env, or per (source env, target env) for CDGA), on a
bounded sample of ``--per_group`` images per (source env, target env, class):

- label fidelity: the share assigned to their intended class by a probe trained on real training-split
  features, beside that probe's accuracy on the real validation splits (the reference);
- style attribution: the share a probe of the real envs attributes to each env; ``target`` is the env the method
  aimed at (CDGA's guide env, else the source env), ``held_out`` the envs neither source nor guide, which are the
  test envs of the runs that train on these images;
- FID and KID against each real env (torchmetrics, on the extractor's features);
- copies: the feature distance of each image to its source image, and the share closer than a near-copy
  threshold taken from the real data; diversity: mean pairwise distance within (target env, class) against the
  real images' of the same env and class;
- the generator's own per-image parameters (ED-SAM's alpha, latent-prior's acceptance rate and bandwidth),
  summarised per source env, and CDGA-IG's pairs with no usable guide;
- a t-SNE map of real and synthetic features, coloured by env.

Every probe here is for analysis only: no training path reads the report. Features are cached per image
(``features.FeatureCache``).
"""
import json
import os
import sys

import numpy as np
import torch
from tqdm import tqdm

from domainbed_diffusion import catalogue
from domainbed_diffusion.data.filtering import dropped_files, filter_path
from domainbed_diffusion.data.layout import SyntheticDomains, synthetic_root
from domainbed_diffusion.data.index import SyntheticDataError, manifest_paths, open_index

from . import features as feature_extractors
from .sources import load_image, scan

NEAR_COPY_PERCENTILE = 1  # near copy: closer to its source than 99% of real images are to their nearest neighbour
FID_MIN_PER_DIM = 2  # FID's covariance needs well over D samples; below 2 x D the report says to read KID


def cosine_distances(a, b):
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return 1.0 - a @ b.T


class _Features(torch.nn.Module):
    """Feeds precomputed features to torchmetrics' FID/KID (their 'feature extractor' is then the identity)."""

    def __init__(self, dim):
        super().__init__()
        self.num_features = dim

    def forward(self, x):
        return x


def fid_kid(real, fake, seed=0, with_fid=True):
    """FID (None unless ``with_fid``) and KID (mean, std) of two feature sets, computed by torchmetrics."""
    import warnings

    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance
    warnings.filterwarnings("ignore", "Metric `Kernel Inception Distance` will save")  # bounded samples here
    dim = real.shape[1]
    fid = None
    if with_fid:
        metric = FrechetInceptionDistance(feature=_Features(dim))
        metric.update(torch.from_numpy(real).double(), real=True)
        metric.update(torch.from_numpy(fake).double(), real=False)
        fid = max(0.0, float(metric.compute()))
    torch.manual_seed(seed)
    kid = KernelInceptionDistance(feature=_Features(dim), subsets=50, subset_size=min(len(real), len(fake), 1000))
    kid.update(torch.from_numpy(real).double(), real=True)
    kid.update(torch.from_numpy(fake).double(), real=False)
    kid_mean, kid_std = kid.compute()
    return fid, float(kid_mean), float(kid_std)


def _probe(x, y):
    """A standardised logistic-regression probe (scikit-learn): analysis only, never used for training."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x, y)


def _sample_rows(groups, per_group, seed):
    """Up to ``per_group`` rows of each group (one integer key per row), chosen by seeded random priorities:
    vectorised, so millions of records are sampled in a few arrays of their length."""
    priority = np.random.RandomState(seed).random_sample(len(groups))
    order = np.lexsort((priority, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return np.sort(order[rank < per_group])


def codes(index, envs, classes, what, dataset_folder):
    """Per record of a method's index: its source env, guide env (-1: none) and class as positions in the
    dataset's ``envs`` and ``classes``; a record naming anything else is an error naming it."""
    env_code = np.array([envs.index(e) if e in envs else -1 for e in index.envs] or [0])
    class_code = np.array([classes.index(c) if c in classes else -1 for c in index.classes] or [0])
    source_env = env_code[np.asarray(index.source_env)]
    guided = np.asarray(index.guide_env) >= 0
    guide_env = np.where(guided, env_code[np.maximum(index.guide_env, 0)], -1)
    labels = class_code[np.asarray(index.class_)]
    unknown = (source_env < 0) | (labels < 0) | (guided & (guide_env < 0))
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise SyntheticDataError(f"{what} record {index.file(row)} names an env or class not in {dataset_folder}: "
                                 f"wrong --data_dir or --dataset?")
    return source_env, guide_env, labels


def sample(index, source_env, guide_env, labels, n_envs, n_classes, per_group, seed, keep=None):
    """The rows the report reads: up to ``per_group`` per (source env, guide env, class), among ``keep`` (a
    boolean mask) when given."""
    groups = (source_env * (n_envs + 1) + guide_env + 1) * n_classes + labels
    if keep is None:
        return _sample_rows(groups, per_group, seed)
    kept = np.flatnonzero(keep)
    return kept[_sample_rows(groups[kept], per_group, seed)]


def pairs_without_guide(index, guide_env, n_envs):
    """Per source image with any record: the other envs it has no record toward (CDGA-IG found no guide)."""
    pairs = np.unique(np.stack([np.asarray(index.source, dtype=np.int64), guide_env]), axis=1)
    sources = len(np.unique(pairs[0]))
    return dict(count=int(sources * (n_envs - 1) - pairs.shape[1]), of=int(sources * (n_envs - 1)),
                note="source images with a record toward some env but not all")


def _share(values, labels):
    return {label: float(np.mean(values == k)) if len(values) else float("nan") for k, label in enumerate(labels)}


class Report:
    """Real features and probes of one dataset, then one ``method`` entry per synthetic method."""

    def __init__(self, folder, extractor, cache, per_group=50, trial_seed=0, holdout_fraction=0.2, seed=0,
                 stream=None, synthetic_filter=None):
        self.folder, self.extractor, self.cache = folder, extractor, cache
        self.trial_seed, self.synthetic_filter = trial_seed, synthetic_filter
        self.per_group, self.seed, self.stream = per_group, seed, stream
        self.envs, self.classes = folder.env_names, folder.class_names
        validation = folder.validation([trial_seed], holdout_fraction)[trial_seed]
        groups = np.array([self.envs.index(i.env) * len(self.classes) + self.classes.index(i.class_name)
                           for i in folder.images], dtype=np.int64)
        self.real = [folder.images[k] for k in _sample_rows(groups, per_group, seed)]
        self.real_x = self.features([folder.path(i) for i in self.real], "real images")
        self.real_env = np.array([self.envs.index(i.env) for i in self.real])
        self.real_class = np.array([self.classes.index(i.class_name) for i in self.real])
        is_val = np.array([i.rel_path in validation[i.env] for i in self.real])
        self.label_probe = _probe(self.real_x[~is_val], self.real_class[~is_val])
        self.env_probe = _probe(self.real_x[~is_val], self.real_env[~is_val])
        val_x = self.real_x[is_val]
        self.reference = dict(
            label_accuracy=float(np.mean(self.label_probe.predict(val_x) == self.real_class[is_val])),
            env_accuracy=float(np.mean(self.env_probe.predict(val_x) == self.real_env[is_val])),
            label_accuracy_per_env={e: float(np.mean(self.label_probe.predict(val_x[self.real_env[is_val] == k])
                                                      == self.real_class[is_val][self.real_env[is_val] == k]))
                                    for k, e in enumerate(self.envs) if np.any(self.real_env[is_val] == k)},
            trained_on=int((~is_val).sum()), validated_on=int(is_val.sum()), trial_seed=trial_seed,
            holdout_fraction=holdout_fraction)
        self.near_copy = self._near_copy_threshold()
        self.real_diversity = self._diversity(self.real_x, self.real_env, self.real_class)

    def features(self, paths, what):
        bar = tqdm(total=len(paths), unit="img", desc=f"features of {what}", file=self.stream,
                   dynamic_ncols=True, mininterval=1.0)
        try:
            return self.cache.features(paths, self._load, bar)
        finally:
            bar.close()

    def _load(self, paths):
        arrays = []
        for path in paths:
            array, error = load_image(path, self.extractor.size)
            if error:
                raise ValueError(f"{path} cannot be read ({error}); fix or remove it, then rerun the report")
            arrays.append(array)
        return torch.from_numpy(np.stack(arrays))

    def _near_copy_threshold(self):
        """The NEAR_COPY_PERCENTILE-th percentile of each real image's distance to its nearest other real image
        of the same env and class."""
        nearest = []
        for e in range(len(self.envs)):
            for c in range(len(self.classes)):
                x = self.real_x[(self.real_env == e) & (self.real_class == c)]
                if len(x) > 1:
                    d = cosine_distances(x, x)
                    np.fill_diagonal(d, np.inf)
                    nearest.append(d.min(1))
        values = np.concatenate(nearest) if nearest else np.zeros(1)
        return float(max(np.percentile(values, NEAR_COPY_PERCENTILE), 1e-6))

    def _diversity(self, x, env, cls):
        """Mean pairwise cosine distance within each (env, class) with at least two images."""
        out = {}
        for e in np.unique(env):
            for c in np.unique(cls):
                members = x[(env == e) & (cls == c)]
                if len(members) > 1:
                    d = cosine_distances(members, members)
                    out[(int(e), int(c))] = float(d[np.triu_indices(len(members), 1)].mean())
        return out

    def method(self, domains, method):
        index = _open(domains, method)
        source_env, guide_env, labels = codes(index, self.envs, self.classes, f"{domains.dataset_root}: {method}",
                                              self.folder.root)
        trial_rows = self.trial_rows(index, f"{domains.dataset_root}: {method}")
        rows = sample(index, source_env, guide_env, labels, len(self.envs), len(self.classes), self.per_group,
                      self.seed, trial_rows)
        if self.synthetic_filter:  # the sampled images the filter kept for this report's trial
            dropped = dropped_files(filter_path(domains.dataset_root, method, self.synthetic_filter), self.trial_seed)
            rows = rows[np.asarray([index.file(int(r)) not in dropped for r in rows], dtype=bool)]
        x = self.features([os.path.join(domains.dataset_root, index.file(int(r))) for r in rows], method)
        src, guide, y = source_env[rows], guide_env[rows], labels[rows]
        target = np.where(guide >= 0, guide, src)
        predicted_class = self.label_probe.predict(x)
        predicted_env = self.env_probe.predict(x)
        copy = self._copies(index, rows, x)
        sets = {}
        for s, g in sorted({(int(a), int(b)) for a, b in zip(src, guide)}):
            member = (src == s) & (guide == g)
            sets[self.envs[s] + (f" -> {self.envs[g]}" if g >= 0 else "")] = self._set(
                x[member], y[member], s, g, predicted_class[member], predicted_env[member],
                copy[member] if copy is not None else None)
        held_out = np.array([p != s and p != g for p, s, g in zip(predicted_env, src, guide)])
        to_test_env = self._to_test_env(index, rows, src, guide, predicted_env)
        synthetic_diversity = self._diversity(x, target, y)
        ratios = [v / self.real_diversity[k] for k, v in synthetic_diversity.items()
                  if self.real_diversity.get(k, 0) > 0]
        out = dict(
            records=len(index), sampled=len(rows), drawn_for_trial=None if trial_rows is None else self.trial_seed,
            label_fidelity=float(np.mean(predicted_class == y)),
            to_target=float(np.mean(predicted_env == target)), to_source=float(np.mean(predicted_env == src)),
            to_held_out=float(np.mean(held_out)), to_test_env=float(np.mean(to_test_env)),
            label_fidelity_per_class={self.classes[c]: float(np.mean(predicted_class[y == c] == c))
                                      for c in np.unique(y)},
            diversity_vs_real=float(np.mean(ratios)) if ratios else None, sets=sets,
            diagnostics=self._diagnostics(index, method, source_env, guide_env))
        if copy is not None and np.isfinite(copy).any():
            finite = copy[np.isfinite(copy)]
            quantiles = map(float, np.percentile(finite, [10, 50, 90]))
            out.update(copy_distance=dict(zip(("p10", "median", "p90"), quantiles)),
                       near_copy_share=float(np.mean(finite < self.near_copy)))
        return out, (x, target, src)

    def trial_rows(self, index, what):
        """The rows of this report's trial where the images are drawn per trial (``--per_trial``), else None:
        one draw is what one run reads, and a filter's selection is per trial."""
        trials = index.param("trial_seed")
        if np.isnan(trials).all():
            return None
        keep = trials == self.trial_seed
        if not keep.any():
            drawn = sorted(int(t) for t in np.unique(trials[~np.isnan(trials)]))
            raise ValueError(f"{what} has images drawn per trial for trial seeds {drawn}, none for --trial_seed "
                             f"{self.trial_seed}: pass one of those")
        return keep

    def _to_test_env(self, index, rows, src, guide, predicted_env):
        """Per sampled image, the share of the runs using it whose test env it is attributed to: the env its model
        never saw where the model has one (one model per test env), else each env neither source nor guide."""
        unseen = []
        for seen in index.model_trained_on:
            missing = [e for e, env in enumerate(self.envs) if seen is not None and env not in seen]
            unseen.append(missing[0] if len(missing) == 1 else -1)
        held = np.asarray(unseen or [-1])[np.asarray(index.model)[rows]]
        envs = np.arange(len(self.envs))
        src, guide, predicted_env = (np.asarray(a).reshape(-1, 1) for a in (src, guide, predicted_env))
        tests = np.where(held[:, None] >= 0, envs == held[:, None], (envs != src) & (envs != guide))
        count = tests.sum(1)
        hits = (tests & (envs == predicted_env)).sum(1)
        return np.divide(hits, count, out=np.full(len(held), np.nan), where=count > 0)

    def _copies(self, index, rows, x):
        """Each sampled image's feature distance to its source image (NaN where it has none)."""
        codes = np.asarray(index.source)[rows]
        if not (codes >= 0).any():
            return None
        paths = {int(c): index.path(int(c)) for c in np.unique(codes[codes >= 0])}
        order = sorted(paths)
        source_x = self.features([os.path.join(self.folder.root, paths[c]) for c in order], "source images")
        position = np.full(int(codes.max()) + 1, 0)
        position[order] = np.arange(len(order))
        has = codes >= 0
        a, b = x[has], source_x[position[codes[has]]]
        out = np.full(len(rows), np.nan)
        out[has] = 1.0 - (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
        return out

    def _set(self, x, y, s, g, predicted_class, predicted_env, copy):
        entry = dict(n=len(x), label_fidelity=float(np.mean(predicted_class == y)),
                     attribution=_share(predicted_env, self.envs),
                     to_held_out=float(np.mean([p not in (s, g) for p in predicted_env])))
        entry["fid"], entry["kid"] = {}, {}
        dim = self.extractor.dim
        for e, env in enumerate(self.envs):
            real = self.real_x[self.real_env == e]
            if len(x) >= 2 and len(real) >= 2:
                # below D samples a covariance is singular and FID meaningless (and costly at D = 2048): KID only
                fid, kid, kid_std = fid_kid(real, x, self.seed, with_fid=min(len(x), len(real)) >= dim)
                entry["kid"][env] = dict(mean=kid, std=kid_std)
                if fid is not None:
                    entry["fid"][env] = fid
        if len(x) < FID_MIN_PER_DIM * dim:
            entry["fid_warning"] = (f"{len(x)} images for {dim}-d features: FID is biased under "
                                    f"{FID_MIN_PER_DIM * dim} and not computed under {dim}; compare KID, or "
                                    f"raise --per_group")
        if copy is not None and np.isfinite(copy).any():
            entry["near_copy_share"] = float(np.mean(copy[np.isfinite(copy)] < self.near_copy))
        return entry

    def _diagnostics(self, index, method, source_env, guide_env):
        """The generator's per-image parameters, per source env (mean, min, max); CDGA-IG's lost pairs."""
        out = {}
        for name in sorted(index.params):
            column = np.asarray(index.param(name))
            per_env = {}
            for e, env in enumerate(self.envs):
                values = column[(source_env == e) & np.isfinite(column)]
                if len(values):
                    per_env[env] = dict(mean=float(values.mean()), min=float(values.min()), max=float(values.max()))
            if per_env:
                out[name] = per_env
        if (np.asarray(index.guide_env) >= 0).any():
            out["pairs_without_guide"] = pairs_without_guide(index, guide_env, len(self.envs))
        return out


def _open(domains, method):
    if not manifest_paths(domains.dataset_root, method):
        known = sorted(set(catalogue.methods(controls=True)))
        if method not in known:
            raise ValueError(f"report: unknown method {method!r}; known are {', '.join(known)}")
        domains.records(method, check_files=False)  # raises the right "no manifest" error
    try:
        return open_index(domains.dataset_root, method, build_if_missing=False)
    except SyntheticDataError as error:
        raise SyntheticDataError(f"report: {error}") from None


def tsne_map(real_x, real_env, parts, envs, path, seed=0, per_env=200, per_method=300, extractor=""):
    """One t-SNE (scikit-learn) of real and synthetic features, drawn with matplotlib: one panel per method, real
    images as dots and the method's as crosses, coloured by env (synthetic: its target env)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE
    rng = np.random.RandomState(seed)
    take = lambda n, k: np.sort(rng.permutation(n)[:k])  # noqa: E731
    real_rows = np.concatenate([np.flatnonzero(real_env == e)[take((real_env == e).sum(), per_env)]
                                for e in range(len(envs))])
    chosen = {m: take(len(x), per_method) for m, (x, _, _) in parts.items()}
    points = np.concatenate([real_x[real_rows]] + [parts[m][0][chosen[m]] for m in parts])
    if len(points) < 5:
        return None
    xy = TSNE(n_components=2, init="pca", random_state=seed,
              perplexity=min(30.0, (len(points) - 1) / 3)).fit_transform(points.astype(np.float64))
    colours = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, max(1, len(parts)), figsize=(3.6 * max(1, len(parts)) + 1.5, 4.2), squeeze=False)
    real_xy, offset = xy[:len(real_rows)], len(real_rows)
    for ax, method in zip(axes[0], parts):
        for e in range(len(envs)):
            mine = real_env[real_rows] == e
            ax.scatter(real_xy[mine, 0], real_xy[mine, 1], s=4, color=colours(e % 10), alpha=0.35)
        n = len(chosen[method])
        targets = parts[method][1][chosen[method]]
        for e in range(len(envs)):
            mine = targets == e
            ax.scatter(xy[offset:offset + n][mine, 0], xy[offset:offset + n][mine, 1], s=14, marker="x",
                       color=colours(e % 10), linewidths=0.8)
        offset += n
        ax.set_title(f"{method}: x its images, . real", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [plt.Line2D([], [], marker="o", ls="", color=colours(e % 10), label=env) for e, env in enumerate(envs)]
    fig.legend(handles=handles, loc="center right", fontsize=8, title="env (x: target env)", title_fontsize=8)
    fig.suptitle(f"t-SNE of {extractor or 'the report'}'s features of real and synthetic images (axes have no "
                 "units: t-SNE keeps neighbourhoods, not distances)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.4 / fig.get_size_inches()[0], 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summary_text(result):
    ref = result["reference"]
    lines = [f"Synthetic-domain report: {result['dataset']}, extractor {result['extractor']} "
             f"({result['per_group']} images at most per source env, target env and class; analysis only)",
             f"reference: label probe {ref['label_accuracy']:.1%} and env probe {ref['env_accuracy']:.1%} on "
             f"{ref['validated_on']} real validation images (trained on {ref['trained_on']}); near copy: feature "
             f"distance to its source under {result['near_copy_threshold']:.4f}",
             f"{'method':<14}{'images':>8}{'label':>8}{'target':>8}{'source':>8}{'held out':>10}{'test env':>10}"
             f"{'FID tgt':>9}{'copies':>8}{'diversity':>11}"]
    for method, m in result["methods"].items():
        fids = [s["fid"].get(name.split(" -> ")[-1]) for name, s in m["sets"].items()]
        fids = [f for f in fids if f is not None]
        fid = f"{np.median(fids):>9.2f}" if fids else f"{'-':>9}"
        lines.append(f"{method:<14}{m['sampled']:>8}{m['label_fidelity']:>8.1%}{m['to_target']:>8.1%}"
                     f"{m['to_source']:>8.1%}{m['to_held_out']:>10.1%}{m['to_test_env']:>10.1%}{fid}"
                     + (f"{m['near_copy_share']:>8.1%}" if "near_copy_share" in m else f"{'-':>8}") +
                     f"{(m['diversity_vs_real'] or float('nan')):>11.2f}")
    lines.append("label: share given its intended class; target/source/held out: share attributed to the env the "
                 "method aimed at, to its source env, to envs neither source nor guide; test env: to the test env "
                 "of the runs that use the image (the style its model never saw, with one model per test env), "
                 "averaged over those runs; FID tgt: median FID to the target env; copies: near-copy share; diversity: "
                 "within-class spread relative to real.")
    dim = result["feature_dim"]
    no_fid = [m for m, v in result["methods"].items()
              if not any(s["fid"].get(n.split(" -> ")[-1]) is not None for n, s in v["sets"].items())]
    if no_fid:
        lines.append(f"FID tgt '-' ({', '.join(no_fid)}): every set has fewer images than the features' {dim} "
                     "dimensions, where FID's covariance is singular; read KID in report.json, or raise --per_group.")
    per_trial = [m for m, v in result["methods"].items() if v.get("drawn_for_trial") is not None]
    if per_trial:
        lines.append(f"images drawn per trial ({', '.join(per_trial)}): only trial seed {ref['trial_seed']}'s draw "
                     "is read, the one that trial's runs train on (--trial_seed picks another).")
    if any("near_copy_share" not in v for v in result["methods"].values()):
        lines.append("copies '-': the method's images have no single source image to be a copy of.")
    lines.append("map.png: a t-SNE of the same features, one panel per method (real images as dots, the method's "
                 "as crosses, coloured by env; t-SNE keeps neighbourhoods, not distances: its axes have no units).")
    return "\n".join(lines)


REPORT_VERSION = 2  # part of the inputs' fingerprint: raise it when the report's arithmetic changes


def inputs_fingerprint(args, folder, domains, methods, extractor):
    """What a report depends on: its options, the extractor, the real images and each method's manifests (name,
    size, modification time). A rerun whose fingerprint equals the saved report's reuses it."""
    import hashlib
    digest = hashlib.sha256()
    options = dict(version=REPORT_VERSION, dataset=args.dataset, methods=methods, extractor=extractor.name,
                   per_group=args.per_group, trial_seed=args.trial_seed, holdout_fraction=args.holdout_fraction,
                   seed=args.seed, no_map=args.no_map, synthetic_filter=getattr(args, "synthetic_filter", None))
    digest.update(json.dumps(options, sort_keys=True).encode())
    digest.update("\n".join(map(str, folder.images)).encode())
    for method in methods:
        files = sorted(manifest_paths(domains.dataset_root, method))
        if options["synthetic_filter"]:
            files.append(filter_path(domains.dataset_root, method, options["synthetic_filter"]))
        for path in files:
            stat = os.stat(path)
            digest.update(f"{os.path.basename(path)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _reusable(out, fingerprint, no_map):
    """The saved report of ``out`` when it was made from the same inputs, else None."""
    try:
        with open(os.path.join(out, "report.json")) as f:
            saved = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    needed = ["summary.txt"] + ([] if no_map else ["map.png"])
    if saved.get("inputs") != fingerprint or not all(os.path.exists(os.path.join(out, n)) for n in needed):
        return None
    return saved


def run(args, stream=None):
    stream = stream or sys.stdout
    folder = scan(args.data_dir, args.dataset, args.dataset_dir)
    root = synthetic_root(args.synthetic_root, args.data_dir)
    domains = SyntheticDomains(root, args.dataset)
    if not os.path.isdir(domains.dataset_root):
        raise FileNotFoundError(f"report: {domains.dataset_root} does not exist: generate first, or give "
                                f"--synthetic_root")
    methods = args.methods or [m for m in catalogue.methods() if manifest_paths(domains.dataset_root, m)]
    if not methods:
        raise SyntheticDataError(f"report: {domains.dataset_root} holds no manifest of "
                                 f"{', '.join(catalogue.methods())}: generate first")
    for method in methods:
        _open(domains, method)  # every method's error before any feature is computed
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = feature_extractors.for_dataset(args.dataset, args.extractor, args.extractor_weights, device,
                                               args.random_weights)
    out = args.output or os.path.join(root, args.dataset, "report")
    os.makedirs(out, exist_ok=True)
    fingerprint = inputs_fingerprint(args, folder, domains, methods, extractor)
    saved = _reusable(out, fingerprint, args.no_map)
    if saved is not None:
        print(summary_text(saved), file=stream)
        print(f"report unchanged: its inputs (options, real images, manifests) are those of {out}/report.json, "
              "which is reused (delete it to recompute)", file=stream)
        return saved
    cache = feature_extractors.FeatureCache(args.cache_dir or os.path.join(out, "feature_cache"), extractor)
    report = Report(folder, extractor, cache, args.per_group, args.trial_seed, args.holdout_fraction, args.seed,
                    stream, args.synthetic_filter)
    result = dict(dataset=args.dataset, extractor=extractor.name, feature_dim=extractor.dim, envs=folder.env_names,
                  per_group=args.per_group, synthetic_filter=args.synthetic_filter,
                  near_copy_threshold=report.near_copy, reference=report.reference,
                  analysis_only="every classifier here is a probe for this report; no training path reads it",
                  inputs=fingerprint, methods={})
    parts = {}
    for method in methods:
        result["methods"][method], parts[method] = report.method(domains, method)
    result["features_computed"] = cache.computed
    text = summary_text(result)
    with open(os.path.join(out, "summary.txt"), "w") as f:
        f.write(text + "\n")
    if not args.no_map:
        tsne_map(report.real_x, report.real_env, parts, folder.env_names, os.path.join(out, "map.png"), args.seed,
                 extractor=extractor.name)
    with open(os.path.join(out, "report.json"), "w") as f:  # last: its fingerprint vouches for the other files
        json.dump(result, f, indent=1)
    print(text, file=stream)
    print(f"wrote {out}/report.json, summary.txt" + ("" if args.no_map else " and map.png") +
          f" ({cache.computed} images' features computed, the rest from the cache)", file=stream)
    return result
