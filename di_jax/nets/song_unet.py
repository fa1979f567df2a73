"""SongUNet (DDPM++ / NCSN++) in Flax, NHWC (spec edm_architecture.md section 2)."""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from di_jax.nets.layers import Conv2d, FourierEmbedding, GroupNorm, Linear, PositionalEmbedding, UNetBlock


def drop_labels(module: nn.Module, labels, rate: float, train: bool):
    """Zero whole label rows with probability `rate` in training (needs the 'dropout' rng)."""
    if not (train and rate):
        return labels
    keep = jax.random.uniform(module.make_rng("dropout"), (labels.shape[0], 1)) >= rate
    return labels * keep.astype(labels.dtype)


class SongUNet(nn.Module):
    img_resolution: int
    in_channels: int
    out_channels: int
    label_dim: int = 0
    augment_dim: int = 0
    model_channels: int = 128
    channel_mult: Sequence[int] = (1, 2, 2, 2)
    channel_mult_emb: int = 4
    num_blocks: int = 4
    attn_resolutions: Sequence[int] = (16,)
    dropout: float = 0.10
    label_dropout: float = 0.0
    embedding_type: str = "positional"
    channel_mult_noise: int = 1
    encoder_type: str = "standard"
    decoder_type: str = "standard"
    resample_filter: Sequence[float] = (1, 1)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, train: bool = False):
        """x [N, R, R, in] NHWC, noise_labels [N or 1] -> [N, R, R, out]."""
        if self.embedding_type not in ("positional", "fourier"):
            raise ValueError(f"embedding_type must be 'positional' or 'fourier'; got {self.embedding_type!r}")
        if self.encoder_type not in ("standard", "skip", "residual"):
            raise ValueError(f"encoder_type must be standard/skip/residual; got {self.encoder_type!r}")
        if self.decoder_type not in ("standard", "skip"):
            raise ValueError(f"decoder_type must be standard/skip; got {self.decoder_type!r}")
        mc, rf, R = self.model_channels, tuple(self.resample_filter), self.img_resolution
        cn, ce = mc * self.channel_mult_noise, mc * self.channel_mult_emb
        blk = dict(dropout=self.dropout, skip_scale=np.sqrt(0.5), eps=1e-6, resample_filter=rf, num_heads=1,
                   resample_proj=True, adaptive_scale=False, attn_scale=np.sqrt(0.2), dtype=self.dtype)
        block = lambda name, c, **kw: lambda h: UNetBlock(c, name=name, **blk, **kw)(h, emb, train)

        # Mapping network: [sin, cos] swap, labels scaled by sqrt(label_dim) (spec 2).
        if self.embedding_type == "positional":
            emb = PositionalEmbedding(cn, endpoint=True, name="map_noise")(noise_labels)
        else:
            emb = FourierEmbedding(cn, name="map_noise")(noise_labels)
        emb = jnp.concatenate(jnp.split(emb, 2, axis=1)[::-1], axis=1)
        if self.label_dim:
            labels = drop_labels(self, class_labels, self.label_dropout, train)
            emb = emb + Linear(cn, name="map_label")(labels * np.sqrt(self.label_dim).astype(np.float32))
        if self.augment_dim:
            aug = jnp.zeros((1, self.augment_dim), emb.dtype) if augment_labels is None else augment_labels
            emb = emb + Linear(cn, use_bias=False, name="map_augment")(aug)
        emb = nn.silu(Linear(ce, name="map_layer0")(emb))
        emb = nn.silu(Linear(ce, name="map_layer1")(emb))

        # Encoder.
        skips, aux, cout = [], x, self.in_channels
        for level, mult in enumerate(self.channel_mult):
            res = R >> level
            pre = f"enc_{res}x{res}"
            if level == 0:
                cout = mc
                x = Conv2d(cout, 3, dtype=self.dtype, name=f"{pre}_conv")(x)
                skips.append(x)
            else:
                x = block(f"{pre}_down", cout, down=True)(x)
                skips.append(x)
                if self.encoder_type == "skip":
                    aux = Conv2d(aux.shape[-1], 0, down=True, resample_filter=rf, dtype=self.dtype,
                                 name=f"{pre}_aux_down")(aux)
                    x = skips[-1] = x + Conv2d(cout, 1, dtype=self.dtype, name=f"{pre}_aux_skip")(aux)
                elif self.encoder_type == "residual":
                    r = Conv2d(cout, 3, down=True, resample_filter=rf, fused_resample=True, dtype=self.dtype,
                               name=f"{pre}_aux_residual")(aux)
                    x = skips[-1] = aux = (x + r) / np.sqrt(2).astype(np.float32)
            for i in range(self.num_blocks):
                cout = mc * mult
                x = block(f"{pre}_block{i}", cout, attention=res in self.attn_resolutions)(x)
                skips.append(x)

        # Decoder: output is the sum of the aux_norm/aux_conv heads.
        aux = None
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
                x = block(f"{pre}_block{i}", cout,
                          attention=(i == self.num_blocks and res in self.attn_resolutions))(x)
            if self.decoder_type == "skip" or level == 0:
                if self.decoder_type == "skip" and level < last:
                    aux = Conv2d(self.out_channels, 0, up=True, resample_filter=rf, dtype=self.dtype,
                                 name=f"{pre}_aux_up")(aux)
                tmp = GroupNorm(1e-6, self.dtype, name=f"{pre}_aux_norm")(x)
                tmp = Conv2d(self.out_channels, 3, init_scale=1e-5, dtype=self.dtype,
                             name=f"{pre}_aux_conv")(nn.silu(tmp))
                aux = tmp if aux is None else tmp + aux
        return aux
