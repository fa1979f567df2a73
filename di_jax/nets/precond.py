"""Preconditioning wrappers D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) (spec section 4, EDM Table 1).

Public call: `module.apply({'params': p}, x, sigma, class_labels=None, augment_labels=None, train=False,
rngs={'dropout': key})` with x NCHW like the official code (`layout='NHWC'` for channels-last); sigma is a
scalar or [N]. The inner UNet's raw output and c_noise are sown to 'intermediates' ('model_out' NHWC,
'c_noise'). iDDPM's `u` is a constant recomputed from (M, C_1, C_2), not a param.
"""

from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

PRECONDS = ("EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond")
# The UNet each wrapper uses when a config names none (spec section 4).
DEFAULT_MODEL = {"EDMPrecond": "DhariwalUNet", "iDDPMPrecond": "DhariwalUNet",
                 "VPPrecond": "SongUNet", "VEPrecond": "SongUNet"}


def iddpm_u(M: int = 1000, C_1: float = 0.001, C_2: float = 0.008) -> np.ndarray:
    """The iDDPM sigma grid u[0..M] in float32, emulating the official float32 recursion (spec 4)."""
    f32 = np.float32
    alpha_bar = lambda j: np.square(np.sin(f32(0.5 * np.pi) * f32(j) / f32(M) / f32(C_2 + 1), dtype=f32))
    u = np.zeros(M + 1, f32)
    for j in range(M, 0, -1):
        ratio = np.maximum(f32(alpha_bar(j - 1) / alpha_bar(j)), f32(C_1))
        u[j - 1] = np.sqrt((np.square(u[j]) + f32(1)) / ratio - f32(1))
    return u


def iddpm_round_sigma(sigma, u, return_index: bool = False):
    """Snap sigma to the nearest u_j (or return j)."""
    sigma = jnp.asarray(sigma, jnp.float32)
    index = jnp.argmin(jnp.abs(sigma.reshape(-1, 1) - jnp.asarray(u)[None, :]), axis=1).reshape(sigma.shape)
    return index if return_index else jnp.asarray(u)[index]


def vp_sigma(t, beta_d=19.9, beta_min=0.1):
    """sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1), in float32 numpy like the official attributes."""
    t, f32 = np.float32(t), np.float32
    arg = f32(0.5 * beta_d) * t * t + f32(beta_min) * t
    return np.sqrt(f32(np.exp(np.float64(arg))) - f32(1))  # correctly rounded float32 exp


class Precond(nn.Module):
    """One of EDM/VP/VE/iDDPM preconditioning around `model` (a SongUNet or DhariwalUNet)."""
    precond: str
    model: nn.Module
    img_channels: int
    label_dim: int = 0
    sigma_data: float = 0.5
    beta_d: float = 19.9
    beta_min: float = 0.1
    M: int = 1000
    epsilon_t: float = 1e-5
    C_1: float = 0.001
    C_2: float = 0.008
    sigma_min: Optional[float] = None  # VE: 0.02, EDM: 0
    sigma_max: Optional[float] = None  # VE: 100, EDM: inf
    dtype: Any = jnp.float32

    def setup(self):
        if self.precond not in PRECONDS:
            raise ValueError(f"precond must be one of {PRECONDS}; got {self.precond!r}")

    @property
    def u(self):
        return iddpm_u(self.M, self.C_1, self.C_2)

    def sigma_range(self):
        """(sigma_min, sigma_max) of the wrapper as the sampler clamps to (spec 4, 8)."""
        if self.precond == "VPPrecond":
            return float(np.float32(vp_sigma(self.epsilon_t, self.beta_d, self.beta_min))), \
                float(np.float32(vp_sigma(1.0, self.beta_d, self.beta_min)))
        if self.precond == "iDDPMPrecond":
            u = self.u
            return float(u[self.M - 1]), float(u[0])
        if self.precond == "VEPrecond":
            return (0.02 if self.sigma_min is None else self.sigma_min), (100.0 if self.sigma_max is None
                                                                           else self.sigma_max)
        return (0.0 if self.sigma_min is None else self.sigma_min), (np.inf if self.sigma_max is None
                                                                     else self.sigma_max)

    def round_sigma(self, sigma):
        return iddpm_round_sigma(sigma, self.u) if self.precond == "iDDPMPrecond" else jnp.asarray(sigma)

    def coefficients(self, sigma):
        """(c_skip, c_out, c_in, c_noise) for float32 sigma [N, 1, 1, 1]."""
        one = jnp.ones_like(sigma)
        if self.precond == "EDMPrecond":
            sd2 = self.sigma_data ** 2
            return (sd2 / (sigma ** 2 + sd2), sigma * self.sigma_data / jnp.sqrt(sigma ** 2 + sd2),
                    1 / jnp.sqrt(sigma ** 2 + sd2), jnp.log(sigma) / 4)
        if self.precond == "VEPrecond":
            return one, sigma, one, jnp.log(0.5 * sigma)
        c_in = 1 / jnp.sqrt(sigma ** 2 + 1)
        if self.precond == "VPPrecond":  # official float32 ln(1 + s^2), not log1p (spec 4)
            t = (jnp.sqrt(self.beta_min ** 2 + 2 * self.beta_d * jnp.log(1 + sigma ** 2)) - self.beta_min) / self.beta_d
            return one, -sigma, c_in, (self.M - 1) * t
        idx = iddpm_round_sigma(sigma, self.u, return_index=True)
        return one, -sigma, c_in, (self.M - 1 - idx).astype(jnp.float32)

    def __call__(self, x, sigma, class_labels=None, augment_labels=None, train: bool = False,
                 layout: str = "NCHW"):
        if layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC'; got {layout!r}")
        x = jnp.asarray(x, jnp.float32)
        if x.ndim != 4:
            raise ValueError(f"x must be 4-d [N, C, H, W] ({layout}); got shape {x.shape}")
        if layout == "NCHW":
            x = x.transpose(0, 2, 3, 1)
        if x.shape[-1] != self.img_channels:
            raise ValueError(f"x has {x.shape[-1]} channels, the network expects {self.img_channels} ({layout})")
        sigma = jnp.asarray(sigma, jnp.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = jnp.zeros((1, self.label_dim), jnp.float32)
        else:
            class_labels = jnp.asarray(class_labels, jnp.float32).reshape(-1, self.label_dim)
        if augment_labels is not None:
            augment_labels = jnp.asarray(augment_labels, jnp.float32)
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        f = self.model((c_in * x).astype(self.dtype), c_noise.reshape(-1), class_labels, augment_labels, train)
        self.sow("intermediates", "c_noise", c_noise.reshape(-1))
        self.sow("intermediates", "model_out", f)
        f = f.astype(jnp.float32)[..., :self.img_channels]  # iDDPM: learned-variance half dropped
        d = c_skip * x + c_out * f
        return d.transpose(0, 3, 1, 2) if layout == "NCHW" else d
