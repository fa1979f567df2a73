"""The official EDM state_dict <-> Flax params table (spec edm_architecture.md sections 5, 10).

Official key                              Flax path (params)                      transform
model.<a>.<b>...weight (4-d, conv)        model/<a>/<b>/.../kernel                OIHW -> HWIO
model.<a>.<b>...weight (2-d, Linear)      model/<a>/<b>/.../kernel                [out,in] -> [in,out]
model.<a>.<b>...weight (1-d, GroupNorm)   model/<a>/<b>/.../scale                 identity
model.<a>.<b>...bias                      model/<a>/<b>/.../bias                  identity
model.map_noise.freqs (Fourier buffer)    model/map_noise/freqs                   identity (stop_gradient)
...resample_filter (buffer)               -- constant, checked against outer(r, r) / (sum r)^2
u (iDDPM buffer)                          -- constant, checked against `iddpm_u(M, C_1, C_2)`

Module names: `enc.16x16_block0` -> `enc_16x16_block0`, `dec.8x8_in0` -> `dec_8x8_in0`; all others keep
their official names. Key order and shapes come from the catalogue of the official network
(`di_jax.convert.catalogue.expected_shapes`).
"""

import collections
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from di_jax.convert import catalogue
from di_jax.convert import config as config_lib
from di_jax.nets import build_network, iddpm_u
from di_jax.nets.layers import resample_filter


def _flax_path(key: str, ndim: int) -> tuple:
    parts = key.split(".")
    if parts[1] in ("enc", "dec"):
        parts = [parts[0], f"{parts[1]}_{parts[2]}"] + parts[3:]
    if parts[-1] == "weight":
        parts[-1] = "scale" if ndim == 1 else "kernel"
    return tuple(parts)


def _to_flax(value: np.ndarray) -> np.ndarray:
    return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T if value.ndim == 2 else value


def _from_flax(value: np.ndarray) -> np.ndarray:
    return value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T if value.ndim == 2 else value


def _constant_buffer(key: str, cfg: Mapping[str, Any]) -> np.ndarray:
    if key == "u":
        return iddpm_u(cfg.get("M", 1000), cfg.get("C_1", 0.001), cfg.get("C_2", 0.008))
    taps = cfg.get("resample_filter", [1, 1]) if cfg["model_type"] == "SongUNet" else [1, 1]
    return resample_filter(taps)[None, None]


def _flax_shapes(cfg) -> dict:
    """Flat {path: shape} of the Flax params, via jax.eval_shape (no allocation)."""
    net = build_network(cfg)
    c, r = cfg["img_channels"], cfg["img_resolution"]
    x = jax.ShapeDtypeStruct((1, c, r, r), np.float32)
    sigma = jax.ShapeDtypeStruct((1,), np.float32)
    shapes = jax.eval_shape(lambda x, s: net.init(jax.random.PRNGKey(0), x, s), x, sigma)["params"]
    return {tuple(getattr(k, "key", k) for k in path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]}


def _raise(problems):
    if problems:
        raise ValueError("state_dict / Flax params mismatch:\n  " + "\n  ".join(problems))


def state_dict_to_flax(state_dict: Mapping[str, Any], config: Mapping[str, Any]) -> dict:
    """Official wrapper state_dict -> Flax params (nested dict of numpy float32). Strict: one ValueError
    lists every missing, unexpected and wrongly shaped key and every buffer that differs from its constant."""
    cfg = config_lib.complete(config)
    expected = catalogue.expected_shapes(cfg)
    flax_shapes = _flax_shapes(cfg)
    problems = [f"missing key {k!r}" for k in expected if k not in state_dict]
    problems += [f"unexpected key {k!r}" for k in state_dict if k not in expected]
    flat = {}
    for key, shape in expected.items():
        if key not in state_dict:
            continue
        value = np.asarray(state_dict[key])
        if value.shape != tuple(shape):
            problems.append(f"key {key!r} has shape {value.shape}, expected {tuple(shape)}")
            continue
        if key == "u" or key.endswith(".resample_filter"):
            const = _constant_buffer(key, cfg)
            if not np.allclose(value, const, rtol=1e-4 if key == "u" else 1e-6, atol=0):  # u: float32 recursion
                problems.append(f"buffer {key!r} differs from the constant the config implies")
            continue
        flat[_flax_path(key, value.ndim)] = _to_flax(value).astype(np.float32)
    if not problems:
        problems += [f"Flax param {'/'.join(p)} not filled" for p in flax_shapes if p not in flat]
        problems += [f"key for {'/'.join(p)} has no Flax param" for p in flat if p not in flax_shapes]
        problems += [f"Flax param {'/'.join(p)}: shape {flat[p].shape} vs module {s}"
                     for p, s in flax_shapes.items() if p in flat and flat[p].shape != s]
    _raise(problems)
    return traverse_util.unflatten_dict(flat)


def flax_to_state_dict(params: Mapping[str, Any], config: Mapping[str, Any]) -> collections.OrderedDict:
    """Flax params -> OrderedDict in the official key order (buffers recomputed; numpy float32)."""
    cfg = config_lib.complete(config)
    expected = catalogue.expected_shapes(cfg)
    flat = {tuple(getattr(k, "key", k) for k in path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    out, used, problems = collections.OrderedDict(), set(), []
    for key, shape in expected.items():
        if key == "u" or key.endswith(".resample_filter"):
            out[key] = _constant_buffer(key, cfg)
            continue
        path = _flax_path(key, len(shape))
        if path not in flat:
            problems.append(f"missing Flax param {'/'.join(path)} (for {key!r})")
            continue
        used.add(path)
        value = _from_flax(flat[path])
        if value.shape != tuple(shape):
            problems.append(f"Flax param {'/'.join(path)} gives {key!r} shape {value.shape}, expected {tuple(shape)}")
            continue
        out[key] = value.astype(np.float32)
    problems += [f"unexpected Flax param {'/'.join(p)}" for p in flat if p not in used]
    _raise(problems)
    return out
