"""Test/experiment helper: write EDM-style `.pkl` snapshots with real torch (needs torch).

Mimics what `torch_utils.persistence` produces (spec edm_architecture.md section 7): every
network object pickles as `torch_utils.persistence._reconstruct_persistent_obj(meta)` with
meta = {type, version, module_src, class_name, state}, `enc`/`dec` are real
`torch.nn.ModuleDict`s pickled by reference, and tensors are real `torch.nn.Parameter`s /
tensors, so torch itself emits `_rebuild_parameter` / `_rebuild_tensor_v2` and legacy
`torch.storage._load_from_bytes` blobs. The official module code is not needed: the tree is
rebuilt from the state_dict key names.
"""

import collections
import contextlib
import pickle
import sys
import types

import numpy as np
import torch

BUFFER_NAMES = ("resample_filter", "freqs", "u")


def _reconstruct_persistent_obj(meta):  # only ever referenced by name while pickling
    raise AssertionError("the writer's stand-in must never be called")


class EasyDict(dict):
    pass


@contextlib.contextmanager
def fake_edm_modules():
    """Make `torch_utils.persistence` and `dnnlib.util` importable so pickle can name them."""
    mods = {name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence",
                                                       "dnnlib", "dnnlib.util")}
    mods["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    mods["dnnlib.util"].EasyDict = EasyDict
    saved = {n: sys.modules.get(n) for n in mods}
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    EasyDict.__module__ = "dnnlib.util"
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class Persistent:
    """An object that pickles the way an EDM `@persistent_class` instance does."""

    def __init__(self, class_name, state, module_src):
        self.class_name, self.state, self.module_src = class_name, state, module_src

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name,
                    state=self.state)
        return _reconstruct_persistent_obj, (meta,)


def _class_name(parent: str, name: str, precond: str, model_type: str) -> str:
    if name == "":
        return precond
    if name == "model":
        return model_type
    if name in ("enc", "dec"):
        return "ModuleDict"
    if name == "map_noise":
        return "PositionalEmbedding"
    if name.startswith("map_") or name == "affine":
        return "Linear"
    if name.startswith("norm") or name.endswith("_norm"):
        return "GroupNorm"
    if parent in ("enc", "dec") and "aux" not in name and not name.endswith("_conv"):
        return "UNetBlock"
    return "Conv2d"


def _state(obj) -> dict:
    return obj.state if isinstance(obj, Persistent) else obj.__dict__


def build_tree(state_dict, precond, init_kwargs, module_src):
    """A persistent-object tree whose walk gives back `state_dict` (same keys, order, values)."""
    model_type = init_kwargs.get("model_type", "SongUNet")
    nodes = {}

    def node(path):
        if path in nodes:
            return nodes[path]
        parent_path, _, name = path.rpartition(".")
        cls = _class_name(parent_path.rpartition(".")[2], name, precond, model_type)
        state = dict(torch.nn.Module().__dict__)  # training flag, _parameters, _buffers, hooks, ...
        for k in ("_parameters", "_buffers", "_modules"):
            state[k] = collections.OrderedDict()
        state["_non_persistent_buffers_set"] = set()
        if cls == "ModuleDict":
            obj = torch.nn.ModuleDict()
            obj.__dict__.update(state)
            state = obj.__dict__
        else:
            obj = Persistent(cls, state, module_src)
            state["_init_args"], state["_init_kwargs"] = (), {}
        if cls == "UNetBlock":
            state["skip_scale"] = np.float64(np.sqrt(0.5))  # numpy scalars occur as attributes
            state["num_heads"] = 1
        nodes[path] = obj
        if path:
            _state(node(parent_path))["_modules"][name] = obj
        return obj

    root = node("")
    root.state["_init_kwargs"] = dict(init_kwargs)
    for key, value in state_dict.items():
        path, _, leaf = key.rpartition(".")
        st = _state(node(path))
        tensor = torch.from_numpy(np.array(value))
        if leaf in BUFFER_NAMES:
            st["_buffers"][leaf] = tensor
        else:
            st["_parameters"][leaf] = torch.nn.Parameter(tensor, requires_grad=False)
    return root, nodes


def edm_pickle_bytes(state_dict, precond, init_kwargs, module_src, extras=True) -> bytes:
    """Bytes of an EDM snapshot {ema, loss_fn, augment_pipe, dataset_kwargs} holding `state_dict`.

    `extras` adds what real snapshots carry besides the tensors: a non-persistent buffer and a
    None parameter (both absent from state_dict()), a loss object and EasyDict dataset kwargs.
    """
    root, nodes = build_tree(state_dict, precond, init_kwargs, module_src)
    data = {"ema": root}
    if extras:
        model = nodes["model"].state
        model["_buffers"]["scratch"] = torch.zeros(3)
        model["_non_persistent_buffers_set"].add("scratch")
        model["_parameters"]["unused_bias"] = None
        data["loss_fn"] = Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}, module_src)
        data["augment_pipe"] = None
        data["dataset_kwargs"] = EasyDict(class_name="training.dataset.ImageFolderDataset", path="x.zip")
    with fake_edm_modules():
        return pickle.dumps(data, protocol=4)
