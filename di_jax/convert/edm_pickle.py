"""Read official EDM `.pkl` snapshots without torch and without executing their embedded code.

An EDM snapshot is a pickled dict whose `ema` entry is a preconditioning wrapper saved through
`torch_utils.persistence`: every network object is a call `_reconstruct_persistent_obj(meta)`,
where `meta` carries the defining module's source (`module_src`), `class_name` and the instance
`state`. The official loader execs `module_src`; we never do. `_reconstruct_persistent_obj` is
replaced by a function that keeps `class_name` and `state` only, tensors become numpy arrays,
and any global outside the allow-list of spec edm_architecture.md section 7 is refused. The same
machinery (`PersistenceUnpickler`, `load_pickle`, `module_state_dict`, `init_kwargs`) reads
StyleGAN2-ADA snapshots, which use the same format (`stylegan2_pickle`).

The pickle is scanned against `pickle_scan.PickleLimits` before it is loaded (`unpickle.safe_load`),
and the walks over what it holds (the `_modules` tree, `_init_kwargs`) are iterative, bounded and
refuse shared or cyclic structures: a hostile file gives one `CheckpointError` line, in bounded
time and memory.
"""

import collections
import io
import os
import re
from typing import Any, BinaryIO, NamedTuple

import numpy as np

from di_jax.convert.catalogue import describe_layout
from di_jax.convert.errors import CheckpointError, clean, describe
from di_jax.convert.files import BoundedReader, open_regular
from di_jax.convert.tensors import NUMPY_GLOBALS, TENSOR_GLOBALS
from di_jax.convert.unpickle import RestrictedUnpickler, load_legacy_storage, safe_load

StateDict = "collections.OrderedDict[str, np.ndarray]"
# Positional constructor arguments shared by EDMPrecond, VPPrecond, VEPrecond and iDDPMPrecond.
_PRECOND_POSITIONAL = ("img_resolution", "img_channels", "label_dim", "use_fp16")

# Bounds of the walks over an unpickled network (the pickle scan already bounds sizes and depth;
# these make the walks safe on their own). EDM nets have a few hundred modules, 5 levels deep.
MAX_MODULES = 100_000
MAX_MODULE_DEPTH = 64
MAX_NAME = 256                    # characters of one module / parameter / buffer name
MAX_KWARGS_NODES = 100_000        # values in `_init_kwargs` / `_init_args` (config.py then allows 4096)
MAX_KWARGS_DEPTH = 32             # their nesting (config.py then allows 4)
_CLASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}")
_WEIGHT_KINDS = "f"               # float16/32/64 (bfloat16 arrives widened to float32)


class PersistentObject(NamedTuple):
    """What we keep of a `persistence`-pickled object: its class name and instance `__dict__`."""

    class_name: str
    state: dict


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    """Safe stand-in for `torch_utils.persistence._reconstruct_persistent_obj`: ignores `module_src`."""
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise CheckpointError("persistent object record is not a {'type': 'class', ...} dict")
    name, state = meta.get("class_name"), meta.get("state")
    if not isinstance(name, str) or not _CLASS_NAME.fullmatch(name):
        raise CheckpointError(f"persistent object record has class_name {describe(name)}, not a class name")
    if not isinstance(state, dict):
        raise CheckpointError(f"persistent object record for {name} has state {describe(state)}, not a dict")
    return PersistentObject(name, state)


class ModuleDict:
    """Stand-in for `torch.nn.modules.container.ModuleDict`: keeps the pickled `__dict__` only."""

    class_name = "ModuleDict"

    def __setstate__(self, state):
        if not isinstance(state, dict):
            raise CheckpointError(f"ModuleDict state is {describe(state)}, not a dict")
        self.state = state


class PersistenceUnpickler(RestrictedUnpickler):
    """The allow-list of `torch_utils.persistence` snapshots (EDM's and StyleGAN2-ADA's: same format)."""

    ALLOWED = {
        **TENSOR_GLOBALS, **NUMPY_GLOBALS,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("torch.nn.modules.container", "ModuleDict"): ModuleDict,
        ("torch.storage", "_load_from_bytes"): load_legacy_storage,
    }
    WHAT = "persistence .pkl"


class _EDMUnpickler(PersistenceUnpickler):
    WHAT = "EDM .pkl"


def load_pickle(source: str | os.PathLike | bytes | BinaryIO,
                unpickler: type[PersistenceUnpickler] = _EDMUnpickler) -> Any:
    """Unpickle a persistence snapshot with the allow-list and limits; returns the top-level object (a dict).

    `source`: a path (a regular file; a FIFO or device is refused without blocking), the bytes of
    the file, or a binary file object. `unpickler`: a `PersistenceUnpickler` subclass (its `WHAT`
    names the file in messages; EDM's by default).
    """
    if isinstance(source, (bytes, bytearray)):
        return safe_load(unpickler, io.BytesIO(bytes(source)))
    if hasattr(source, "read"):
        return safe_load(unpickler, source)
    with open_regular(source) as f:
        try:
            return safe_load(unpickler, BoundedReader(f))  # lengths in the file cannot over-allocate
        except OSError as e:
            raise CheckpointError(f"cannot read {clean(os.fspath(source), 200)}: {e.strerror}") from None


_NAME = re.compile(r"[^\s.]{1,%d}" % MAX_NAME)  # torch forbids "." in names; no whitespace / line breaks


def _name(name: Any, where: str, what: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or not name.isprintable():
        raise CheckpointError(f"module {where} has a {what} named {describe(name)}: not a valid name")
    return name


def module_state_dict(module: Any, prefix: str = "") -> StateDict:
    """`module.state_dict()` of an unpickled module tree (spec section 7): params, buffers, children.

    Iterative pre-order walk (the order of torch's `state_dict()`); refuses, with one line, a module
    reached twice (a shared or cyclic `_modules` chain), more than `MAX_MODULES` modules, nesting
    deeper than `MAX_MODULE_DEPTH`, malformed names, and weights whose dtype is not floating point.
    """
    out: StateDict = collections.OrderedDict()
    seen: set[int] = set()
    stack = [(module, prefix, 0)]
    while stack:
        mod, pre, depth = stack.pop()
        where = clean(pre.rstrip("."), 120) or "<root>"
        if not isinstance(mod, (PersistentObject, ModuleDict)):
            raise CheckpointError(f"module {where} is {describe(mod)}, not a network module")
        if id(mod) in seen:
            raise CheckpointError(f"module {where} appears twice in the module tree (a shared or cyclic "
                                  "_modules chain)")
        seen.add(id(mod))
        if len(seen) > MAX_MODULES:
            raise CheckpointError(f"network has more than {MAX_MODULES} modules")
        if depth > MAX_MODULE_DEPTH:
            raise CheckpointError(f"module {where} is nested more than {MAX_MODULE_DEPTH} levels deep")
        state = getattr(mod, "state", None)
        if not isinstance(state, dict):
            raise CheckpointError(f"module {where} ({mod.class_name}) has no state dict")
        params, buffers, children = (state.get(k, {}) for k in ("_parameters", "_buffers", "_modules"))
        skip = state.get("_non_persistent_buffers_set", set())
        if not all(isinstance(d, dict) for d in (params, buffers, children)):
            raise CheckpointError(f"module {where} ({mod.class_name}) has malformed "
                                  "_parameters/_buffers/_modules")
        if not isinstance(skip, (set, frozenset)) or not all(isinstance(n, str) for n in skip):
            raise CheckpointError(f"module {where} ({mod.class_name}) has _non_persistent_buffers_set "
                                  f"{describe(skip)}, not a set of names")
        tensors = [(n, v, "parameter") for n, v in params.items()]
        tensors += [(n, v, "buffer") for n, v in buffers.items() if not (isinstance(n, str) and n in skip)]
        for name, value, what in tensors:
            key = pre + _name(name, where, what)
            if value is None:
                continue
            if not isinstance(value, np.ndarray):
                raise CheckpointError(f"{clean(key, 120)} is {describe(value)}, not a tensor")
            if value.dtype.kind not in _WEIGHT_KINDS:
                raise CheckpointError(f"{clean(key, 120)}: dtype {value.dtype} is not supported for network "
                                      "weights (expected float16, float32, float64 or bfloat16)")
            if key in out:
                raise CheckpointError(f"{clean(key, 120)} is both a parameter and a buffer")
            out[key] = value
        named = [(_name(n, where, "submodule"), c) for n, c in children.items()]
        stack.extend((child, f"{pre}{name}.", depth + 1) for name, child in reversed(named) if child is not None)
    return out


def to_plain(value: Any, what: str, max_nodes: int = MAX_KWARGS_NODES, max_depth: int = MAX_KWARGS_DEPTH) -> Any:
    """Unpickled values -> plain dicts (str keys), lists, numbers, strings and None; iterative.

    numpy scalars become Python numbers; tuples and dict subclasses become lists and dicts; small
    arrays pass through unchanged (the config check decides). A structure reached from inside
    itself (a cycle), nested deeper than `max_depth`, or holding more than `max_nodes` values
    (shared references counted each time: a "billion laughs") is refused with one line, as is
    anything else (tensors, modules, bytes, sets, ...).
    """
    root: list = [None]
    stack: list = [(value, root, 0, 0, "")]  # (value, parent container, key in parent, depth, path)
    active: set[int] = set()
    nodes = 0
    while stack:
        item = stack.pop()
        if item[0] is _EXIT:
            active.discard(item[1])
            continue
        v, parent, key, depth, path = item
        nodes += 1
        if nodes > max_nodes:
            raise CheckpointError(f"{what} holds more than {max_nodes} values (shared references counted each "
                                  "time): not a network config")
        where = path or "value"
        if isinstance(v, (dict, list, tuple)):
            if id(v) in active:
                raise CheckpointError(f"{what} entry {where} contains itself (a cyclic structure)")
            if depth >= max_depth:
                raise CheckpointError(f"{what} entry {where} is nested more than {max_depth} levels deep")
            active.add(id(v))
            stack.append((_EXIT, id(v)))
            if isinstance(v, dict):
                out: Any = {}
                entries = []
                for k, x in v.items():
                    if not isinstance(k, str):
                        raise CheckpointError(f"{what} entry {where} has a key that is {describe(k)}, not a string")
                    out[k] = None
                    entries.append((x, out, k, depth + 1, f"{path}.{clean(k, 40)}" if path else clean(k, 40)))
            else:
                out = [None] * len(v)
                entries = [(x, out, i, depth + 1, f"{where}[{i}]") for i, x in enumerate(v)]
            stack.extend(reversed(entries))
            parent[key] = out
        elif v is None or isinstance(v, (bool, int, float, str, np.ndarray)):
            parent[key] = v
        elif isinstance(v, np.generic) and v.dtype.kind in "biuf":
            parent[key] = v.item()
        else:
            raise CheckpointError(f"{what} entry {where} is {describe(v)}, not a plain value")
    return root[0]


_EXIT = object()


def init_kwargs(obj: PersistentObject, positional: tuple[str, ...] = _PRECOND_POSITIONAL, family: str = "EDM") -> dict:
    """Constructor kwargs of a persistent network (`_init_kwargs`, with positional `_init_args` named
    after `positional`, the constructor's parameter order), as plain values."""
    kwargs, args = obj.state.get("_init_kwargs"), obj.state.get("_init_args", ())
    if not isinstance(kwargs, dict) or not isinstance(args, (tuple, list)):
        raise CheckpointError(f"{obj.class_name} has no _init_kwargs: not an {family} persistent network")
    if len(args) > len(positional):
        raise CheckpointError(f"{obj.class_name} was built with {len(args)} positional arguments; "
                              f"only {len(positional)} can be named")
    plain_args = to_plain(list(args), "pickled _init_args")
    plain_kwargs = to_plain(kwargs, "pickled _init_kwargs")
    named = dict(zip(positional, plain_args))
    twice = [k for k in named if k in plain_kwargs]
    if twice:
        raise CheckpointError(f"{obj.class_name} was given {clean(twice[0], 40)} both positionally and by keyword")
    return {**named, **plain_kwargs}


def _not_edm(data: Any) -> CheckpointError:
    if not isinstance(data, dict):
        return CheckpointError(f"pickle is not an EDM snapshot: it holds {describe(data)}, not a dict with an "
                               "'ema' entry")
    layout = describe_layout(data)  # a known other snapshot layout (StyleGAN2-ADA, ...)
    if layout:
        return CheckpointError(layout)
    keys = [k for k in data if isinstance(k, str)]
    shown = ", ".join(clean(k, 30) for k in keys[:6]) + (", ..." if len(data) > 6 else "")
    return CheckpointError(f"pickle is not an EDM snapshot: no 'ema' entry in its top-level dict "
                           f"(entries: {shown or 'none'})")


def read_edm_pickle(source) -> tuple[str, dict, StateDict]:
    """EDM snapshot -> (wrapper class name, its init kwargs, `ema.state_dict()` as numpy arrays)."""
    data = load_pickle(source)
    if not isinstance(data, dict) or "ema" not in data:
        raise _not_edm(data)
    ema = data["ema"]
    if not isinstance(ema, PersistentObject):
        raise CheckpointError(f"'ema' is {describe(ema)}, not an EDM persistent network")
    state_dict = module_state_dict(ema)
    if not state_dict:
        raise CheckpointError(f"'ema' ({ema.class_name}) holds no tensors")
    return ema.class_name, init_kwargs(ema), state_dict
