"""Discrete-time ε-prediction DDPM teachers (PixArt-α) seen as EDM denoisers D(x; σ).

A DDPM with ᾱ_t (t = 0 … T-1) is the VP diffusion x_t = √ᾱ_t (x0 + σ_t ε) with σ_t = √((1 − ᾱ_t)/ᾱ_t)
(Karras et al. 2022, EDM §2 / App. C.3.4). Given EDM-space x = x0 + σ ε:
  t   = argmin_t |σ − σ_t|          (σ rounded to the nearest of the T trained levels, as SIM / EDM's iDDPM)
  ε̂   = F(x / √(1 + σ_t²), t, text)[:, :C]     (√ᾱ_t = 1/√(1 + σ_t²); PixArt's learned-variance channels dropped)
  D   = x − σ_t ε̂
Classifier-free guidance (Ho & Salimans 2022): D = D_uncond + w (D_cond − D_uncond), with the null-prompt
embedding as the unconditional text; both halves run as one batch.

Conditioning: the `labels` argument of `Teacher.denoise` is a `TextCondition(embeddings [B, L, C_text],
mask [B, L])` (T5 encoder states and their 1 keep / 0 pad mask); `labels=None` means the null prompt.
"""

import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from di_jax.teachers.base import Teacher

Array = jax.Array


class TextCondition(NamedTuple):
    """Text conditioning of a PixArt teacher: T5 encoder states and their key mask (a pytree)."""
    embeddings: Array   # [B, L, caption_channels]
    mask: Array         # [B, L], 1 keep / 0 pad


def linear_alphas_cumprod(beta_start: float = 1e-4, beta_end: float = 0.02, num_steps: int = 1000) -> np.ndarray:
    """ᾱ_t of the linear β schedule PixArt-α was trained with, float32, bit-equal to diffusers'
    `DDPMScheduler(beta_schedule="linear")`: torch.linspace in float32 (each half measured from its own end),
    α = 1 − β in float32, the cumulative product accumulated in float64 and rounded (as torch.cumprod)."""
    if not (0 < beta_start < beta_end < 1) or num_steps < 2:
        raise ValueError(f"linear_alphas_cumprod needs 0 < beta_start < beta_end < 1 and num_steps >= 2; "
                         f"got {beta_start}, {beta_end}, {num_steps}")
    f32 = np.float32
    start, end = f32(beta_start), f32(beta_end)
    step = np.float64((end - start) / f32(num_steps - 1))
    i = np.arange(num_steps)
    betas = np.where(i < num_steps // 2, np.float64(start) + step * i,
                     np.float64(end) - step * (num_steps - 1 - i)).astype(f32)
    return np.cumprod((f32(1) - betas).astype(np.float64)).astype(f32)


def sigmas_from_alphas_cumprod(alphas_cumprod) -> np.ndarray:
    """σ_t = √((1 − ᾱ_t) / ᾱ_t) (float32; increasing in t for a decreasing ᾱ)."""
    a = np.asarray(alphas_cumprod, np.float64)
    if a.ndim != 1 or a.size < 2 or not np.all((a > 0) & (a < 1)) or not np.all(np.diff(a) < 0):
        raise ValueError("alphas_cumprod must be a 1-D array of decreasing values in (0, 1)")
    return np.sqrt((1 - a) / a).astype(np.float32)


def round_sigma(sigma, sigmas) -> tuple:
    """(index t [B] int32, σ_t [B]) of the trained level nearest to each σ (ties: the lower t)."""
    sigmas = jnp.asarray(sigmas)
    sigma = jnp.clip(jnp.asarray(sigma, jnp.float32), sigmas[0], sigmas[-1])   # huge σ: no float32 ties
    t = jnp.argmin(jnp.abs(sigma[:, None] - sigmas[None, :]), axis=1).astype(jnp.int32)
    return t, jnp.asarray(sigmas)[t]


def _batch_sigma(sigma, b: int) -> Array:
    sigma = jnp.asarray(sigma, jnp.float32)
    if sigma.ndim == 0:
        return jnp.broadcast_to(sigma, (b,))
    if sigma.shape != (b,):
        raise ValueError(f"sigma must be a scalar or [B={b}]; got shape {sigma.shape}")
    return sigma


def _check_condition(cond: TextCondition, b: int, what: str) -> TextCondition:
    if not isinstance(cond, TextCondition):
        raise TypeError(f"{what} must be a TextCondition(embeddings [B, L, C], mask [B, L]); got {type(cond).__name__}")
    e, m = jnp.asarray(cond.embeddings), jnp.asarray(cond.mask)
    if e.ndim != 3 or m.shape != e.shape[:2]:
        raise ValueError(f"{what}: embeddings must be [B, L, C] and mask [B, L]; got {e.shape} and {m.shape}")
    if e.shape[0] == 1 and b != 1:
        e, m = jnp.broadcast_to(e, (b,) + e.shape[1:]), jnp.broadcast_to(m, (b,) + m.shape[1:])
    if e.shape[0] != b:
        raise ValueError(f"{what}: batch {e.shape[0]} does not match x's batch {b}")
    return TextCondition(e, m)


def eps_denoiser(module, alphas_cumprod=None, null_condition: Optional[TextCondition] = None,
                 guidance_scale: Optional[float] = None, eps_channels: Optional[int] = None):
    """`denoise(params, x, sigma, labels, rng=None, augment_labels=None) -> D` of an ε-prediction network.

    Args:
      module: a Flax module called as module.apply({"params": p}, x_in NCHW, text [B, L, C], t [B], mask [B, L])
        (a `PixArtTransformer2DModel`).
      alphas_cumprod: ᾱ_t (default: `linear_alphas_cumprod()`).
      null_condition: TextCondition of the empty prompt, batch 1 (broadcast) or B; used for labels=None and CFG.
      guidance_scale: w of classifier-free guidance; None: the conditional denoiser alone.
      eps_channels: how many leading output channels are ε (default: x's channels; PixArt's other 4 are the
        learned variance).
    x is EDM-space [B, C, H, W] (x0 + σ ε), sigma a scalar or [B]; dropout (rng) is not used: PixArt has none.
    """
    sigmas = sigmas_from_alphas_cumprod(linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod)
    if guidance_scale is not None and null_condition is None:
        raise ValueError("eps_denoiser: guidance_scale needs null_condition (the empty prompt's embedding)")

    def denoise(params, x, sigma, labels, rng=None, augment_labels=None):
        del rng
        if augment_labels is not None:
            raise ValueError("a discrete DDPM teacher takes no augment_labels")
        x = jnp.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must be NCHW [B, C, H, W]; got shape {x.shape}")
        b, c = x.shape[:2]
        channels = c if eps_channels is None else eps_channels
        if labels is None:
            if null_condition is None:
                raise ValueError("labels=None needs a null_condition (the empty prompt's embedding)")
            cond = _check_condition(null_condition, b, "null_condition")
        else:
            cond = _check_condition(labels, b, "labels")
        t, s = round_sigma(_batch_sigma(sigma, b), sigmas)
        s = s.astype(x.dtype)[:, None, None, None]
        x_in = x / jnp.sqrt(1 + jnp.square(s))
        guided = guidance_scale is not None and labels is not None
        if guided:
            null = _check_condition(null_condition, b, "null_condition")
            if null.embeddings.shape[1:] != cond.embeddings.shape[1:]:
                raise ValueError(f"null_condition is {null.embeddings.shape[1:]} per example, labels "
                                 f"{cond.embeddings.shape[1:]}: their token count L and width C must match")
            x_in, t = jnp.concatenate([x_in, x_in]), jnp.concatenate([t, t])
            cond = TextCondition(jnp.concatenate([cond.embeddings, null.embeddings]),
                                 jnp.concatenate([cond.mask, null.mask]))
        out = module.apply({"params": params}, x_in, cond.embeddings, t, cond.mask)
        eps = out[:, :channels].astype(x.dtype)
        if eps.shape[1] != c:
            raise ValueError(f"the network's first {channels} output channels do not match x's {c} channels")
        if not guided:
            return x - s * eps
        d_cond, d_uncond = x - s * eps[:b], x - s * eps[b:]
        return d_uncond + jnp.asarray(guidance_scale, x.dtype) * (d_cond - d_uncond)

    return denoise


def pixart_teacher(module, params, alphas_cumprod=None, null_condition: Optional[TextCondition] = None,
                   guidance_scale: Optional[float] = None) -> Teacher:
    """A `Teacher` of a PixArt transformer over latents [in_channels, sample_size, sample_size].

    label_dim is 0 (the labels are a TextCondition, not one-hot classes): a train step that samples
    one-hot labels for label_dim > 0 passes labels=None, which this teacher reads as the null prompt.
    """
    denoise = eps_denoiser(module, alphas_cumprod, null_condition, guidance_scale, eps_channels=module.in_channels)
    size = module.sample_size
    return Teacher(params=params, denoise=denoise, data_shape=(module.in_channels, size, size), module=module)


def level_rounder(alphas_cumprod=None):
    """round_sigma for `di_jax.sampling.edm_sampler`: σ -> the nearest trained level σ_t (numpy in, numpy out for
    the step table; jnp otherwise), as EDM samples its iDDPM network (Karras et al. 2022, App. C.3.4)."""
    levels = sigmas_from_alphas_cumprod(linear_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod)

    def round_sigma(sigma):
        xp = np if isinstance(sigma, (np.ndarray, float)) else jnp
        s = xp.clip(xp.asarray(sigma, np.float32), levels[0], levels[-1])     # huge σ: no float32 ties
        return xp.asarray(levels)[xp.argmin(xp.abs(s[..., None] - levels), axis=-1)]

    return round_sigma, (float(levels[0]), float(levels[-1]))


def heun_sample(teacher: Teacher, params, latents, labels, num_steps: int = 18, sigma_max: float = 80.0,
                alphas_cumprod=None):
    """EDM's Heun sampler (2 num_steps − 1 NFE) over a discrete teacher: every σ_i rounded to a trained level,
    from min(sigma_max, σ_T−1) to the smallest level σ_0. latents ~ N(0, I) [N, C, H, W]; labels a TextCondition
    (or None: the null prompt). Jittable."""
    from di_jax.sampling import edm_sampler

    round_sigma, (lo, hi) = level_rounder(alphas_cumprod)
    denoise = lambda x, s, c: teacher.denoise(params, x, s, c)
    return edm_sampler(denoise, latents, class_labels=labels, num_steps=num_steps, sigma_min=lo, sigma_max=sigma_max,
                       round_sigma=round_sigma, net_sigma_range=(lo, hi))


def load_pixart_teacher(folder: str | os.PathLike, null_condition: Optional[TextCondition] = None,
                        guidance_scale: Optional[float] = None, dtype: Any = "float32") -> Teacher:
    """The PixArt teacher of a diffusers folder, raw or converted by `di-jax convert`: a pipeline folder (its
    transformer/, and the training schedule of its scheduler/ when present) or a transformer folder."""
    from di_jax.convert.diffusers_convert import load_diffusers  # the converter: only when used
    from di_jax.convert.diffusers_folder import read_scheduler_config
    from di_jax.nets.pixart import PixArtTransformer2DModel

    folder = os.fspath(folder)
    module, params = load_diffusers(folder, "transformer", dtype)
    if not isinstance(module, PixArtTransformer2DModel):
        raise ValueError(f"{folder} holds a {type(module).__name__}, not a PixArt transformer")
    schedule = read_scheduler_config(folder)
    alphas = linear_alphas_cumprod(**schedule) if schedule else None
    return pixart_teacher(module, params, alphas, null_condition, guidance_scale)


def load_null_condition(path: str | os.PathLike) -> TextCondition:
    """The null prompt (batch 1) of a prompt-embedding directory (`di-jax embed-prompts` writes it)."""
    from di_jax.text.embeddings import PromptEmbeddings

    emb, mask = PromptEmbeddings(path).null()
    return TextCondition(jnp.asarray(emb), jnp.asarray(mask))


def load(config) -> Teacher:
    """The teacher of `config.teacher` (kind "pixart"): a text-to-image ε-prediction DiT as an EDM denoiser.

    Fields read:
      teacher.path: a diffusers pipeline / transformer folder, raw or converted, local or gs:// ('' -> the
        embedded digits text-to-image teacher, `di_jax.text.digits.TEACHER`).
      teacher.guidance_scale: w of D = D_uncond + w (D_cond − D_uncond) (default 1.0: the conditional
        denoiser alone, one network call; the SIM paper does not state the scale its teacher used).
      teacher.null_prompt: a prompt-embedding directory whose null.npz (the empty prompt "") is the
        unconditional text ('' -> config.prompts.path if set, else the embedded digits prompts when the
        teacher is the embedded one).
      networks.dtype: compute dtype of the transformer ("float32" | "bfloat16").
    """
    from di_jax.convert.remote import local_copy
    from di_jax.text import digits

    t = config.teacher
    path = local_copy(t.get("path", "") or digits.TEACHER)
    if not os.path.exists(path):
        raise FileNotFoundError(f"config.teacher.path: no such file or directory {path!r}")
    null_path = t.get("null_prompt", "") or config.get("prompts", {}).get("path", "")
    if not null_path:
        if t.get("path", ""):
            raise ValueError("config.teacher.null_prompt is empty: give the prompt-embedding directory (di-jax "
                             "embed-prompts) whose null prompt matches this teacher's text encoder")
        null_path = digits.TRAIN_PROMPTS
    null = load_null_condition(local_copy(null_path))
    w = float(t.get("guidance_scale", 1.0))
    teacher = load_pixart_teacher(path, null, None if w == 1.0 else w, config.networks.get("dtype", "float32"))
    width = teacher.module.caption_channels or teacher.module.cross_attention_dim
    if null.embeddings.shape[-1] != width:
        raise ValueError(f"config.teacher.null_prompt {null_path}: embeddings are {null.embeddings.shape[-1]} wide, "
                         f"the teacher's text input {width}")
    return teacher


def load_vae(path: str | os.PathLike, dtype: Any = "float32"):
    """(AutoencoderKL module, params) of a pipeline folder's vae/ (raw or converted), or None without one (the
    digits demo works in pixel space). Decode latents x0 with `module.apply({"params": p}, x0 / module.
    scaling_factor, method="decode")` (diffusers: latents / scaling_factor, then decode)."""
    from di_jax.convert.diffusers_convert import load_diffusers, model_folders

    if "vae" not in model_folders(os.fspath(path)):
        return None
    return load_diffusers(path, "vae", dtype)
