"""The official state_dict of a config, key by key: names, order and shapes (spec section 5).

Built by replaying the constructors of spec edm_architecture.md sections 2-4 (module
registration order = state_dict order). Used to check a checkpoint strictly against its config
before any mapping (missing / unexpected / wrong-shape tensors, in one error), and to count
parameters against the published sizes (section 6). Also: the value check every reader applies
(`check_values`: NaN, +-inf and |x| > 1e19 refused by default) and the names of snapshot layouts
that are not EDM diffusion snapshots (`describe_layout`).
"""

import collections
import math
from typing import Mapping

import numpy as np

from di_jax.convert.errors import CheckpointError, clean

Shapes = "collections.OrderedDict[str, tuple[int, ...]]"
BUFFERS = ("resample_filter", "freqs")  # plus iDDPM's top-level `u`


class _Catalogue:
    def __init__(self, config: Mapping):
        self.c, self.keys = config, collections.OrderedDict()
        self.adm = config["model_type"] == "DhariwalUNet"
        self.taps = 2 if self.adm else len(config["resample_filter"])
        self.emb = config["model_channels"] * config["channel_mult_emb"]

    def add(self, key, *shape):
        self.keys[key] = tuple(int(s) for s in shape)

    def linear(self, p, cin, cout, bias=True):
        self.add(f"{p}.weight", cout, cin)
        if bias:
            self.add(f"{p}.bias", cout)

    def conv(self, p, cin, cout, kernel, resample=False):
        if kernel:
            self.add(f"{p}.weight", cout, cin, kernel, kernel)
            self.add(f"{p}.bias", cout)
        if resample:
            self.add(f"{p}.resample_filter", 1, 1, self.taps, self.taps)

    def norm(self, p, ch):
        self.add(f"{p}.weight", ch)
        self.add(f"{p}.bias", ch)

    def block(self, p, cin, cout, up=False, down=False, attention=False):
        """UNetBlock (section 1.6)."""
        heads = (cout // 64 if self.adm else 1) if attention else 0
        self.norm(f"{p}.norm0", cin)
        self.conv(f"{p}.conv0", cin, cout, 3, up or down)
        self.linear(f"{p}.affine", self.emb, cout * (2 if self.adm else 1))
        self.norm(f"{p}.norm1", cout)
        self.conv(f"{p}.conv1", cout, cout, 3)
        if cin != cout or up or down:
            self.conv(f"{p}.skip", cin, cout, 1 if (not self.adm or cin != cout) else 0, up or down)
        if heads:
            self.norm(f"{p}.norm2", cout)
            self.conv(f"{p}.qkv", cout, cout * 3, 1)
            self.conv(f"{p}.proj", cout, cout, 1)


def expected_shapes(config: Mapping) -> Shapes:
    """OrderedDict key -> shape of the official wrapper's state_dict for a completed config."""
    c = config
    cat = _Catalogue(c)
    mc, mults, nb, R = c["model_channels"], list(c["channel_mult"]), c["num_blocks"], c["img_resolution"]
    cin_img = c["img_channels"]
    cout_img = cin_img * (2 if c["precond"] == "iDDPMPrecond" else 1)
    if c["precond"] == "iDDPMPrecond":
        cat.add("u", c.get("M", 1000) + 1)
    m = "model"
    if cat.adm:
        if c["augment_dim"]:
            cat.linear(f"{m}.map_augment", c["augment_dim"], mc, bias=False)
        cat.linear(f"{m}.map_layer0", mc, cat.emb)
        cat.linear(f"{m}.map_layer1", cat.emb, cat.emb)
        if c["label_dim"]:
            cat.linear(f"{m}.map_label", c["label_dim"], cat.emb, bias=False)
    else:
        noise = mc * c["channel_mult_noise"]
        if c["embedding_type"] == "fourier":
            cat.add(f"{m}.map_noise.freqs", noise // 2)
        if c["label_dim"]:
            cat.linear(f"{m}.map_label", c["label_dim"], noise)
        if c["augment_dim"]:
            cat.linear(f"{m}.map_augment", c["augment_dim"], noise, bias=False)
        cat.linear(f"{m}.map_layer0", noise, cat.emb)
        cat.linear(f"{m}.map_layer1", cat.emb, cat.emb)
    attn = set(c["attn_resolutions"])
    enc_type, dec_type = c.get("encoder_type", "standard"), c.get("decoder_type", "standard")
    cout, caux, skips = cin_img, cin_img, []
    for level, mult in enumerate(mults):
        p, res = f"{m}.enc.{R >> level}x{R >> level}", R >> level
        if level == 0:
            cout = mc * mult if cat.adm else mc
            cat.conv(f"{p}_conv", cin_img, cout, 3)
            skips.append(cout)
        else:
            cat.block(f"{p}_down", cout, cout, down=True)
            skips.append(cout)
            if not cat.adm and enc_type == "skip":
                cat.conv(f"{p}_aux_down", caux, caux, 0, resample=True)
                cat.conv(f"{p}_aux_skip", caux, cout, 1)
            if not cat.adm and enc_type == "residual":
                cat.conv(f"{p}_aux_residual", caux, cout, 3, resample=True)
                caux = cout
        for i in range(nb):
            cat.block(f"{p}_block{i}", cout, mc * mult, attention=res in attn)
            cout = mc * mult
            skips.append(cout)
    for level in reversed(range(len(mults))):
        p, res, mult = f"{m}.dec.{R >> level}x{R >> level}", R >> level, mults[level]
        if level == len(mults) - 1:
            cat.block(f"{p}_in0", cout, cout, attention=True)
            cat.block(f"{p}_in1", cout, cout)
        else:
            cat.block(f"{p}_up", cout, cout, up=True)
        for i in range(nb + 1):
            cin = cout + skips.pop()
            cout = mc * mult
            cat.block(f"{p}_block{i}", cin, cout, attention=res in attn and (cat.adm or i == nb))
        if not cat.adm and (dec_type == "skip" or level == 0):
            if dec_type == "skip" and level < len(mults) - 1:
                cat.conv(f"{p}_aux_up", cout_img, cout_img, 0, resample=True)
            cat.norm(f"{p}_aux_norm", cout)
            cat.conv(f"{p}_aux_conv", cout, cout_img, 3)
    if cat.adm:
        cat.norm(f"{m}.out_norm", cout)
        cat.conv(f"{m}.out_conv", cout, cout_img, 3)
    return cat.keys


def is_buffer(key: str) -> bool:
    return key == "u" or key.rsplit(".", 1)[-1] in BUFFERS


def count_parameters(shapes: Mapping[str, tuple]) -> tuple[int, int]:
    """(parameters, buffer elements) of a key -> shape table."""
    sizes = {k: math.prod(s) for k, s in shapes.items()}
    params = sum(n for k, n in sizes.items() if not is_buffer(k))
    return params, sum(sizes.values()) - params


def check_state_dict(state_dict: Mapping, config: Mapping) -> None:
    """Raise one `CheckpointError` listing every missing, unexpected and wrongly shaped tensor."""
    want = expected_shapes(config)
    missing = [k for k in want if k not in state_dict]
    unexpected = [clean(k, 120) for k in state_dict if k not in want]  # untrusted keys
    wrong = [f"{k} {tuple(state_dict[k].shape)} (expected {want[k]})" for k in want
             if k in state_dict and tuple(state_dict[k].shape) != want[k]]
    if missing or unexpected or wrong:
        parts = [f"{n} {what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                 if (n := len(keys))]
        raise CheckpointError(f"checkpoint does not match the {config['precond']}/{config['model_type']} "
                              f"config: " + "; ".join(parts))


# ---------------------------------------------------------------- tensor values

# |x| above this is refused like NaN/inf: its square overflows float32 (max 3.4e38), so the first
# GroupNorm variance or attention logit it reaches is inf/NaN; no trained weight comes near it.
MAX_ABS_VALUE = 1e19
_CHUNK = 1 << 22  # elements scanned at a time: bounded temporaries (16 MiB) for any tensor size


def value_problems(tensors: Mapping) -> "tuple[int, int, int, int, str | None]":
    """(NaN, +-inf, |x| > MAX_ABS_VALUE, tensors affected, first affected key) over floating tensors."""
    nan = inf = big = affected = 0
    first = None
    for key, value in tensors.items():
        a = getattr(value, "dtype", None)
        if a is None or a.kind not in "fc":
            continue
        flat = value.reshape(-1)
        mag_max = np.finfo(a).max  # float16 cannot even hold the bound: there only NaN / inf count
        limit = np.asarray(min(MAX_ABS_VALUE, float(mag_max)), np.abs(flat[:1]).dtype)
        t_nan = t_inf = t_big = 0
        for i in range(0, flat.size, _CHUNK):
            part = flat[i:i + _CHUNK]
            mag = np.abs(part)
            bad = ~(mag <= limit)  # NaN compares False: counted as bad
            if bad.any():
                n_nan = int(np.count_nonzero(np.isnan(part)))
                n_inf = int(np.count_nonzero(np.isinf(part)))
                t_nan, t_inf = t_nan + n_nan, t_inf + n_inf
                t_big += int(np.count_nonzero(bad)) - n_nan - n_inf
        if t_nan or t_inf or t_big:
            nan, inf, big, affected = nan + t_nan, inf + t_inf, big + t_big, affected + 1
            first = first if first is not None else key
    return nan, inf, big, affected, first


def check_values(tensors: Mapping, allow_nonfinite: bool = False, where: str = "checkpoint") -> None:
    """Refuse NaN, +-inf and |x| > MAX_ABS_VALUE in floating tensors unless `allow_nonfinite`."""
    if allow_nonfinite:
        return
    nan, inf, big, affected, first = value_problems(tensors)
    if nan or inf or big:
        bound = f"{MAX_ABS_VALUE:.0e}".replace("e+", "e")
        counts = ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "infinite"), (big, f"with |x| > {bound}"))
                           if n)
        raise CheckpointError(f"{where} holds {nan + inf + big} unusable weight values ({counts}) in {affected} "
                              f"tensor(s), first {str(first)[:120]!r}; pass allow_nonfinite=True "
                              "(di-jax convert --allow-nonfinite) to load them anyway")


# ---------------------------------------------------------------- other snapshot layouts

# Top-level keys of pickled training snapshots that are not EDM diffusion snapshots: layout name,
# keys that identify it (all present), what reads it.
FOREIGN_LAYOUTS = (
    ("a StyleGAN2-ADA / StyleGAN3 network snapshot", ("G", "D", "G_ema"),
     "DI's GAN refinement reader (issue 16) will read it; the diffusion-teacher converter does not"),
)


def describe_layout(top: object) -> "str | None":
    """One line naming a known non-EDM snapshot layout from an unpickled top-level dict, else None.

    Looks only at string keys (membership tests, no hashing or printing of untrusted keys).
    """
    if not isinstance(top, dict):
        return None
    for name, keys, reader in FOREIGN_LAYOUTS:
        if all(k in top for k in keys):
            present = []
            for k in top:  # at most 8 short string keys named
                if isinstance(k, str) and len(k) <= 40 and k.isprintable():
                    present.append(k)
                    if len(present) == 8:
                        break
            return f"pickle is {name} (top-level keys {', '.join(present)}), not an EDM diffusion snapshot: {reader}"
    return None
