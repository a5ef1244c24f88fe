"""DomainFusion's pixel-level half (Sec. 3.3): the autoregressively refreshed synthetic set.

The set holds one synthetic image per training image (1:1 in size), initialised from that training image and
refreshed in place: a refresh makes N img2img candidates of the image's *current* synthetic version (class
prompt) and keeps one, chosen by the sampling strategy (``methods.candidates``). So each synthetic image evolves
over training. Which images a refresh takes: those drawn at that step (``refresh_order="drawn"``: the paper's
Fig. 3, where the sampled image updates the x of the step), or the next ones of a seeded cycle through the whole
set (``"cycle"``), sized so that the whole set is regenerated every ``turnover_steps`` steps. Originals are read from the dataset when needed; refreshed images go, as uint8 at the generation
size, to a spill file (``SpillStore``), so the pool's memory is 4 bytes per training image whatever the number of
refreshes (a DomainNet run refreshes tens of thousands of 300 KB images).
"""
import contextlib
import os
import sys
import tempfile

import numpy as np

import torch
from PIL import Image
from torchvision.transforms import functional as TF

from ..data.seeding import seed_hash
from . import candidates


class SpillStore:
    """Fixed-size uint8 images in a file, slot ``i`` at byte ``i * nbytes`` (a sparse file: only written slots
    take disk), read back with ``pread``: nothing stays in the process's memory but a version count per slot.

    The file is unlinked as soon as it is open, so it never outlives the run, however the run ends.
    """

    def __init__(self, n, shape, directory=None):
        self.shape = tuple(shape)
        self.nbytes = int(np.prod(self.shape))
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix="domainfusion-pool-", suffix=".u8", dir=directory)
        self.directory = os.path.dirname(path)
        os.unlink(path)
        self.fd = fd
        self.versions = np.zeros(n, dtype=np.int32)

    def __len__(self):
        return len(self.versions)

    def __contains__(self, i):
        return bool(self.versions[i])

    def get(self, i):
        data = os.pread(self.fd, self.nbytes, i * self.nbytes)
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(self.shape)

    def put(self, i, image):
        data = image.detach().cpu().contiguous().numpy().tobytes()
        if len(data) != self.nbytes:
            raise ValueError(f"image of {len(data)} bytes for a slot of {self.nbytes}")
        os.pwrite(self.fd, data, i * self.nbytes)
        self.versions[i] += 1

    def refreshed(self):
        return np.flatnonzero(self.versions).tolist()

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self):
        self.close()


class SyntheticPool:
    """One entry per training image of every training env, in env order; refreshed images in a ``SpillStore``
    under ``spill_dir`` (the run's output folder when there is one, else the temporary folder)."""

    def __init__(self, ctx, size, mapping, spill_dir=None):
        self.ctx, self.size, self.mapping = ctx, size, mapping
        self.entries, self.ranges, labels = [], {}, []
        for env_index in ctx.train_envs:
            env = ctx.dataset[env_index]
            keys = ctx.training_keys(env_index)
            start = len(self.entries)
            self.entries += [(env_index, k) for k in keys]
            self.ranges[env_index] = (start, len(self.entries))
            labels += [int(env.samples[k][1]) if hasattr(env, "samples") else int(env[k][1]) for k in keys]
        self.labels = torch.tensor(labels)
        self.store = SpillStore(len(self.entries), (3, size, size), spill_dir or ctx.output_dir)

    def __len__(self):
        return len(self.entries)

    def cycle(self, seed):
        """Start the seeded cycle of ``next_to_refresh`` through every entry."""
        self._order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        self._position = 0

    def next_to_refresh(self, n):
        """The next ``n`` entries of the cycle (wrapping around): after ``len(self)`` of them, every entry."""
        picked = [self._order[(self._position + k) % len(self)] for k in range(min(n, len(self)))]
        self._position = (self._position + len(picked)) % len(self)
        return picked

    def check_disk(self, refreshes, stream=None):
        """Warn when the spill file's folder has less free disk than ``refreshes`` refreshed images can take (a
        sparse file: only written slots use disk; on DomainNet at 320 px that is up to tens of GB per run)."""
        import shutil
        need = min(len(self), int(refreshes)) * self.store.nbytes
        folder = self.store.directory
        free = shutil.disk_usage(folder).free
        if free < need:
            print(f"WARNING: DomainFusion's refreshed images need up to {need / 2 ** 30:.1f} GiB in {folder}, which "
                  f"has {free / 2 ** 30:.1f} GiB free: the run will fail when the disk fills. Point the hparam "
                  f"spill_dir at a folder with room (a local disk: the file is read and written every step).",
                  file=stream or sys.stderr, flush=True)
        return need

    def refreshed_fraction(self):
        """The share of the set regenerated at least once."""
        return float((self.store.versions > 0).mean()) if len(self) else 0.0

    def sample(self, env_index, n, generator):
        start, end = self.ranges[env_index]
        return (torch.randint(start, end, (n,), generator=generator)).tolist()

    def _original(self, index):
        env_index, key = self.entries[index]
        env = self.ctx.dataset[env_index]
        if hasattr(env, "samples"):
            image = env.loader(env.samples[key][0]).convert("RGB").resize((self.size, self.size), Image.BICUBIC)
            return TF.pil_to_tensor(image)
        x = torch.as_tensor(env[key][0]).float()[None]
        return (self.mapping.to_pixels(x, (self.size, self.size))[0] * 255 + 0.5).to(torch.uint8)

    def version(self, index):
        """How many times the image at ``index`` was refreshed."""
        return int(self.store.versions[index])

    def uint8(self, index):
        return self.store.get(index) if index in self.store else self._original(index)

    def images(self, indices):
        """Current synthetic images, uint8 (3, size, size) each: originals are read from disk here."""
        return [self.uint8(i) for i in indices]

    def write(self, indices, pixels):
        data = (pixels.detach().float().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        for i, image in zip(indices, data):
            self.store.put(i, image)

    def inputs(self, indices, images=None):
        """Network inputs of the current images (``images(indices)`` unless given), through each env's own
        transform (its augmentations)."""
        out = []
        for i, image in zip(indices, images if images is not None else self.images(indices)):
            env = self.ctx.dataset[self.entries[i][0]]
            transform = getattr(env, "transform", None)
            if hasattr(env, "samples") and transform is not None:
                out.append(transform(TF.to_pil_image(image)))
            else:
                out.append(self.mapping.to_inputs(image[None].float() / 255)[0])
        return torch.stack(out), self.labels[indices]


@contextlib.contextmanager
def evaluating(module):
    """Evaluation mode for a scoring pass (no BatchNorm statistics updates), restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@torch.no_grad()
def refresh(pool, indices, images, model, network, featurizer, classifier, prompts, hparams, base_seed):
    """Replace the pool's images at ``indices`` (current versions ``images``) by one of N img2img candidates, at
    most ``diffusion_chunk`` images at a time (their candidates and decoded pixels bound the memory; each image's
    seeds are its own, so the chunks change no image)."""
    size = int(hparams.get("diffusion_chunk") or len(indices)) or 1
    for s in range(0, len(indices), size):
        _refresh(pool, indices[s:s + size], images[s:s + size], model, network, featurizer, classifier, prompts,
                 hparams, base_seed)
    return len(indices)


def _refresh(pool, indices, images, model, network, featurizer, classifier, prompts, hparams, base_seed):
    device = next(network.parameters()).device
    current = (torch.stack(images).float() / 255).to(model.device)
    labels = [int(pool.labels[i]) for i in indices]  # host-side: the prompts are chosen on the host
    n = int(hparams["n_candidates"])
    z0 = model.encode_images(current)
    seeds = [seed_hash(base_seed, i, pool.version(i), k) for i in indices for k in range(n)]
    from ..diffusion import generators_from_seeds
    cand = model.img2img(z0.repeat_interleave(n, 0), [prompts[y] for y in labels for _ in range(n)],
                         hparams["img2img_strength"], hparams["img2img_steps"], hparams["guidance_scale"],
                         generators_from_seeds(seeds))
    cand = cand.view(len(indices), n, *z0.shape[1:])
    if n > 1 and hparams["sampling_strategy"]:
        style = candidates.select_style(cand, z0)
        cand_pixels = model.decode_latents(cand.flatten(0, 1))
        with evaluating(network):
            f_cand = featurizer(pool.mapping.to_inputs(cand_pixels.to(device)))
            targets = torch.tensor([y for y in labels for _ in range(n)], device=device)
            p_cand = classifier(f_cand).softmax(1)[torch.arange(len(f_cand), device=device), targets]
            f_src = featurizer(pool.mapping.to_inputs(current.float().to(device)))
        content = candidates.select_content(f_cand.view(len(indices), n, -1), f_src, p_cand.view(len(indices), n),
                                            hparams["content_lambda"])
        new = candidates.combine(cand, style.to(cand.device), content.to(cand.device))
    else:
        new = cand[:, 0]  # one candidate, or the strategy off: the first candidate as it is
    pool.write(indices, model.decode_latents(new))
