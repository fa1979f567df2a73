"""A compact PyTorch port of the EDM networks (SongUNet, DhariwalUNet) and their wrappers.

Written from shared/spec/edm_architecture.md (not copied from NVlabs/edm). Module names follow the
official state_dict keys (`model.enc.32x32_block0.conv0.weight`, ...), so an official checkpoint or
`di_jax.convert.edm_mapping.flax_to_state_dict(...)` loads with `load_state_dict(strict=True)`.
Tensors are NCHW, as in the official code. Mixed precision is left to `torch.autocast`.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def _xavier(shape, fan_in, fan_out, scale):
    return (torch.rand(shape) * 2 - 1) * math.sqrt(6 / (fan_in + fan_out)) * scale


class Linear(nn.Module):
    def __init__(self, cin, cout, bias=True, init_scale=1.0):
        super().__init__()
        self.weight = nn.Parameter(_xavier([cout, cin], cin, cout, init_scale))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None

    def forward(self, x):
        x = x @ self.weight.to(x.dtype).t()
        return x if self.bias is None else x + self.bias.to(x.dtype)


class Conv2d(nn.Module):
    """Conv with optional zero-padded FIR up/down resampling; kernel 0 = weightless resampler (spec 1.3)."""

    def __init__(self, cin, cout, kernel, bias=True, up=False, down=False, resample_filter=(1, 1),
                 fused_resample=False, init_scale=1.0):
        super().__init__()
        assert not (up and down)
        self.up, self.down, self.fused = up, down, fused_resample
        self.weight = nn.Parameter(_xavier([cout, cin, kernel, kernel], cin * kernel ** 2, cout * kernel ** 2,
                                           init_scale)) if kernel else None
        self.bias = nn.Parameter(torch.zeros(cout)) if kernel and bias else None
        r = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(r, r) / r.sum() ** 2
        self.register_buffer("resample_filter", f[None, None] if (up or down) else None)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        pw = w.shape[-1] // 2 if w is not None else 0
        pf = (f.shape[-1] - 1) // 2 if f is not None else 0
        c = x.shape[1]
        if self.fused and self.up and w is not None:
            x = F.conv_transpose2d(x, (f * 4).tile(c, 1, 1, 1), groups=c, stride=2, padding=max(pf - pw, 0))
            x = F.conv2d(x, w, padding=max(pw - pf, 0))
        elif self.fused and self.down and w is not None:
            x = F.conv2d(x, w, padding=pw + pf)
            x = F.conv2d(x, f.tile(x.shape[1], 1, 1, 1), groups=x.shape[1], stride=2)
        else:
            if self.up:
                x = F.conv_transpose2d(x, (f * 4).tile(c, 1, 1, 1), groups=c, stride=2, padding=pf)
            if self.down:
                x = F.conv2d(x, f.tile(c, 1, 1, 1), groups=c, stride=2, padding=pf)
            if w is not None:
                x = F.conv2d(x, w, padding=pw)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    def __init__(self, c, eps=1e-5):
        super().__init__()
        self.groups, self.eps = min(32, c // 4), eps
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return F.group_norm(x, self.groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(nn.Module):
    """Residual block with optional up/down and single/multi-head self-attention (spec 1.5, 1.6)."""

    def __init__(self, cin, cout, emb, up=False, down=False, attention=False, num_heads=None,
                 channels_per_head=64, dropout=0.0, skip_scale=1.0, eps=1e-5, resample_filter=(1, 1),
                 resample_proj=False, adaptive_scale=True, zero_scale=1e-5, attn_scale=1.0):
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.num_heads = 0 if not attention else (num_heads if num_heads is not None else cout // channels_per_head)
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, skip_scale, adaptive_scale
        rs = dict(resample_filter=resample_filter)
        self.norm0 = GroupNorm(cin, eps)
        self.conv0 = Conv2d(cin, cout, 3, up=up, down=down, **rs)
        self.affine = Linear(emb, cout * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(cout, eps)
        self.conv1 = Conv2d(cout, cout, 3, init_scale=zero_scale)
        self.skip = None
        if cin != cout or up or down:
            k = 1 if (resample_proj or cin != cout) else 0
            self.skip = Conv2d(cin, cout, k, up=up, down=down, **rs)
        if self.num_heads:
            self.norm2 = GroupNorm(cout, eps)
            self.qkv = Conv2d(cout, cout * 3, 1, init_scale=attn_scale)
            self.proj = Conv2d(cout, cout, 1, init_scale=zero_scale)

    def forward(self, x, emb):
        orig = x
        x = self.conv0(F.silu(self.norm0(x)))
        p = self.affine(emb)[:, :, None, None].to(x.dtype)
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            x = F.silu(torch.addcmul(shift, self.norm1(x), scale + 1))
        else:
            x = F.silu(self.norm1(x + p))
        x = self.conv1(F.dropout(x, p=self.dropout, training=self.training))
        x = (x + (self.skip(orig) if self.skip is not None else orig)) * self.skip_scale
        if self.num_heads:
            n, c, h, w = x.shape
            heads = self.num_heads
            # qkv output rows interleave (q, k, v) per channel; heads are contiguous channel blocks.
            q, k, v = self.qkv(self.norm2(x)).reshape(n * heads, c // heads, 3, h * w).unbind(2)
            k = k / math.sqrt(c // heads)
            with torch.autocast(x.device.type, enabled=False):   # logits + softmax in float32 (spec 1.5)
                wts = torch.einsum("ncq,nck->nqk", q.float(), k.float()).softmax(dim=2)
            wts = wts.to(v.dtype)
            a = torch.einsum("nqk,nck->ncq", wts, v)
            x = (self.proj(a.reshape(n, c, h, w)) + x) * self.skip_scale
        return x


class PositionalEmbedding(nn.Module):
    def __init__(self, n, max_positions=10000, endpoint=False):
        super().__init__()
        self.n, self.max_positions, self.endpoint = n, max_positions, endpoint

    def forward(self, t):
        half = self.n // 2
        fr = torch.arange(half, dtype=torch.float32, device=t.device) / (half - (1 if self.endpoint else 0))
        fr = ((1 / self.max_positions) ** fr).to(t.dtype)
        t = torch.outer(t, fr)
        return torch.cat([t.cos(), t.sin()], dim=1)


class FourierEmbedding(nn.Module):
    def __init__(self, n, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(n // 2) * scale)

    def forward(self, t):
        t = torch.outer(t, (2 * np.pi * self.freqs).to(t.dtype))
        return torch.cat([t.cos(), t.sin()], dim=1)


class SongUNet(nn.Module):
    """DDPM++ / NCSN++ (spec section 2)."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=128,
                 channel_mult=(1, 2, 2, 2), channel_mult_emb=4, num_blocks=4, attn_resolutions=(16,), dropout=0.10,
                 label_dropout=0.0, embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
                 decoder_type="standard", resample_filter=(1, 1)):
        super().__init__()
        assert embedding_type in ("positional", "fourier")
        assert encoder_type in ("standard", "skip", "residual") and decoder_type in ("standard", "skip")
        self.label_dropout, self.encoder_type, self.decoder_type = label_dropout, encoder_type, decoder_type
        mc, rf = model_channels, tuple(resample_filter)
        cn, ce = mc * channel_mult_noise, mc * channel_mult_emb
        blk = dict(emb=ce, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5), eps=1e-6, resample_filter=rf,
                   resample_proj=True, adaptive_scale=False, attn_scale=math.sqrt(0.2))
        self.map_noise = (PositionalEmbedding(cn, endpoint=True) if embedding_type == "positional"
                          else FourierEmbedding(cn))
        self.map_label = Linear(label_dim, cn) if label_dim else None
        self.map_augment = Linear(augment_dim, cn, bias=False) if augment_dim else None
        self.map_layer0 = Linear(cn, ce)
        self.map_layer1 = Linear(ce, ce)

        self.enc = nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, mc
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **blk)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=rf)
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(caux, cout, 3, down=True, resample_filter=rf,
                                                                   fused_resample=True)
                    caux = cout
            for i in range(num_blocks):
                cin, cout = cout, mc * mult
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **blk)
        skips = [m.out_channels if isinstance(m, UNetBlock) else m.weight.shape[0]
                 for name, m in self.enc.items() if "aux" not in name]

        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), mc * mult
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(
                    cin, cout, attention=(i == num_blocks and res in attn_resolutions), **blk)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(out_channels, out_channels, 0, up=True,
                                                             resample_filter=rf)
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(cout, out_channels, 3, init_scale=1e-5)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        emb = emb.reshape(emb.shape[0], 2, -1).flip(1).reshape(emb.shape)   # [sin, cos]
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand(labels.shape[0], 1, device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.weight.shape[1]))
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        skips, aux = [], x
        for name, block in self.enc.items():
            if "aux_down" in name:
                aux = block(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + block(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + block(aux)) / math.sqrt(2)
            else:
                x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
                skips.append(x)
        aux = tmp = None
        for name, block in self.dec.items():
            if "aux_up" in name:
                aux = block(aux)
            elif "aux_norm" in name:
                tmp = block(x)
            elif "aux_conv" in name:
                tmp = block(F.silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != block.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = block(x, emb)
        return aux


class DhariwalUNet(nn.Module):
    """ADM (spec section 3)."""

    def __init__(self, img_resolution, in_channels, out_channels, label_dim=0, augment_dim=0, model_channels=192,
                 channel_mult=(1, 2, 3, 4), channel_mult_emb=4, num_blocks=3, attn_resolutions=(32, 16, 8),
                 dropout=0.10, label_dropout=0.0):
        super().__init__()
        self.label_dropout = label_dropout
        mc, ce = model_channels, model_channels * channel_mult_emb
        blk = dict(emb=ce, channels_per_head=64, dropout=dropout, eps=1e-5, adaptive_scale=True, zero_scale=0.0)
        self.map_noise = PositionalEmbedding(mc)
        self.map_augment = Linear(augment_dim, mc, bias=False) if augment_dim else None
        self.map_layer0 = Linear(mc, ce)
        self.map_layer1 = Linear(ce, ce)
        self.map_label = Linear(label_dim, ce, bias=False) if label_dim else None
        self.enc = nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                cin, cout = cout, mc * mult
                self.enc[f"{res}x{res}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(cout, cout, down=True, **blk)
            for i in range(num_blocks):
                cin, cout = cout, mc * mult
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **blk)
        skips = [m.out_channels if isinstance(m, UNetBlock) else m.weight.shape[0] for m in self.enc.values()]
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(cout, cout, attention=True, **blk)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(cout, cout, **blk)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(cout, cout, up=True, **blk)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), mc * mult
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(cin, cout, attention=res in attn_resolutions, **blk)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3, init_scale=0.0)

    def forward(self, x, noise_labels, class_labels=None, augment_labels=None):
        emb = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand(labels.shape[0], 1, device=labels.device) >= self.label_dropout
                labels = labels * keep.to(labels.dtype)
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)
        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        for block in self.dec.values():
            if x.shape[1] != block.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))


class Precond(nn.Module):
    """EDMPrecond / VPPrecond / VEPrecond around `model` (spec section 4)."""

    def __init__(self, kind, model, img_channels, label_dim=0, sigma_data=0.5, beta_d=19.9, beta_min=0.1, M=1000):
        super().__init__()
        assert kind in ("EDMPrecond", "VPPrecond", "VEPrecond"), kind
        self.kind, self.model, self.img_channels, self.label_dim = kind, model, img_channels, label_dim
        self.sigma_data, self.beta_d, self.beta_min, self.M = sigma_data, beta_d, beta_min, M

    def forward(self, x, sigma, class_labels=None, augment_labels=None):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        if self.label_dim == 0:
            class_labels = None
        elif class_labels is None:
            class_labels = torch.zeros(1, self.label_dim, device=x.device)
        else:
            class_labels = class_labels.to(torch.float32).reshape(-1, self.label_dim)
        if self.kind == "EDMPrecond":
            sd = self.sigma_data
            c_skip = sd ** 2 / (sigma ** 2 + sd ** 2)
            c_out = sigma * sd / (sigma ** 2 + sd ** 2).sqrt()
            c_in = 1 / (sd ** 2 + sigma ** 2).sqrt()
            c_noise = sigma.log() / 4
        elif self.kind == "VPPrecond":
            c_skip, c_out, c_in = 1, -sigma, 1 / (sigma ** 2 + 1).sqrt()
            t = ((self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt() - self.beta_min) / self.beta_d
            c_noise = (self.M - 1) * t
        else:
            c_skip, c_out, c_in, c_noise = 1, sigma, 1, (0.5 * sigma).log()
        f = self.model(c_in * x, c_noise.flatten(), class_labels, augment_labels)
        return c_skip * x + c_out * f.to(torch.float32)


def build_network(config) -> Precond:
    """The same config dicts as `di_jax.nets.build_network` (official `_init_kwargs` + 'precond')."""
    cfg = dict(config)
    kind = cfg["precond"]
    model_type = cfg.get("model_type", "DhariwalUNet" if kind == "EDMPrecond" else "SongUNet")
    c = cfg["img_channels"]
    keys = ("label_dim", "augment_dim", "model_channels", "channel_mult", "channel_mult_emb", "num_blocks",
            "attn_resolutions", "dropout", "label_dropout")
    if model_type == "SongUNet":
        keys += ("embedding_type", "channel_mult_noise", "encoder_type", "decoder_type", "resample_filter")
        cls = SongUNet
    elif model_type == "DhariwalUNet":
        cls = DhariwalUNet
    else:
        raise ValueError(f"unknown model_type {model_type!r}")
    kw = {k: cfg[k] for k in keys if k in cfg}
    unet = cls(cfg["img_resolution"], c, c, **kw)
    wrap = {k: cfg[k] for k in ("sigma_data", "beta_d", "beta_min", "M") if k in cfg}
    return Precond(kind, unet, c, label_dim=cfg.get("label_dim", 0), **wrap)
