"""One diffusion code path: Stable Diffusion's components behind the few operations the methods need.

Every operation is batched and seeded per image: noise for image ``i`` comes from its own ``torch.Generator``
(drawn on the CPU, then moved), so an image's result does not depend on which batch it was in. Images go in
and out as float tensors in [0, 1], shape (B, 3, H, W); latents are scaled by the VAE's scaling factor.
"""
from types import SimpleNamespace

import torch

from ..benchmark.shipped import EMBEDDED
from . import loading


def per_image_noise(generators, shape, device, dtype):
    """Standard normal noise, row ``i`` drawn from ``generators[i]`` on the CPU (device-independent)."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in generators]).to(
        device=device, dtype=dtype)


def generators_from_seeds(seeds):
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


class FixedBatchUNet:
    """A ``torch.compile``d UNet that is only ever called on ``size`` rows: longer batches run in slices, shorter
    ones are padded (by repeating their last row) and sliced back, and the timestep is always one per row. One
    static graph then serves every call: no recompilation for a short last batch, guidance's doubled batch or
    GSD's per-sample timesteps. Attributes (``config``, ``device``, ``dtype``, ``to``...) are the UNet's."""

    def __init__(self, unet, size, mode=None):
        self.module, self.size = unet, int(size)
        weight = next(p for p in unet.parameters() if p.dim() == 4)
        self.memory_format = torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last) and \
            not weight.is_contiguous() else torch.contiguous_format
        self.compiled = torch.compile(unet, fullgraph=True, dynamic=False, mode=mode)

    def __getattr__(self, name):
        return getattr(self.module, name)

    def __call__(self, sample, timestep, encoder_hidden_states, **kwargs):
        n = len(sample)
        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(n)
        outs = []
        for start in range(0, n, self.size):
            rows = slice(start, min(start + self.size, n))
            x, t, c = sample[rows], timestep[rows], encoder_hidden_states[rows]
            short = self.size - len(x)
            if short:
                x, t, c = (torch.cat([v, v[-1:].expand(short, *v.shape[1:])]) for v in (x, t, c))
            # one memory layout for every call: dynamo guards on strides
            x = x.contiguous(memory_format=self.memory_format)
            out = self.compiled(x, t.contiguous(), encoder_hidden_states=c.contiguous(), **kwargs).sample
            # copied out: under CUDA graphs (max-autotune) every call returns the same static buffer, so the next
            # slice's call would overwrite this one's (guidance's unconditional half by its conditional half)
            outs.append(out[:self.size - short].clone())
        return SimpleNamespace(sample=torch.cat(outs))


class LatentDiffusion:
    """VAE, UNet, CLIP text encoder, tokenizer and DDIM schedulers of one Stable Diffusion checkpoint."""

    def __init__(self, vae, unet, text_encoder, tokenizer, scheduler, model_id="", vae_batch_size=64):
        from diffusers import DDIMInverseScheduler, DDIMScheduler
        self.vae, self.unet, self.text_encoder, self.tokenizer = vae, unet, text_encoder, tokenizer
        self.scheduler = DDIMScheduler.from_config(scheduler.config)
        self.inverse_scheduler = DDIMInverseScheduler.from_config(scheduler.config)
        self.model_id = model_id
        self.vae_batch_size = vae_batch_size
        self._prompt_cache = {}
        self._vae_float32 = None
        for module in (vae, unet, text_encoder):
            module.requires_grad_(False)
            module.eval()

    @classmethod
    def from_pretrained(cls, name_or_path=EMBEDDED, device=None, dtype="auto", **kwargs):
        """Load from ``embedded``, a local folder or a cached Hugging Face id; never downloads."""
        folder = loading.resolve_model(name_or_path)
        device = loading.resolve_device(device)
        dtype = loading.resolve_dtype(dtype, device)
        model = cls(**loading.load_components(folder, dtype), model_id=loading.model_id(folder), **kwargs)
        return model.to(device)

    # -- placement -------------------------------------------------------------------------------------
    @property
    def device(self):
        return self.unet.device

    @property
    def dtype(self):
        return self.unet.dtype

    def to(self, device=None, dtype=None):
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(**{k: v for k, v in dict(device=device, dtype=dtype).items() if v is not None})
        self._prompt_cache = {}
        self._vae_float32 = None
        return self

    def optimize(self, channels_last=True, compile=False, batch_size=None, mode=None):
        """Speed-ups that keep results: channels-last memory and, optionally, ``torch.compile`` of the UNet.

        The compiled UNet always sees ``batch_size`` rows (``FixedBatchUNet`` pads and slices), so a run of
        batches of any size, a short last one included, reuses one graph. ``mode`` defaults to max-autotune on
        CUDA and inductor's default elsewhere.
        """
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        if compile and not isinstance(self.unet, FixedBatchUNet):
            mode = mode or ("max-autotune" if self.device.type == "cuda" else None)
            self.unet = FixedBatchUNet(self.unet, batch_size or 8, mode)
        return self

    def vae_for_derivatives(self):
        """The VAE that GSD differentiates: the model's own, except in float16, where a float32 copy is used
        (made once): GroupNorm's derivative sums over whole groups and overflows float16's range to NaN."""
        if self.vae.dtype != torch.float16:
            return self.vae
        if self._vae_float32 is None:
            import copy
            self._vae_float32 = copy.deepcopy(self.vae).float()
        return self._vae_float32

    @property
    def vae_scale_factor(self):
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scale(self):
        return self.vae.config.scaling_factor

    # -- text ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompts(self, prompts):
        """CLIP text embeddings (B, L, D) of a list of prompts; each distinct prompt is encoded once."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        if missing:
            tokens = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                    truncation=True, return_tensors="pt")
            embeds = self.text_encoder(tokens.input_ids.to(self.text_encoder.device))[0].to(self.dtype)
            self._prompt_cache.update(zip(missing, embeds))
        return torch.stack([self._prompt_cache[p] for p in prompts])

    # -- images <-> latents ----------------------------------------------------------------------------
    def encode(self, images):
        """Latents of images in [0, 1]: the posterior mean, scaled (differentiable; batch it yourself)."""
        x = images.to(device=self.vae.device, dtype=self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mean * self.latent_scale

    @torch.no_grad()
    def encode_images(self, images):
        """``encode`` in slices of ``vae_batch_size``, without gradients."""
        return torch.cat([self.encode(chunk) for chunk in images.split(self.vae_batch_size)])

    @torch.no_grad()
    def decode_latents(self, latents):
        """Images in [0, 1] of scaled latents, decoded in slices (the VAE decoder sets peak memory)."""
        out = [self.vae.decode(chunk.to(self.vae.dtype) / self.latent_scale).sample
               for chunk in latents.split(self.vae_batch_size)]
        return ((torch.cat(out).float() + 1) / 2).clamp(0, 1)

    # -- denoiser --------------------------------------------------------------------------------------
    def predict_noise(self, latents, t, cond, uncond=None, guidance_scale=1.0):
        """The UNet's noise prediction, with classifier-free guidance when ``guidance_scale > 1``."""
        t = torch.as_tensor(t, device=latents.device)
        if uncond is None or guidance_scale <= 1.0:
            return self.unet(latents, t, encoder_hidden_states=cond).sample
        eps_uncond, eps_cond = self.unet(torch.cat([latents, latents]), t,
                                         encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def _conditioning(self, prompts, guidance_scale):
        cond = self.encode_prompts(prompts)
        uncond = self.encode_prompts([""] * len(prompts)) if guidance_scale > 1.0 else None
        return cond, uncond

    def timesteps(self, steps):
        """DDIM timesteps of a ``steps``-step schedule, noisiest first."""
        self.scheduler.set_timesteps(steps, device=self.device)
        return self.scheduler.timesteps

    @staticmethod
    def strength_steps(steps, strength):
        """Denoising steps img2img runs: ``int(steps * strength)``, as in diffusers' img2img pipeline."""
        return min(int(steps * strength), steps)

    @torch.no_grad()
    def denoise(self, latents, prompts, steps, n_steps=None, guidance_scale=1.0, eta=0.0, generators=None):
        """Run the last ``n_steps`` of a ``steps``-step DDIM schedule from ``latents`` (noised to that level).

        ``eta > 0`` adds DDIM's stochastic term; its noise comes from the per-image ``generators``.
        """
        n_steps = steps if n_steps is None else n_steps
        timesteps = self.timesteps(steps)[steps - n_steps:] if n_steps else []
        cond, uncond = self._conditioning(prompts, guidance_scale)
        if eta > 0 and generators is None:
            raise ValueError("stochastic DDIM (eta > 0) needs per-image generators")
        for t in timesteps:
            eps = self.predict_noise(latents, t, cond, uncond, guidance_scale)
            noise = per_image_noise(generators, latents.shape[1:], latents.device, latents.dtype) if eta > 0 else None
            latents = self.scheduler.step(eps, t, latents, eta=eta, variance_noise=noise).prev_sample
        return latents

    @torch.no_grad()
    def img2img(self, latents, prompts, strength, steps, guidance_scale, generators):
        """SDEdit as diffusers' img2img: noise clean latents to ``strength`` and denoise them with DDIM."""
        n_steps = self.strength_steps(steps, strength)
        if n_steps == 0:
            return latents
        start = self.timesteps(steps)[steps - n_steps]
        noise = per_image_noise(generators, latents.shape[1:], latents.device, latents.dtype)
        noisy = self.scheduler.add_noise(latents, noise, start.expand(len(latents)))
        return self.denoise(noisy, prompts, steps, n_steps, guidance_scale)

    @torch.no_grad()
    def invert(self, latents, prompts, steps, n_steps=None, guidance_scale=1.0):
        """Deterministic DDIM inversion of clean latents through the first ``n_steps`` of ``steps`` steps.

        The result sits at the noise level where ``denoise(..., steps, n_steps)`` starts, so denoising it with
        the same prompts reconstructs the input. Inversion reconstructs poorly with guidance above ~3.
        """
        n_steps = steps if n_steps is None else n_steps
        self.inverse_scheduler.set_timesteps(steps, device=self.device)
        cond, uncond = self._conditioning(prompts, guidance_scale)
        for t in self.inverse_scheduler.timesteps[:n_steps]:
            eps = self.predict_noise(latents, t, cond, uncond, guidance_scale)
            latents = self.inverse_scheduler.step(eps, t, latents).prev_sample
        return latents
