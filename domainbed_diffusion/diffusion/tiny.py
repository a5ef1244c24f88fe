"""Small Stable-Diffusion-shaped models built from configs: the embedded model's architecture and test fixtures.

They are the very classes of Stable Diffusion (UNet2DConditionModel, AutoencoderKL, CLIPTextModel with a CLIP
BPE tokenizer, DDIMScheduler), only narrower, so CPU runs exercise the code path that runs SD on a GPU.
"""
import json
import os

SD_SCHEDULER = dict(  # Stable Diffusion v1's noise schedule, in DDIMScheduler's terms
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")

TINY = dict(image_size=32, latent_channels=4, vae_channels=(32, 64, 64), unet_channels=(64, 128),
            text_width=64, text_layers=2, max_tokens=32)


def bytes_to_unicode():
    """CLIP's reversible map of the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe(word, ranks):
    """CLIP's byte-pair encoding of one pre-tokenised word under the merge ``ranks``."""
    parts = tuple(word[:-1]) + (word[-1] + "</w>",)
    while len(parts) > 1:
        pairs = {(parts[i], parts[i + 1]) for i in range(len(parts) - 1)}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = tuple(merged)
    return parts


def write_clip_tokenizer(words, folder, max_length=TINY["max_tokens"]):
    """Write a CLIPTokenizer whose vocabulary holds every byte and a whole-word token for each of ``words``.

    Any text tokenises (unknown words fall back to smaller pieces); the listed words become single tokens.
    """
    from transformers import CLIPTokenizer
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    merges, ranks = [], {}
    for word in sorted({w.lower() for w in words if w}):
        while True:
            parts = _bpe(word, ranks)
            if len(parts) == 1:
                break
            pair = (parts[0], parts[1])  # merge the two leading pieces; repeat until the word is one token
            ranks[pair] = len(merges)
            merges.append(pair)
            vocab.append(pair[0] + pair[1])
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(folder, exist_ok=True)
    vocab_file, merges_file = os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt")
    with open(vocab_file, "w", encoding="utf-8") as f:
        json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
    with open(merges_file, "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(vocab_file, merges_file, model_max_length=max_length)
    tokenizer.save_pretrained(folder)
    return tokenizer


def vae_config(cfg=TINY):
    n = len(cfg["vae_channels"])
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg["vae_channels"]),
                layers_per_block=1, latent_channels=cfg["latent_channels"], norm_num_groups=16,
                sample_size=cfg["image_size"])


def unet_config(cfg=TINY):
    n = len(cfg["unet_channels"])
    factor = 2 ** (len(cfg["vae_channels"]) - 1)
    return dict(sample_size=cfg["image_size"] // factor, in_channels=cfg["latent_channels"],
                out_channels=cfg["latent_channels"], block_out_channels=tuple(cfg["unet_channels"]),
                down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
                layers_per_block=1, cross_attention_dim=cfg["text_width"], attention_head_dim=8,
                norm_num_groups=16)


def text_config(tokenizer, cfg=TINY):
    return dict(vocab_size=len(tokenizer), hidden_size=cfg["text_width"], intermediate_size=2 * cfg["text_width"],
                num_hidden_layers=cfg["text_layers"], num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def build_components(words, folder, cfg=TINY, seed=0):
    """Randomly initialised components of the tiny architecture (the tokenizer is written to ``folder``)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.manual_seed(seed)
    tokenizer = write_clip_tokenizer(words, os.path.join(folder, "tokenizer"), cfg["max_tokens"])
    return dict(
        vae=AutoencoderKL(**vae_config(cfg)),
        unet=UNet2DConditionModel(**unet_config(cfg)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_config(tokenizer, cfg))),
        tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SD_SCHEDULER),
    )


def save_checkpoint(components, folder, half=False):
    """Save components as a Stable Diffusion checkpoint in diffusers format (``StableDiffusionPipeline``)."""
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline(**components, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    if half:
        import torch
        pipe.to(torch.float16)
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
