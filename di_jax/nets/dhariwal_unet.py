"""DhariwalUNet (ADM) in Flax, NHWC (spec edm_architecture.md section 3)."""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from di_jax.nets.layers import Conv2d, GroupNorm, Linear, PositionalEmbedding, UNetBlock
from di_jax.nets.song_unet import drop_labels


class DhariwalUNet(nn.Module):
    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 192
    channel_mult: Sequence[int] = (1, 2, 3, 4)
    channel_mult_emb: int = 4
    num_blocks: int = 3
    attn_resolutions: Sequence[int] = (32, 16, 8)
    dropout: float = 0.10
    label_dropout: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, train: bool = False):
        """x [N, R, R, in] NHWC, noise_labels [N or 1] -> [N, R, R, out]."""
        mc, R = self.model_channels, self.img_resolution
        ce = mc * self.channel_mult_emb
        blk = dict(channels_per_head=64, dropout=self.dropout, zero_scale=0.0, dtype=self.dtype)
        block = lambda name, c, **kw: lambda h: UNetBlock(c, name=name, **blk, **kw)(h, emb, train)

        # Mapping network: [cos, sin], label added after map_layer1 without scaling (spec 3).
        emb = PositionalEmbedding(mc, endpoint=False, name="map_noise")(noise_labels)
        if self.augment_dim:
            aug = jnp.zeros((1, self.augment_dim), emb.dtype) if augment_labels is None else augment_labels
            emb = emb + Linear(mc, use_bias=False, name="map_augment")(aug)
        emb = nn.silu(Linear(ce, name="map_layer0")(emb))
        emb = Linear(ce, name="map_layer1")(emb)
        if self.label_dim:
            labels = drop_labels(self, class_labels, self.label_dropout, train)
            emb = emb + Linear(ce, use_bias=False, name="map_label")(labels)
        emb = nn.silu(emb)

        skips, cout = [], self.in_channels
        for level, mult in enumerate(self.channel_mult):
            res = R >> level
            pre = f"enc_{res}x{res}"
            if level == 0:
                cout = mc * mult
                x = Conv2d(cout, 3, dtype=self.dtype, name=f"{pre}_conv")(x)
            else:
                x = block(f"{pre}_down", cout, down=True)(x)
            skips.append(x)
            for i in range(self.num_blocks):
                cout = mc * mult
                x = block(f"{pre}_block{i}", cout, attention=res in self.attn_resolutions)(x)
                skips.append(x)

        last = len(self.channel_mult) - 1
        for level in reversed(range(len(self.channel_mult))):
            res, mult = R >> level, self.channel_mult[level]
            pre = f"dec_{res}x{res}"
            if level == last:
                x = block(f"{pre}_in0", cout, attention=True)(x)
                x = block(f"{pre}_in1", cout)(x)
            else:
                x = block(f"{pre}_up", cout, up=True)(x)
            for i in range(self.num_blocks + 1):
                x = jnp.concatenate([x, skips.pop().astype(x.dtype)], axis=-1)
                cout = mc * mult
                x = block(f"{pre}_block{i}", cout, attention=res in self.attn_resolutions)(x)
        x = nn.silu(GroupNorm(1e-5, self.dtype, name="out_norm")(x))
        return Conv2d(self.out_channels, 3, init_scale=0.0, dtype=self.dtype, name="out_conv")(x)
