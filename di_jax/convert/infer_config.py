"""Network config of a plain state_dict, inferred from its key names and shapes (spec section 5).

A state_dict does not record its preconditioning wrapper, so `precond` is inferred only for iDDPM
(its `u` buffer); other plain checkpoints need it given explicitly (`--config '{"precond": ...}'`).
Dropout cannot be read from weights: inferred configs leave it at the class default. `resolve`
makes the final config of any checkpoint (recorded or inferred, then overrides) and checks it
against the tensors (`check_against_weights`).
"""

import math
import re
from typing import Any, Mapping

import numpy as np

from di_jax.convert.config import check_keys, complete
from di_jax.convert.errors import CheckpointError, describe
from di_jax.nets import PRECONDS

# Architecture keys that a state_dict determines (checked against a recorded config).
_CHECKED = ("model_type", "img_resolution", "img_channels", "label_dim", "augment_dim", "model_channels",
            "channel_mult", "channel_mult_emb", "num_blocks", "channel_mult_noise", "embedding_type",
            "encoder_type", "decoder_type", "resample_filter")

# Bounded digit runs: a hostile key with thousands of digits never reaches int().
_LEVEL = re.compile(r"model\.(enc|dec)\.(\d{1,5})x(\d{1,5})_([a-z_]+?)(\d{0,4})\.")


def _shape(sd, key) -> tuple:
    return tuple(sd[key].shape)


def infer_config(sd: Mapping[str, np.ndarray]) -> dict:
    """Architecture of an EDM wrapper's state_dict, read from key names and shapes (section 5).

    Returns the inferred keys only (plus `precond` for iDDPM); `complete` fills the rest.
    """
    strays = [k for k in sd if k != "u" and not k.startswith("model.")]
    if strays:
        raise CheckpointError(f"not an EDM network state_dict: {len(strays)} keys lack the 'model.' "
                              f"prefix (e.g. {describe(strays[0])})")
    if "model.out_conv.weight" in sd:
        model_type = "DhariwalUNet"
    elif any(k.endswith("_aux_conv.weight") for k in sd):
        model_type = "SongUNet"
    else:
        raise CheckpointError("not an EDM network state_dict: neither DhariwalUNet 'model.out_conv' nor "
                              "SongUNet 'model.dec.*_aux_conv' weights present")
    blocks: dict[tuple[str, int], set] = {}  # (enc|dec, res) -> block indices
    for key in sd:
        m = _LEVEL.match(key)
        if m:
            if m.group(2) != m.group(3):
                raise CheckpointError(f"non-square level name in {describe(key)}")
            names = blocks.setdefault((m.group(1), int(m.group(2))), set())
            if m.group(4) == "block":
                names.add(int(m.group(5)))
    res_all = sorted({r for _, r in blocks}, reverse=True)
    if not res_all:
        raise CheckpointError("not an EDM network state_dict: no 'model.enc.{R}x{R}_*' keys")
    R = res_all[0]
    if res_all != [R >> l for l in range(len(res_all))]:
        raise CheckpointError(f"level resolutions {res_all} are not successive halvings")
    cfg: dict[str, Any] = {"model_type": model_type, "img_resolution": R}
    conv = f"model.enc.{R}x{R}_conv.weight"
    if conv not in sd or len(_shape(sd, conv)) != 4:
        raise CheckpointError(f"missing or malformed first encoder conv {conv!r}")
    cfg["img_channels"] = _shape(sd, conv)[1]
    if "model.map_layer0.weight" not in sd:
        raise CheckpointError("missing 'model.map_layer0.weight'")
    emb, noise = _shape(sd, "model.map_layer0.weight")
    mc = noise if model_type == "DhariwalUNet" else _shape(sd, conv)[0]
    cfg["model_channels"] = mc
    cfg["channel_mult_emb"] = _ratio(emb, mc, "embedding width")
    if model_type == "SongUNet":
        cfg["channel_mult_noise"] = _ratio(noise, mc, "noise-embedding width")
    dec_blocks = blocks.get(("dec", R), set())
    if not dec_blocks or dec_blocks != set(range(len(dec_blocks))):
        raise CheckpointError(f"decoder blocks at {R}x{R} are missing or not numbered 0..n")
    cfg["num_blocks"] = len(dec_blocks) - 1
    mult = []
    for r in res_all:
        key = f"model.dec.{r}x{r}_block0.conv0.weight"
        if key not in sd:
            raise CheckpointError(f"missing {key!r}")
        mult.append(_ratio(_shape(sd, key)[0], mc, f"{r}x{r} block width"))
    cfg["channel_mult"] = mult
    cfg["attn_resolutions"] = sorted({int(m.group(2)) for k in sd if (m := _LEVEL.match(k))
                                      and m.group(4) == "block" and k.endswith(".qkv.weight")}, reverse=True)
    cfg["label_dim"] = _shape(sd, "model.map_label.weight")[1] if "model.map_label.weight" in sd else 0
    cfg["augment_dim"] = _shape(sd, "model.map_augment.weight")[1] if "model.map_augment.weight" in sd else 0
    if model_type == "SongUNet":
        cfg["embedding_type"] = "fourier" if "model.map_noise.freqs" in sd else "positional"
        cfg["encoder_type"] = ("residual" if any("_aux_residual." in k for k in sd)
                               else "skip" if any("_aux_skip." in k for k in sd) else "standard")
        skip_dec = any(k.startswith("model.dec.") and ("_aux_up." in k or (
            k.endswith("_aux_conv.weight") and not k.startswith(f"model.dec.{R}x{R}_"))) for k in sd)
        cfg["decoder_type"] = "skip" if skip_dec else "standard"
        filters = [k for k in sd if k.endswith(".resample_filter")]
        if filters:
            cfg["resample_filter"] = _filter_taps(sd[filters[0]], filters[0])
    if "u" in sd:
        cfg["precond"] = "iDDPMPrecond"
    return cfg


def _ratio(n: int, mc: int, what: str) -> int:
    if mc <= 0 or n % mc:
        raise CheckpointError(f"{what} {n} is not a multiple of model_channels {mc}")
    return n // mc


def _filter_taps(f: np.ndarray, key: str) -> list:
    """1-D taps r of the stored filter outer(r, r) / sum(r)^2, scaled so that r[0] = 1."""
    f = np.asarray(f, np.float64)
    if f.ndim != 4 or f.shape[:2] != (1, 1) or f.shape[2] != f.shape[3] or f[0, 0, 0, 0] <= 0:
        raise CheckpointError(f"malformed resample filter {describe(key)} of shape {f.shape}")
    taps = f[0, 0, 0] / f[0, 0, 0, 0]
    if not np.allclose(np.outer(taps, taps) / taps.sum() ** 2, f[0, 0], rtol=1e-5, atol=1e-7):
        raise CheckpointError(f"resample filter {describe(key)} is not separable")
    rounded = np.round(taps)
    return [int(t) for t in rounded] if np.allclose(taps, rounded, atol=1e-4) else taps.tolist()


def check_against_weights(config: Mapping[str, Any], sd: Mapping[str, np.ndarray]) -> None:
    """Raise if `config` (e.g. a pickle's `_init_kwargs`) contradicts what the tensors show."""
    inferred = infer_config(sd)
    diffs = [f"{k}: config {config.get(k)!r}, weights {inferred[k]!r}" for k in _CHECKED
             if k in inferred and config.get(k) != inferred[k]]
    if inferred.get("precond", config["precond"]) != config["precond"]:
        diffs.append(f"precond: config {config['precond']!r}, weights {inferred['precond']!r}")
    if diffs:
        raise CheckpointError("config does not match the checkpoint's tensors: " + "; ".join(diffs))


def resolve(sd: Mapping[str, np.ndarray], recorded: Mapping[str, Any] | None = None,
            override: Mapping[str, Any] | None = None) -> dict:
    """Final config: recorded (`.pkl`) or inferred, then `override` on top; checked against `sd`."""
    override = check_keys(override, "config override") if override is not None else {}
    base = check_keys(recorded, "recorded config") if recorded is not None else infer_config(sd)
    merged = {**base, **override}
    if "precond" not in merged:
        raise CheckpointError("a plain state_dict does not record its preconditioning wrapper; give it "
                              "explicitly, e.g. --config '{\"precond\": \"VPPrecond\"}' (one of "
                              f"{', '.join(PRECONDS)})")
    config = complete(merged)
    check_against_weights(config, sd)
    if isinstance(config.get("sigma_max"), float) and math.isinf(config["sigma_max"]):
        config.pop("sigma_max")  # EDMPrecond's default inf; JSON has no infinity
    return config
