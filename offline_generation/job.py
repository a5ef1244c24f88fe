"""The typed generation job: what one generation command asks for, built once by the command line or the pipeline
API, saved as JSON for the workers of ``--workers``; and each method's settings saved beside its manifests."""
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional, Tuple

from domainbed_diffusion import catalogue
from domainbed_diffusion.benchmark.shipped import EMBEDDED
from domainbed_diffusion.generation.base import config_dict


@dataclass(frozen=True)
class GenerationJob:
    """What one generation command asks for, typed: built once from the command line (``cli``) or by the
    pipeline API, never an untyped namespace. ``settings`` holds, per method, the settings given for it (its own
    options and the sampling settings every method shares); the method's spec fills in the rest."""
    dataset: str
    data_dir: Optional[str]
    methods: Tuple[str, ...]
    synthetic_root: str  # resolved: ``layout.synthetic_root``
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    dataset_dir: Optional[str] = None
    envs: Optional[Tuple[str, ...]] = None
    max_per_class: Optional[int] = None
    model: str = EMBEDDED
    device: str = "auto"
    dtype: str = "auto"
    channels_last: bool = False
    compile: bool = False
    batch_size: int = 32
    num_shards: Optional[int] = None
    shard_id: Optional[int] = None
    workers: Optional[int] = None
    dry_run: bool = False

    def config(self, method, embedded, model_tag=None):
        """The typed, frozen settings of one method for this job (``MethodSpec.config``)."""
        return catalogue.spec(method).config(embedded, model_tag=model_tag, **self.settings.get(method, {}))

    def save(self, path):
        """The job as JSON (what a worker of ``--workers`` reads)."""
        with open(path, "w") as f:
            json.dump(asdict(self), f, indent=1, sort_keys=True)
        return path

    @classmethod
    def load(cls, path):
        with open(path) as f:
            values = json.load(f)
        values["methods"] = tuple(values["methods"])
        values["envs"] = tuple(values["envs"]) if values.get("envs") else None
        return cls(**values)


def save_config(out_root, cfg):
    """A method's settings as a JSON file beside its manifests, named by their digest (a rerun with the same
    settings writes the same file; other settings a new one)."""
    text = json.dumps(config_dict(cfg), sort_keys=True, indent=1)
    path = os.path.join(out_root, f"config.{cfg.method}.{hashlib.sha256(text.encode()).hexdigest()[:12]}.json")
    if not os.path.exists(path):
        os.makedirs(out_root, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    return path
