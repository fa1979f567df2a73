"""pytorch-fid `pt_inception-2015-12-05` state_dict -> Flax variables of `inception.InceptionV3`.

Strict, like the EDM converter: every tensor of the state_dict is used (BatchNorm's
`num_batches_tracked` counters are the one documented exception: they carry no weights), every
Flax variable is filled, shapes are checked, and all problems are reported in one error.

Key naming is pytorch-fid's (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch5x5_1.bn.running_var`,
`fc.weight`, ...), which torch-fidelity's `weights-inception-2015-12-05` file shares.
Weight files: `.pth`/`.pt` (`torch.save` zip or legacy format, read without torch by
`di_jax.convert.torch_zip`), `.safetensors` or `.npz` holding the same keys.
"""

import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from di_jax.convert.torch_zip import read_torch_save, to_numpy
from di_jax.eval import inception

Variables = dict[str, Any]

_BN = {"scale": ("params", "weight"), "bias": ("params", "bias"),
       "mean": ("batch_stats", "running_mean"), "var": ("batch_stats", "running_var")}
_IGNORED_SUFFIX = ".num_batches_tracked"


class InceptionWeightsError(ValueError):
    """The Inception weight file is missing, unreadable or does not match the network."""


def variable_shapes() -> Variables:
    """Shapes of the Flax variables of `InceptionV3` (no computation)."""
    images = jax.ShapeDtypeStruct((1, inception.SIZE, inception.SIZE, 3), np.uint8)
    shapes = jax.eval_shape(inception.InceptionV3().init, jax.random.key(0), images)
    return jax.tree.map(lambda s: tuple(s.shape), shapes)


def _torch_key(collection: str, path: tuple[str, ...]) -> tuple[str, Any]:
    """Torch key of one Flax leaf and the layout transform to apply to the torch tensor."""
    *module, leaf = path
    prefix = ".".join(module)
    if module and module[-1] == "conv":  # [O, I, kh, kw] -> [kh, kw, I, O]
        return f"{prefix}.weight", lambda w: np.transpose(w, (2, 3, 1, 0))
    if module and module[-1] == "bn":
        want, name = _BN[leaf]
        if want != collection:
            raise AssertionError(f"unexpected BatchNorm leaf {collection}/{'/'.join(path)}")
        return f"{prefix}.{name}", lambda w: w
    if module == ["fc"]:  # torch Linear [out, in] -> [in, out]
        return ("fc.weight", np.transpose) if leaf == "kernel" else ("fc.bias", lambda w: w)
    raise AssertionError(f"no torch key for Flax variable {collection}/{'/'.join(path)}")


def convert_state_dict(state_dict: Mapping[str, Any]) -> Variables:
    """Map a pytorch-fid Inception state_dict (tensors or arrays) to Flax `{'params', 'batch_stats'}`."""
    arrays = {k: to_numpy(v) for k, v in state_dict.items()}
    used, missing, mismatched = set(), [], []
    out: Variables = {}
    for collection, tree in variable_shapes().items():
        flat = {}
        for path, shape in traverse_util.flatten_dict(tree).items():
            key, transform = _torch_key(collection, path)
            if key not in arrays:
                missing.append(key)
                continue
            used.add(key)
            value = transform(arrays[key])
            if value.shape != shape:
                mismatched.append(f"{key}: file {arrays[key].shape} -> {value.shape}, expected {shape}")
                continue
            flat[path] = np.asarray(value, np.float32)
        out[collection] = traverse_util.unflatten_dict(flat)
    unexpected = sorted(k for k in arrays if k not in used and not k.endswith(_IGNORED_SUFFIX))
    if missing or unexpected or mismatched:
        parts = [f"{name} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
                 for name, keys in (("missing", sorted(missing)), ("unexpected", unexpected),
                                    ("mismatched", mismatched)) if keys]
        raise InceptionWeightsError("state_dict does not match the FID InceptionV3: " + "; ".join(parts))
    return out


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a weight file (.pth/.pt torch.save, .safetensors, .npz) into numpy arrays; torch is not needed."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InceptionWeightsError(f"Inception weight file not found: {path} (pytorch-fid's "
                                    "pt_inception-2015-12-05-6726825d.pth is expected)")
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".safetensors":
            from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
            return dict(load_file(path))
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        return dict(read_torch_save(path))
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise InceptionWeightsError(f"cannot read Inception weights {path}: "
                                    f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def load_inception(path: str | os.PathLike) -> Variables:
    """Weight file -> Flax variables for `InceptionV3().apply`.

    Args:
      path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, or a `.safetensors` / `.npz`
        with the same keys.
    Returns: `{'params', 'batch_stats'}` of `inception.InceptionV3`.
    """
    return convert_state_dict(load_state_dict(path))
