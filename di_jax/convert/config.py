"""Network configs: the typed validator every config from outside goes through, and its JSON forms.

A config is a plain JSON-able dict of the official constructor argument names (spec
edm_architecture.md sections 2-4) plus `precond` (wrapper class name) and `model_type`; one that
a file does not record is inferred from the weights (`infer_config`).

Every config from outside — command-line / API overrides, a pickle's `_init_kwargs`, safetensors
metadata, a converted directory's config.json — goes through the same typed validator
(`check_keys`, called by `complete`): each key has a type (int / float / str / list of ints;
a bool is not an int), a range and, for strings, the allowed values (`SPECS`). The ranges admit
every official preset with a wide margin and bound everything that sizes a loop or an allocation
(`LIMITS`): a bad value is a one-line `CheckpointError` before any network is built or any array
allocated. Values are only ever described in messages through `errors.describe` (type and size,
short strings escaped and truncated), never through repr/str of an untrusted structure.
"""

import json
import math
import os
from typing import Any, Callable, Mapping

import numpy as np

from di_jax.convert import catalogue
from di_jax.convert.errors import CheckpointError, describe
from di_jax.nets import CONFIG_KEYS, DEFAULT_MODEL, PRECONDS, UNET_KEYS, unet_defaults

MODEL_TYPES = tuple(UNET_KEYS)
# Constructor defaults (sections 2 and 3), read from the Flax UNets.
DEFAULTS = {model_type: unet_defaults(model_type) for model_type in MODEL_TYPES}
KNOWN_KEYS = CONFIG_KEYS

# Bounds on what sizes loops and allocations. The official networks (spec section 6) use resolution
# <= 64, model_channels <= 192, channel_mult entries <= 4 over <= 4 levels, num_blocks <= 4,
# label_dim <= 1000, augment_dim 9, M 1000; the bounds leave one to three orders of magnitude.
LIMITS = dict(
    resolution=4096,          # img_resolution and attn_resolutions entries (2^12: beyond any released model)
    img_channels=4096,        # image / latent channels (RGB 3, latents 4-16)
    model_channels=4096,      # base width (official 128-192; EDM2-XXL 448)
    mult=64,                  # channel_mult entries, channel_mult_emb, channel_mult_noise (official <= 4)
    levels=13,                # len(channel_mult): 4096 halves 12 times down to 1x1
    num_blocks=64,            # blocks per level (official 3-4); the key catalogue loops over them
    label_dim=100_000,        # classes (ImageNet-21k has 21,841)
    augment_dim=1024,         # augmentation labels (official 9)
    filter_taps=16,           # resample_filter length (official 2 or 4)
    M=100_000,                # iDDPM grid size (official 1000); `iddpm_u` loops M times in Python
    parameters=1 << 32,       # whole network incl. buffers (4.3e9 elements = 16 GiB float32; EDM2-XXL 1.5e9)
    list_items=64,            # any list value in a config (channel_mult, attn_resolutions, resample_filter)
    nesting=4,                # config -> list -> number is depth 2; deeper structures are refused unread
    nodes=4096,               # values visited in one config (~30 keys, lists <= 64)
    magnitude=1e6,            # |float| of sigma_data, sigma_min/max, resample_filter taps
)
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")


def to_jsonable(value: Any, what: str = "config") -> Any:
    """numpy scalars/arrays, tuples and dict subclasses -> plain JSON types, within `LIMITS`.

    Refuses (one-line `CheckpointError`) non-string keys, anything nested deeper than
    `LIMITS['nesting']`, lists longer than `LIMITS['list_items']` and more than `LIMITS['nodes']`
    values in all: a self-containing, deeply nested or memo-shared ("billion laughs") structure
    is refused after a bounded walk, without hashing, printing or copying it.
    """
    budget = [LIMITS["nodes"]]

    def walk(v, depth, where):
        budget[0] -= 1
        if budget[0] < 0:
            raise CheckpointError(f"{what} holds more than {LIMITS['nodes']} values: not a network config")
        if depth > LIMITS["nesting"]:
            raise CheckpointError(f"{what} is nested more than {LIMITS['nesting']} levels deep at {where!r}: "
                                  "not a network config")
        if isinstance(v, Mapping):
            out = {}
            for k in v:
                if not isinstance(k, str):
                    raise CheckpointError(f"{what} has a key that is {describe(k)}, not a string")
                out[str(k)] = walk(v[k], depth + 1, f"{where}.{k[:40]}" if where else k[:40])
            return out
        if isinstance(v, np.ndarray):
            if v.size > LIMITS["list_items"] or v.ndim > 1 or v.dtype.kind not in "biuf":
                raise CheckpointError(f"{what} entry {where or 'value'!r} is {describe(v)}, not a short list of "
                                      "numbers")
            v = v.tolist()
        if isinstance(v, (list, tuple)):
            if len(v) > LIMITS["list_items"]:
                raise CheckpointError(f"{what} entry {where or 'value'!r} is {describe(v)}: more than "
                                      f"{LIMITS['list_items']}")
            return [walk(x, depth + 1, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, np.generic) and v.dtype.kind in "biuf":
            return v.item()
        if v is None or isinstance(v, (bool, int, float)):
            return v
        if isinstance(v, str):
            return str(v)
        raise CheckpointError(f"{what} entry {where or 'value'!r} is {describe(v)}, not a plain value")

    return walk(value, 0, "")


# ---------------------------------------------------------------- typed validation of every key

Check = Callable[[Any], bool]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _interval(lo, hi, lo_open=False, hi_open=False) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _int(lo: int, hi: int) -> tuple[Check, str]:
    return (lambda v: _is_int(v) and lo <= v <= hi), f"an integer in [{lo}, {hi}]"


def _num(lo: float, hi: float, lo_open=False, hi_open=False, inf=False, null=False) -> tuple[Check, str]:
    def ok(v):
        if null and v is None:
            return True
        if inf and (v == "inf" or (isinstance(v, float) and v == math.inf)):
            return True
        return (_is_num(v) and math.isfinite(v) and (lo < v if lo_open else lo <= v)
                and (v < hi if hi_open else v <= hi))
    desc = f"a finite number in {_interval(lo, hi, lo_open, hi_open)}"
    return ok, desc + (" or Infinity" if inf else "") + (" or null" if null else "")


def _choice(options: tuple) -> tuple[Check, str]:
    return (lambda v: isinstance(v, str) and v in options), "one of " + ", ".join(map(repr, options))


def _bool() -> tuple[Check, str]:
    return (lambda v: isinstance(v, bool)), "true or false"


def _list(item: Check, item_desc: str, min_len: int, max_len: int) -> tuple[Check, str]:
    def ok(v):
        return isinstance(v, list) and min_len <= len(v) <= max_len and all(item(x) for x in v)
    ok.item = item  # lets a message point at the first bad item
    return ok, f"a list of {min_len}..{max_len} {item_desc}"


_L = LIMITS
_POS_FLOAT = _num(0, _L["magnitude"], lo_open=True)
# key -> (check, description). Every key a config may hold has one (asserted below).
SPECS: dict[str, tuple[Check, str]] = {
    "precond": _choice(PRECONDS),
    "model_type": _choice(MODEL_TYPES),
    "img_resolution": _int(1, _L["resolution"]),
    "img_channels": _int(1, _L["img_channels"]),
    "label_dim": _int(0, _L["label_dim"]),
    "augment_dim": _int(0, _L["augment_dim"]),
    "model_channels": _int(1, _L["model_channels"]),
    "channel_mult": _list(lambda x: _is_int(x) and 1 <= x <= _L["mult"], f"integers in [1, {_L['mult']}]",
                          1, _L["levels"]),
    "channel_mult_emb": _int(1, _L["mult"]),
    "channel_mult_noise": _int(1, _L["mult"]),
    "num_blocks": _int(0, _L["num_blocks"]),
    "attn_resolutions": _list(lambda x: _is_int(x) and 1 <= x <= _L["resolution"],
                              f"integers in [1, {_L['resolution']}]", 0, _L["list_items"]),
    "dropout": _num(0, 1),
    "label_dropout": _num(0, 1),
    "embedding_type": _choice(("positional", "fourier")),
    "encoder_type": _choice(("standard", "skip", "residual")),
    "decoder_type": _choice(("standard", "skip")),
    "resample_filter": _list(lambda x: _is_num(x) and math.isfinite(x) and 0 < x <= _L["magnitude"],
                             f"finite numbers in (0, {_L['magnitude']:g}]", 1, _L["filter_taps"]),
    "use_fp16": _bool(),
    "dtype": _choice(COMPUTE_DTYPES),
    "sigma_data": _POS_FLOAT,
    "beta_d": _num(0, 1000, lo_open=True),       # VP: exp(beta_d / 2 + beta_min) must stay finite
    "beta_min": _num(0, 1000),
    "M": _int(1, _L["M"]),
    "epsilon_t": _num(0, 1, lo_open=True),
    "C_1": _num(0, 1, lo_open=True),
    "C_2": _num(0, 1),
    "sigma_min": _num(0, _L["magnitude"], null=True),
    "sigma_max": _num(0, _L["magnitude"], lo_open=True, inf=True, null=True),
}
assert set(SPECS) == set(CONFIG_KEYS), sorted(set(SPECS) ^ set(CONFIG_KEYS))


def check_keys(config: Any, what: str = "config") -> dict:
    """Typed validation of every key present (no defaults filled); returns the JSON-able dict.

    Args:
      config: a mapping of config keys (partial configs, e.g. overrides, are fine).
      what: how messages name the source ("config override", "config.json", ...).
    Raises: CheckpointError (one line) for a non-mapping, an unknown key or a bad value.
    """
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{what} must be an object of config entries; got {describe(config)}")
    config = to_jsonable(config, what)
    unknown = sorted(set(config) - KNOWN_KEYS)
    if unknown:
        shown = [describe(k) for k in unknown[:5]]
        raise CheckpointError(f"unknown config keys [{', '.join(shown)}{', ...' if len(unknown) > 5 else ''}] "
                              f"in {what}; known: {sorted(KNOWN_KEYS)}")
    for key, value in config.items():
        ok, desc = SPECS[key]
        if not ok(value):
            got = describe(value)
            bad = [i for i, x in enumerate(value) if not ok.item(x)] if isinstance(value, list) and hasattr(
                ok, "item") else []
            if bad:
                got += f" whose item {bad[0]} is {describe(value[bad[0]])}"
            raise CheckpointError(f"{what} {key!r} must be {desc}; got {got}")
    return config


def _check_combination(c: dict, what: str) -> None:
    """Cross-key constraints of a completed config, then the size of the network it describes."""
    levels = len(c["channel_mult"])
    if c["img_resolution"] % (1 << (levels - 1)):
        raise CheckpointError(f"{what}: img_resolution {c['img_resolution']} cannot be halved "
                              f"{levels - 1} times for {levels} channel_mult levels")
    noise = c["model_channels"] * (c.get("channel_mult_noise", 1) if c["model_type"] == "SongUNet" else 1)
    if noise % 2:
        raise CheckpointError(f"{what}: the noise embedding width {noise} (model_channels x channel_mult_noise) "
                              "must be even")
    lo, hi = c.get("sigma_min"), c.get("sigma_max")
    if _is_num(lo) and _is_num(hi) and not lo < hi:
        raise CheckpointError(f"{what}: sigma_min {lo:g} must be below sigma_max {hi:g}")
    params, buffers = catalogue.count_parameters(catalogue.expected_shapes(c))
    if params + buffers > LIMITS["parameters"]:
        raise CheckpointError(f"{what} describes a network of {params + buffers:.3g} parameters, more than the "
                              f"{LIMITS['parameters']:.3g} allowed")


def complete(config: Mapping[str, Any], what: str = "config") -> dict:
    """Validate a config and fill the class defaults; returns a new JSON-able dict."""
    config = check_keys(config, what)
    precond = config.get("precond")
    if precond is None:
        raise CheckpointError(f"{what} needs 'precond' (one of {', '.join(PRECONDS)})")
    model_type = config.setdefault("model_type", DEFAULT_MODEL[precond])
    for key in ("img_resolution", "img_channels"):
        if key not in config:
            raise CheckpointError(f"{what} needs a positive integer {key!r}")
    song_only = sorted(set(config) & (set(DEFAULTS["SongUNet"]) - set(DEFAULTS["DhariwalUNet"])))
    if model_type == "DhariwalUNet" and song_only:
        raise CheckpointError(f"config keys {song_only} apply to SongUNet only, not DhariwalUNet")
    config = {**DEFAULTS[model_type], **config}
    _check_combination(config, what)
    return config


def from_init_kwargs(precond: str, init_kwargs: Mapping[str, Any]) -> dict:
    """Config of a `.pkl` snapshot: the wrapper's `_init_kwargs` plus its class name."""
    what = "pickled _init_kwargs"
    return complete({**check_keys(init_kwargs, what), "precond": precond}, what)


def _read_config_file(path: str) -> str:
    """A config file's text: regular files only, at most `files.CONFIG_MAX_BYTES`."""
    from di_jax.convert import files  # pylint: disable=import-outside-toplevel

    data = files.read_regular_bytes(path, files.CONFIG_MAX_BYTES, "config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"config file {path} is not UTF-8 text") from None


def parse_json_object(text: str, what: str = "config") -> dict:
    """A JSON object from text; one-line `CheckpointError` for bad, deeply nested or non-object JSON."""
    try:
        config = json.loads(text)
    except RecursionError:
        raise CheckpointError(f"{what} JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, or an integer literal too long to convert
        raise CheckpointError(f"{what} is not valid JSON ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{what} JSON must be an object; got {describe(config)}")
    return config


def load_json(text_or_path: str | os.PathLike) -> dict:
    """A config given on the command line: a JSON object, or the path of a file holding one.

    A file must be a regular file of at most 1 MiB (not a FIFO, a device such as /dev/zero or a
    directory); the object is checked key by key (`check_keys`).
    """
    if not isinstance(text_or_path, (str, os.PathLike)):
        raise TypeError(f"config must be JSON text or a file path; got {type(text_or_path).__name__}")
    text = os.fspath(text_or_path)
    if not isinstance(text, str):
        text = os.fsdecode(text)
    if not text.lstrip().startswith("{"):
        text = _read_config_file(text)
    return check_keys(parse_json_object(text), "config override")
