"""Small MLPs for low-dimensional (toy) distillation: a generator and an EDM-preconditioned denoiser."""

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLP(nn.Module):
    hidden: int = 128
    depth: int = 3
    out_dim: int = 2

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.depth):
            x = nn.silu(nn.Dense(self.hidden, name=f"dense{i}")(x))
        return nn.Dense(self.out_dim, name="out")(x)


class MLPGenerator(nn.Module):
    """x0 = g(z), z ~ N(0, I) [B, latent]; optional one-hot labels [B, label_dim] are concatenated."""
    hidden: int = 128
    depth: int = 3
    out_dim: int = 2

    @nn.compact
    def __call__(self, z: jax.Array, labels: Optional[jax.Array] = None) -> jax.Array:
        h = z if labels is None else jnp.concatenate([z, labels.astype(z.dtype)], -1)
        return MLP(self.hidden, self.depth, self.out_dim, name="mlp")(h)


class MLPDenoiser(nn.Module):
    """EDM-preconditioned denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) (EDM Table 1).

    The noise level enters F through sin/cos features of c_noise = ln(sigma)/4.
    """
    hidden: int = 128
    depth: int = 3
    sigma_data: float = 1.0
    num_freqs: int = 8

    @nn.compact
    def __call__(self, x: jax.Array, sigma: jax.Array, labels: Optional[jax.Array] = None) -> jax.Array:
        sigma = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), x.shape[:1])[:, None]
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / jnp.sqrt(sigma**2 + sd2)
        c_in = 1.0 / jnp.sqrt(sigma**2 + sd2)
        c_noise = jnp.log(sigma) / 4.0
        freqs = 2.0 ** jnp.arange(self.num_freqs, dtype=x.dtype)
        emb = jnp.concatenate([jnp.sin(c_noise * freqs), jnp.cos(c_noise * freqs), c_noise], -1)
        h = [c_in * x, emb] + ([] if labels is None else [labels.astype(x.dtype)])
        f = MLP(self.hidden, self.depth, x.shape[-1], name="mlp")(jnp.concatenate(h, -1))
        return c_skip * x + c_out * f
