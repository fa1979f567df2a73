"""A toy MLP generator (`networks.kind == "mlp"`) as flat tensors: '/'-joined Flax names, Flax layouts.

    mlp/dense0/kernel [dim, hidden], mlp/dense0/bias [hidden], ..., mlp/out/kernel [hidden, dim], mlp/out/bias

x0 = out(silu(dense_{depth-1}(... silu(dense0(z))))), z ~ N(0, I) of the data's dimension; a Dense
computes x @ kernel + bias. No official PyTorch module exists for it, so only .safetensors is written.
"""

import collections
from typing import Any

import numpy as np
from flax import traverse_util


def tensors(params: Any) -> collections.OrderedDict:
    """The flat '/'-joined param tree, sorted by name (numpy float32)."""
    flat = traverse_util.flatten_dict(params, sep="/")
    return collections.OrderedDict((k, np.asarray(flat[k], np.float32)) for k in sorted(flat))


def metadata(cfg, dim: int) -> dict:
    """The network's description (string values): kind, hidden, depth, dim, activation."""
    return {"kind": "mlp", "hidden": str(int(cfg.hidden)), "depth": str(int(cfg.depth)), "dim": str(int(dim)),
            "activation": "silu"}
