"""diffusers model folders (`save_pretrained` layout) -> Flax modules and parameter trees.

    module, params = load_diffusers_model("PixArt-XL-2-512x512/transformer")   # or .../vae
    transformer, t_params, vae, v_params = load_pixart_pipeline("PixArt-XL-2-512x512")

A model folder holds `config.json` and its weights as `diffusion_pytorch_model.safetensors`, as shards
listed by `diffusion_pytorch_model.safetensors.index.json`, or as a torch.save zip
`diffusion_pytorch_model.bin` (read without torch). config.json's `_class_name` picks the model
(`PixArtTransformer2DModel`, or the legacy `Transformer2DModel` with norm_type "ada_norm_single", which
diffusers remaps to it; `AutoencoderKL`); every config key is checked against what the Flax port
implements and anything else is refused. The state_dict is then checked key by key and shape by shape
against the module (before tensor data is read), converted, and checked for NaN / inf.

Key mapping (both models), readable both ways:
  PyTorch `a.b.N.c.weight`                 Flax `a/b_N/c/kernel`  (N: index into one of LIST_MODULES)
  Linear weight [out, in]                  kernel [in, out]
  Conv2d weight [out, in, kh, kw]          kernel [kh, kw, in, out]
  GroupNorm weight [C]                     scale [C]
  bias, scale_shift_table                  same name, same array
Every problem raises a one-line `CheckpointError`.
"""

import json
import os
import re
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from di_jax.convert import catalogue
from di_jax.convert.arguments import bool_arg, path_arg
from di_jax.convert.errors import CheckpointError, clean, describe, exception_text
from di_jax.convert.files import CONFIG_MAX_BYTES, open_regular, read_regular_bytes
from di_jax.convert.safetensors_file import read_safetensors
from di_jax.convert.torch_zip import open_zip, read_torch_save
from di_jax.convert.zip_archive import ZIP_MAGIC
from di_jax.nets.autoencoder_kl import AutoencoderKL
from di_jax.nets.pixart import PixArtTransformer2DModel

__all__ = ["load_diffusers_model", "load_pixart_pipeline", "read_diffusers_config", "build_module",
           "read_folder_state_dict", "state_dict_to_flax", "flax_to_torch_name", "torch_to_flax_path"]

CONFIG_FILE = "config.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
WEIGHTS_BIN = "diffusion_pytorch_model.bin"
INDEX_MAX_BYTES = 16 << 20

# PyTorch ModuleList / Sequential names whose numeric children become `name_N` in Flax.
LIST_MODULES = frozenset({"transformer_blocks", "to_out", "net", "down_blocks", "up_blocks", "resnets", "attentions",
                          "downsamplers", "upsamplers"})
_LIST_CHILD = re.compile(r"^([a-z_]+)_(\d+)$")


# ---------------------------------------------------------------- config.json -> module


def _read_json_object(path: str, what: str) -> dict:
    """The JSON object in the regular file `path` (at most CONFIG_MAX_BYTES); one-line CheckpointError otherwise."""
    raw = read_regular_bytes(path, CONFIG_MAX_BYTES, what)
    try:
        cfg = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({exception_text(e)})") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} holds {describe(cfg)}, not a JSON object")
    return cfg

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v) -> bool:
    return _is_int(v) and v > 0


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _bool(v) -> bool:
    return isinstance(v, bool)


def _exactly(*allowed) -> Callable[[Any], bool]:
    return lambda v: any(v is a or (type(v) is type(a) and v == a) for a in allowed)


def _or_none(check) -> Callable[[Any], bool]:
    return lambda v: v is None or check(v)


def _list_of(check) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, list) and len(v) > 0 and all(check(x) for x in v)


# key -> (check, what it must be, diffusers 0.42.1 default or _NO_DEFAULT); values not understood are refused.
_NO_DEFAULT = object()
PIXART_KEYS = {
    "num_attention_heads": (_positive_int, "a positive int", 16),
    "attention_head_dim": (_positive_int, "a positive int", 72),
    "in_channels": (_positive_int, "a positive int", 4),
    "out_channels": (_or_none(_positive_int), "a positive int or null", 8),
    "num_layers": (_positive_int, "a positive int", 28),
    "dropout": (_exactly(0, 0.0), "0.0 (dropout is not implemented)", 0.0),
    "norm_num_groups": (_positive_int, "a positive int (unused by PixArt)", 32),
    "cross_attention_dim": (_or_none(_positive_int), "a positive int", 1152),
    "attention_bias": (_bool, "true or false", True),
    "sample_size": (_positive_int, "a positive int", 128),
    "patch_size": (_positive_int, "a positive int", 2),
    "activation_fn": (_exactly("gelu-approximate"), "'gelu-approximate'", "gelu-approximate"),
    "num_embeds_ada_norm": (_positive_int, "a positive int", 1000),
    "upcast_attention": (_bool, "true or false (softmax always runs in float32)", False),
    "norm_type": (_exactly("ada_norm_single"), "'ada_norm_single'", "ada_norm_single"),
    "norm_elementwise_affine": (_exactly(False), "false", False),
    "norm_eps": (lambda v: _number(v) and v > 0, "a positive number", 1e-6),
    "interpolation_scale": (_or_none(lambda v: _number(v) and v > 0), "a positive number or null", None),
    "use_additional_conditions": (_or_none(_bool), "true, false or null", None),
    "caption_channels": (_or_none(_positive_int), "a positive int or null", None),
    "attention_type": (_exactly("default"), "'default'", "default"),
    # written by older diffusers (Transformer2DModel); accepted only at the value PixArt uses
    "only_cross_attention": (_exactly(False), "false", False),
    "double_self_attention": (_exactly(False), "false", False),
    "use_linear_projection": (_exactly(False), "false", False),
    "num_vector_embeds": (_exactly(None, False), "null", None),
}
VAE_KEYS = {
    "in_channels": (_positive_int, "a positive int", 3),
    "out_channels": (_positive_int, "a positive int", 3),
    "down_block_types": (_list_of(_exactly("DownEncoderBlock2D")), "a list of 'DownEncoderBlock2D'",
                         ["DownEncoderBlock2D"]),
    "up_block_types": (_list_of(_exactly("UpDecoderBlock2D")), "a list of 'UpDecoderBlock2D'", ["UpDecoderBlock2D"]),
    "block_out_channels": (_list_of(_positive_int), "a list of positive ints", [64]),
    "layers_per_block": (_positive_int, "a positive int", 1),
    "act_fn": (_exactly("silu"), "'silu'", "silu"),
    "latent_channels": (_positive_int, "a positive int", 4),
    "norm_num_groups": (_positive_int, "a positive int", 32),
    "sample_size": (_positive_int, "a positive int (unused)", 32),
    "scaling_factor": (lambda v: _number(v) and v > 0, "a positive number", 0.18215),
    "shift_factor": (_or_none(_number), "a number or null", None),
    "latents_mean": (_exactly(None), "null (per-channel latent statistics are not supported)", None),
    "latents_std": (_exactly(None), "null (per-channel latent statistics are not supported)", None),
    "force_upcast": (_bool, "true or false (a precision hint, unused)", True),
    "use_quant_conv": (_bool, "true or false", True),
    "use_post_quant_conv": (_bool, "true or false", True),
    "mid_block_add_attention": (_bool, "true or false", True),
}
CLASS_KEYS = {"PixArtTransformer2DModel": PIXART_KEYS, "AutoencoderKL": VAE_KEYS}


def read_diffusers_config(folder: str) -> tuple[str, dict]:
    """(class name, config with diffusers' defaults filled in) of `folder/config.json`, every key checked.

    Keys starting with `_` (diffusers metadata) are dropped. The legacy `Transformer2DModel` class with
    norm_type "ada_norm_single" is read as `PixArtTransformer2DModel`, as diffusers remaps it.
    """
    path = os.path.join(folder, CONFIG_FILE)
    if not os.path.exists(path):
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}: not a diffusers model folder")
    cfg = _read_json_object(path, "config file")
    name = cfg.get("_class_name")
    if name == "Transformer2DModel" and cfg.get("norm_type") == "ada_norm_single":
        name = "PixArtTransformer2DModel"
    if name not in CLASS_KEYS:
        raise CheckpointError(f"{path}: _class_name {describe(name)} is not supported "
                              f"(supported: {', '.join(CLASS_KEYS)})")
    keys, out = CLASS_KEYS[name], {}
    for key, value in cfg.items():
        if not isinstance(key, str) or key.startswith("_"):
            continue
        if key not in keys:
            raise CheckpointError(f"{path}: config key {describe(key)} is unknown to the {name} port")
        check, want, _ = keys[key]
        if not check(value):
            raise CheckpointError(f"{path}: config {key!r} is {describe(value)}; the {name} port supports {want}")
        out[key] = value
    for key, (_, _, default) in keys.items():
        out.setdefault(key, default)
    return name, out


def build_module(class_name: str, cfg: Mapping[str, Any], dtype: Any = jnp.float32, where: str = "config"):
    """The Flax module of a checked config (`read_diffusers_config`); CheckpointError for inconsistent values."""
    if class_name == "PixArtTransformer2DModel":
        inner = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        caption = cfg["caption_channels"]
        cross = cfg["cross_attention_dim"]
        if caption is not None and cross != inner:
            raise CheckpointError(f"{where}: cross_attention_dim {cross} must equal num_attention_heads x "
                                  f"attention_head_dim = {inner} when caption_channels is set")
        if cross is None:
            raise CheckpointError(f"{where}: cross_attention_dim null (no cross-attention) is not supported")
        additional = cfg["use_additional_conditions"]
        if additional is None:
            additional = cfg["sample_size"] == 128   # diffusers: the 1024 px model embeds size and aspect ratio
        if additional and inner % 3:
            raise CheckpointError(f"{where}: use_additional_conditions needs an inner dim divisible by 3; got {inner}")
        if inner % 4:
            raise CheckpointError(f"{where}: the 2-D position embedding needs an inner dim divisible by 4; got {inner}")
        out = cfg["out_channels"] if cfg["out_channels"] is not None else cfg["in_channels"]
        return PixArtTransformer2DModel(
            num_attention_heads=cfg["num_attention_heads"], attention_head_dim=cfg["attention_head_dim"],
            in_channels=cfg["in_channels"], out_channels=out, num_layers=cfg["num_layers"],
            patch_size=cfg["patch_size"], sample_size=cfg["sample_size"], caption_channels=caption,
            cross_attention_dim=cross, attention_bias=cfg["attention_bias"], norm_eps=float(cfg["norm_eps"]),
            interpolation_scale=cfg["interpolation_scale"], use_additional_conditions=bool(additional),
            dtype=jnp.dtype(dtype))
    if class_name == "AutoencoderKL":
        n = len(cfg["block_out_channels"])
        for key in ("down_block_types", "up_block_types"):
            if len(cfg[key]) != n:
                raise CheckpointError(f"{where}: {key} lists {len(cfg[key])} blocks, block_out_channels {n}")
        for c in cfg["block_out_channels"]:
            if c % cfg["norm_num_groups"]:
                raise CheckpointError(f"{where}: block_out_channels {c} is not divisible by norm_num_groups "
                                      f"{cfg['norm_num_groups']}")
        return AutoencoderKL(
            in_channels=cfg["in_channels"], out_channels=cfg["out_channels"], latent_channels=cfg["latent_channels"],
            block_out_channels=tuple(cfg["block_out_channels"]), layers_per_block=cfg["layers_per_block"],
            norm_num_groups=cfg["norm_num_groups"], use_quant_conv=cfg["use_quant_conv"],
            use_post_quant_conv=cfg["use_post_quant_conv"], mid_block_add_attention=cfg["mid_block_add_attention"],
            scaling_factor=float(cfg["scaling_factor"]), shift_factor=cfg["shift_factor"], dtype=jnp.dtype(dtype))
    raise CheckpointError(f"{where}: _class_name {describe(class_name)} is not supported")


def expected_shapes(module) -> dict:
    """Flax path tuple -> shape of every parameter of `module` (abstract init: nothing is computed)."""
    if isinstance(module, PixArtTransformer2DModel):
        p, c = module.patch_size, module.in_channels
        text = module.caption_channels or module.cross_attention_dim
        args = (jnp.zeros((1, c, p, p)), jnp.zeros((1, 1, text)), jnp.zeros((1,)), jnp.ones((1, 1)))
        extra = dict(resolution=jnp.ones((1, 2)), aspect_ratio=jnp.ones((1, 1))) if module.use_additional_conditions \
            else {}
    else:
        f = module.downsampling
        args, extra = (jnp.zeros((1, module.in_channels, f, f)),), {}
    tree = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args, **extra))["params"]
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


# ---------------------------------------------------------------- the key table

def torch_to_flax_path(key: str, ndim: int) -> "tuple[str, ...] | None":
    """Flax path of a PyTorch state_dict key of a tensor of rank `ndim` (None if the key cannot be one of
    the port's: a numeric part not under one of LIST_MODULES, an empty part). `weight` becomes `kernel`
    (Linear, Conv2d: rank 2 or 4) or `scale` (norms: rank 1)."""
    parts = key.split(".")
    out: list[str] = []
    for part in parts:
        if part.isdigit() and part.isascii():
            if not out or out[-1] not in LIST_MODULES:
                return None
            out[-1] = f"{out[-1]}_{int(part)}"
        elif not part:
            return None
        else:
            out.append(part)
    if out and out[-1] == "weight":
        out[-1] = {1: "scale", 2: "kernel", 4: "kernel"}.get(ndim, "weight")
    return tuple(out) if len(out) >= 2 or out == ["scale_shift_table"] else None


def flax_to_torch_name(path: tuple) -> str:
    """PyTorch state_dict key of a Flax parameter path (`kernel` / `scale` -> `weight`)."""
    parts = []
    for seg in path[:-1]:
        m = _LIST_CHILD.match(seg)
        parts.append(f"{m.group(1)}.{m.group(2)}" if m and m.group(1) in LIST_MODULES else seg)
    leaf = path[-1]
    parts.append("weight" if leaf in ("kernel", "scale") else leaf)
    return ".".join(parts)


def _torch_shape(path: tuple, shape: tuple) -> tuple:
    if path[-1] == "kernel" and len(shape) == 2:
        return shape[::-1]
    if path[-1] == "kernel" and len(shape) == 4:
        kh, kw, cin, cout = shape
        return cout, cin, kh, kw
    return shape


def _to_flax_array(path: tuple, array: np.ndarray) -> np.ndarray:
    if path[-1] == "kernel" and array.ndim == 2:
        return np.ascontiguousarray(array.T)
    if path[-1] == "kernel" and array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    return array


def check_state_dict(shapes: Mapping[str, tuple], dtypes: Mapping[str, Any], expected: Mapping[tuple, tuple],
                     where: str) -> dict:
    """torch key -> Flax path, after checking that the keys are exactly the module's with its shapes."""
    want = {flax_to_torch_name(path): (path, _torch_shape(path, s)) for path, s in expected.items()}
    missing = [k for k in want if k not in shapes]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"{where} lacks tensor {clean(missing[0], 120)!r}{more}")
    unexpected = [k for k in shapes if k not in want]
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise CheckpointError(f"{where} has unexpected tensor {clean(str(unexpected[0]), 120)!r}{more}")
    for key, (path, shape) in want.items():
        if tuple(shapes[key]) != shape:
            raise CheckpointError(f"{where}: tensor {clean(key, 120)!r} has shape {tuple(shapes[key])}, "
                                  f"the config needs {shape}")
        if np.dtype(dtypes[key]).kind != "f":
            raise CheckpointError(f"{where}: tensor {clean(key, 120)!r} has dtype {dtypes[key]}, expected floating "
                                  "point")
        if torch_to_flax_path(key, len(shape)) != path:   # the table is its own inverse on every key the module has
            raise CheckpointError(f"internal: key table does not round-trip {clean(key, 120)!r}")
    return {k: path for k, (path, _) in want.items()}


def state_dict_to_flax(state_dict: Mapping[str, np.ndarray], module, where: str = "state_dict",
                       allow_nonfinite: bool = False) -> dict:
    """Nested Flax params (float32 numpy) of a PyTorch state_dict for `module`, strictly checked."""
    shapes = getattr(state_dict, "shapes", None) or {k: np.shape(v) for k, v in state_dict.items()}
    dtypes = getattr(state_dict, "dtypes", None) or {k: np.asarray(v).dtype for k, v in state_dict.items()}
    table = check_state_dict(shapes, dtypes, expected_shapes(module), where)
    arrays = state_dict.load() if hasattr(state_dict, "load") else dict(state_dict)
    catalogue.check_values(arrays, allow_nonfinite, where=where)
    params: dict = {}
    for key, path in table.items():
        node = params
        for seg in path[:-1]:
            node = node.setdefault(seg, {})
        node[path[-1]] = _to_flax_array(path, np.asarray(arrays[key], np.float32))
    return params


# ---------------------------------------------------------------- weights in a folder

class _ShardedTensors(Mapping):
    """A lazy state_dict over the safetensors shards named by an index.json weight map."""

    def __init__(self, readers: dict, owner: dict):
        self._readers, self._owner = readers, owner
        self.shapes = {k: readers[f].shapes[k] for k, f in owner.items()}
        self.dtypes = {k: readers[f].dtypes[k] for k, f in owner.items()}

    def __getitem__(self, key):
        return self._readers[self._owner[key]][key]

    def __iter__(self):
        return iter(self._owner)

    def __len__(self):
        return len(self._owner)

    def load(self) -> dict:
        out = {}
        for reader in self._readers.values():
            out.update(reader.load())
        return {k: out[k] for k in self._owner}


def _read_index(folder: str) -> _ShardedTensors:
    path = os.path.join(folder, WEIGHTS_INDEX)
    raw = read_regular_bytes(path, INDEX_MAX_BYTES, "safetensors index")
    try:
        index = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({exception_text(e)})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path} has no 'weight_map' object of tensor name -> shard file")
    for key, shard in weight_map.items():
        if (not isinstance(shard, str) or not shard.endswith(".safetensors") or os.path.basename(shard) != shard
                or shard in (".", "..") or "\\" in shard or "\0" in shard):
            raise CheckpointError(f"{path}: tensor {clean(key, 120)!r} maps to {describe(shard)}, not a "
                                  ".safetensors file in the same folder")
    readers = {shard: read_safetensors(os.path.join(folder, shard))[0] for shard in sorted(set(weight_map.values()))}
    for key, shard in weight_map.items():
        if key not in readers[shard]:
            raise CheckpointError(f"{path}: tensor {clean(key, 120)!r} is not in its shard {clean(shard)}")
    for shard, reader in readers.items():
        stray = [k for k in reader if weight_map.get(k) != shard]
        if stray:
            raise CheckpointError(f"shard {clean(shard)} holds tensor {clean(stray[0], 120)!r}, which {path} "
                                  "does not map to it")
    return _ShardedTensors(readers, dict(weight_map))


def read_folder_state_dict(folder: str) -> tuple[Mapping, str]:
    """(lazy state_dict, file it came from) of a diffusers model folder: safetensors, sharded safetensors
    (index.json) or a torch.save zip `.bin`, in diffusers' order of preference."""
    single, index, binary = (os.path.join(folder, n) for n in (WEIGHTS, WEIGHTS_INDEX, WEIGHTS_BIN))
    if os.path.exists(single):
        return read_safetensors(single)[0], single
    if os.path.exists(index):
        return _read_index(folder), index
    if os.path.exists(binary):
        with open_regular(binary) as f:
            head = f.read(len(ZIP_MAGIC))
        return (open_zip(binary, use_torch=False) if head == ZIP_MAGIC else read_torch_save(binary)), binary
    raise CheckpointError(f"{folder} has none of {WEIGHTS}, {WEIGHTS_INDEX}, {WEIGHTS_BIN}")


def load_diffusers_model(folder: str | os.PathLike, dtype: Any = "float32", allow_nonfinite: bool = False):
    """(Flax module, params) of a diffusers model folder (`_class_name` PixArtTransformer2DModel or AutoencoderKL).

    Args:
      folder: holds config.json and the weights (see `read_folder_state_dict`).
      dtype: compute dtype of the module ("float32", "bfloat16", "float64"); params are float32.
      allow_nonfinite: accept NaN / infinite / |x| > 1e19 weights.
    Raises: CheckpointError (one line) for an unsupported config, a missing / unexpected / misshapen tensor,
      a corrupt file; TypeError for wrong-typed arguments.
    """
    folder = path_arg(folder, "load_diffusers_model", "folder")
    bool_arg(allow_nonfinite, "load_diffusers_model", "allow_nonfinite")
    if not os.path.isdir(folder):
        raise CheckpointError(f"{folder} is not a directory (a diffusers model folder)")
    name, cfg = read_diffusers_config(folder)
    module = build_module(name, cfg, dtype, where=os.path.join(folder, CONFIG_FILE))
    state_dict, source = read_folder_state_dict(folder)
    return module, state_dict_to_flax(state_dict, module, where=source, allow_nonfinite=allow_nonfinite)


def load_pixart_pipeline(folder: str | os.PathLike, dtype: Any = "float32", allow_nonfinite: bool = False):
    """(transformer, transformer_params, vae, vae_params) of a PixArt pipeline folder's `transformer/`
    and `vae/` subfolders (the text encoder is not read: prompts come as precomputed T5 embeddings)."""
    folder = path_arg(folder, "load_pixart_pipeline", "folder")
    parts = []
    for sub, cls in (("transformer", PixArtTransformer2DModel), ("vae", AutoencoderKL)):
        module, params = load_diffusers_model(os.path.join(folder, sub), dtype, allow_nonfinite)
        if not isinstance(module, cls):
            raise CheckpointError(f"{os.path.join(folder, sub)} holds a {type(module).__name__}, not a {cls.__name__}")
        parts += [module, params]
    return tuple(parts)


# ---------------------------------------------------------------- writing a model folder

_PIXART_FIELDS = ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers",
                  "patch_size", "sample_size", "caption_channels", "cross_attention_dim", "attention_bias",
                  "norm_eps", "interpolation_scale", "use_additional_conditions")
_VAE_FIELDS = ("in_channels", "out_channels", "latent_channels", "layers_per_block", "norm_num_groups",
               "use_quant_conv", "use_post_quant_conv", "mid_block_add_attention", "scaling_factor", "shift_factor")


def module_config(module) -> dict:
    """The diffusers config.json of a Flax module (`_class_name` first; fixed architecture keys at the values the
    port implements), such that `build_module(*read_diffusers_config(...))` rebuilds the same module."""
    if isinstance(module, PixArtTransformer2DModel):
        cfg = {k: getattr(module, k) for k in _PIXART_FIELDS}
        cfg.update(dropout=0.0, activation_fn="gelu-approximate", num_embeds_ada_norm=1000, upcast_attention=False,
                   norm_type="ada_norm_single", norm_elementwise_affine=False, attention_type="default")
        name = "PixArtTransformer2DModel"
    elif isinstance(module, AutoencoderKL):
        cfg = {k: getattr(module, k) for k in _VAE_FIELDS}
        n = len(module.block_out_channels)
        cfg.update(block_out_channels=list(module.block_out_channels), act_fn="silu",
                   down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n)
        name = "AutoencoderKL"
    else:
        raise TypeError(f"module_config: a PixArtTransformer2DModel or AutoencoderKL; got {type(module).__name__}")
    return {"_class_name": name, **{k: (float(v) if isinstance(v, np.floating) else v) for k, v in cfg.items()}}


def flax_to_state_dict(params: Mapping) -> dict:
    """PyTorch state_dict (numpy, PyTorch layouts and key names) of a Flax parameter tree of either model."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = tuple(k.key for k in path)
        a = np.asarray(leaf)
        if names[-1] == "kernel" and a.ndim == 2:
            a = a.T
        elif names[-1] == "kernel" and a.ndim == 4:
            a = a.transpose(3, 2, 0, 1)
        out[flax_to_torch_name(names)] = np.ascontiguousarray(a)
    return out


def save_diffusers_model(folder: str | os.PathLike, module, params: Mapping, dtype: Any = np.float32) -> str:
    """Writes `folder/config.json` and `folder/diffusion_pytorch_model.safetensors` (diffusers' save_pretrained
    layout: diffusers' `from_pretrained` and `load_diffusers_model` both read it); returns the folder.

    The parameters are checked against the module's expected shapes first; tensors are stored in `dtype`.
    """
    from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel

    folder = path_arg(folder, "save_diffusers_model", "folder")
    state_dict = {k: v.astype(dtype) for k, v in flax_to_state_dict(params).items()}
    check_state_dict({k: v.shape for k, v in state_dict.items()}, {k: v.dtype for k, v in state_dict.items()},
                     expected_shapes(module), "save_diffusers_model")
    os.makedirs(folder, exist_ok=True)
    save_file(state_dict, os.path.join(folder, WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(folder, CONFIG_FILE), "w") as f:
        json.dump(module_config(module), f, indent=2, sort_keys=True)
    return folder


# ---------------------------------------------------------------- the pipeline's noise schedule

SCHEDULER_DIR, SCHEDULER_FILE = "scheduler", "scheduler_config.json"


def read_scheduler_config(folder: str | os.PathLike) -> "dict | None":
    """The training noise schedule of a pipeline folder's `scheduler/scheduler_config.json`, as the keyword
    arguments of `di_jax.teachers.discrete.linear_alphas_cumprod` (None if the folder has no scheduler/).

    Only what defines ᾱ_t is read (num_train_timesteps, beta_start, beta_end, beta_schedule, prediction_type,
    trained_betas); sampler settings (solver order, timestep spacing, ...) do not concern a teacher. PixArt-α's
    DPMSolverMultistepScheduler config: linear β 1e-4 … 0.02 over 1000 steps, ε prediction.
    """
    path = os.path.join(os.fspath(folder), SCHEDULER_DIR, SCHEDULER_FILE)
    if not os.path.lexists(path):
        return None
    cfg = _read_json_object(path, "scheduler config")
    checks = (("beta_schedule", _exactly("linear"), "'linear' (the schedule PixArt-α was trained with)", "linear"),
              ("prediction_type", _exactly("epsilon"), "'epsilon' (the wrapper recovers x0 from ε)", "epsilon"),
              ("trained_betas", _exactly(None), "null", None),
              ("num_train_timesteps", lambda v: _is_int(v) and v >= 2, "an int >= 2", 1000),
              ("beta_start", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)", 0.0001),
              ("beta_end", lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)", 0.02))
    out = {}
    for key, check, want, default in checks:
        value = cfg.get(key, default)
        if not check(value):
            raise CheckpointError(f"{path}: {key} is {describe(value)}; the discrete teacher supports {want}")
        out[key] = value
    if not out["beta_start"] < out["beta_end"]:
        raise CheckpointError(f"{path}: beta_start {out['beta_start']} must be below beta_end {out['beta_end']}")
    return dict(beta_start=float(out["beta_start"]), beta_end=float(out["beta_end"]),
                num_steps=int(out["num_train_timesteps"]))


def write_scheduler_config(folder: str | os.PathLike, beta_start: float = 0.0001, beta_end: float = 0.02,
                           num_steps: int = 1000) -> str:
    """`folder/scheduler/scheduler_config.json` of a DDPM linear-β ε-prediction schedule (diffusers keys)."""
    sub = os.path.join(os.fspath(folder), SCHEDULER_DIR)
    os.makedirs(sub, exist_ok=True)
    cfg = {"_class_name": "DDPMScheduler", "beta_schedule": "linear", "beta_start": beta_start, "beta_end": beta_end,
           "num_train_timesteps": num_steps, "prediction_type": "epsilon", "trained_betas": None}
    with open(os.path.join(sub, SCHEDULER_FILE), "w") as f:
        json.dump(cfg, f, indent=2)
    return sub


# ---------------------------------------------------------------- folders: which is which

PIPELINE_PARTS = ("transformer", "vae")


def diffusers_kind(path: str | os.PathLike) -> "str | None":
    """'pipeline' (a folder with transformer/config.json), 'model' (config.json naming a diffusers `_class_name`)
    or None (anything else, e.g. an EDM checkpoint or a `di-jax convert` output of one)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return None
    if os.path.isfile(os.path.join(path, "transformer", CONFIG_FILE)):
        return "pipeline"
    cfg = os.path.join(path, CONFIG_FILE)
    if os.path.isfile(cfg) and os.path.getsize(cfg) <= CONFIG_MAX_BYTES:
        try:
            with open(cfg, "rb") as f:
                obj = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError, OSError):
            return None
        if isinstance(obj, dict) and isinstance(obj.get("_class_name"), str):
            return "model"
    return None
