"""``python -m offline_generation filter``: a classifier fitted on a run's own training data scores every synthetic
image that run would read, and the images it does not recognise as their label are dropped from a named filtered
selection (``domainbed_diffusion.data.filtering``; nothing is deleted).

Per (test env, trial): a standardised logistic-regression probe (scikit-learn) on the report's image features of
the real images of the other envs' training splits of that trial (never a validation or test-env image), then the
images of each method that a run with that test env and trial reads (the reader's own selection, leak rules and
per-test-env generators included). Criteria, any combination (ALIA filters on the classifier's prediction, FDS on
its confidence): ``--criterion disagree`` drops an image whose predicted label is not its record's;
``--min_confidence P`` one whose probability of its own label is below P; ``--max_entropy H`` one whose predictive
entropy (nats) is above H.
"""
import json
import math
import os
import sys

import numpy as np
import torch

from domainbed_diffusion import catalogue
from domainbed_diffusion.data import splits
from domainbed_diffusion.data.filtering import filter_path
from domainbed_diffusion.data.layout import SyntheticDomains, synthetic_root

from . import features as feature_extractors
from .report import _probe
from .sources import load_image, scan


def probe_data(folder, test_env, validation, per_class):
    """The real images a (test env, trial)'s probe fits on: every other env's training split, at most
    ``per_class`` per (env, class) in name order."""
    picked = []
    for (env, _), images in sorted(folder.by_env_class.items()):
        if env != test_env:
            picked += [i for i in images if i.rel_path not in validation[env]][:per_class]
    return picked


def decide(probabilities, classes, labels, criterion, min_confidence, max_entropy, names):
    """Per image: ``(reason or None, predicted class, confidence in its label, entropy)``; ``names`` of the
    class indices, for the reasons."""
    column = {c: k for k, c in enumerate(classes)}
    out = []
    for p, label in zip(probabilities, labels):
        confidence = float(p[column[label]]) if label in column else 0.0
        predicted = int(classes[int(np.argmax(p))])
        entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
        reason = None
        if criterion == "disagree" and predicted != label:
            reason = f"predicted {names[predicted]}, labelled {names[label]}"
        elif min_confidence is not None and confidence < min_confidence:
            reason = f"confidence {confidence:.3f} < {min_confidence}"
        elif max_entropy is not None and entropy > max_entropy:
            reason = f"entropy {entropy:.3f} > {max_entropy}"
        out.append((reason, predicted, confidence, entropy))
    return out


def run(args, extractor=None, stream=None):
    stream = stream or sys.stdout
    folder = scan(args.data_dir, args.dataset, args.dataset_dir)
    domains = SyntheticDomains(synthetic_root(args.synthetic_root, args.data_dir), args.dataset)
    unknown = [e for e in args.test_envs or [] if e not in folder.env_names]
    if unknown:
        raise ValueError(f"--test_envs {unknown}: not envs of {args.dataset} ({', '.join(folder.env_names)})")
    if args.criterion != "disagree" and args.min_confidence is None and args.max_entropy is None:
        raise ValueError("filter: give --criterion disagree, --min_confidence P or --max_entropy H")
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    extractor = extractor or feature_extractors.for_dataset(args.dataset, args.extractor, args.extractor_weights,
                                                            device, args.random_weights)
    cache = feature_extractors.FeatureCache(args.cache_dir or os.path.join(domains.dataset_root, "filter_cache"),
                                            extractor)

    def load(paths):
        return torch.from_numpy(np.stack([load_image(p, extractor.size)[0] for p in paths]))

    validation = folder.validation(args.trial_seeds, args.holdout_fraction)
    for method in args.methods:
        spec = catalogue.spec(method)
        lines, totals = [], [0, 0]
        for test_env in args.test_envs or folder.env_names:
            k = folder.env_names.index(test_env)
            for trial in args.trial_seeds:
                val = validation[trial]
                real = probe_data(folder, test_env, val, args.per_class)
                probe = _probe(cache.features([folder.path(i) for i in real], load),
                               [folder.class_names.index(i.class_name) for i in real])
                training = {e: {i.rel_path for i in folder.images if i.env == name and i.rel_path not in val[name]}
                            for e, name in enumerate(folder.env_names) if e != k}
                digests = {folder.env_names[e]: splits.digest(val[folder.env_names[e]]) for e in training}
                selected = domains.select(method, folder.env_names, folder.class_names, [k],
                                          training_sources=training, per_split=spec.per_split,
                                          validation_digests={folder.env_names.index(n): d
                                                              for n, d in digests.items()})
                rows = [(s, j) for s in selected.values() for j in range(len(s))]
                files = [s.index.file(int(s.rows[j])) for s, j in rows]
                labels = [int(s.labels[j]) for s, j in rows]
                verdicts = []
                if rows:
                    scores = probe.predict_proba(cache.features([os.path.join(domains.dataset_root, f)
                                                                 for f in files], load))
                    verdicts = decide(scores, list(probe.classes_), labels, args.criterion, args.min_confidence,
                                      args.max_entropy, folder.class_names)
                dropped = [(f, y, v) for f, y, v in zip(files, labels, verdicts) if v[0]]
                lines.append(dict(header=True, test_env=test_env, trial_seed=trial,
                                  holdout_fraction=args.holdout_fraction,
                                  validation_digests={e: str(d) for e, d in digests.items()},
                                  images=len(files), dropped=len(dropped), probe_images=len(real),
                                  criterion=args.criterion, min_confidence=args.min_confidence,
                                  max_entropy=args.max_entropy, extractor=extractor.name))
                lines += [dict(test_env=test_env, validation_digests={e: str(d) for e, d in digests.items()},
                               file=f, label=folder.class_names[y], predicted=folder.class_names[v[1]],
                               confidence=round(v[2], 4), entropy=round(v[3], 4), reason=v[0])
                          for f, y, v in dropped]
                totals[0] += len(files)
                totals[1] += len(dropped)
        path = filter_path(domains.dataset_root, method, args.name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, sort_keys=True) + "\n")
        os.replace(path + ".tmp", path)  # whole or not at all: a reader never sees half a filter
        share = totals[1] / totals[0] if totals[0] else math.nan
        print(f"{method}: dropped {totals[1]} of {totals[0]} (test env, trial) image readings ({share:.1%}); "
              f"wrote {path}", file=stream)
    return 0
