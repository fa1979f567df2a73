"""Pre-scan of a pickle's opcode stream against `PickleLimits`, before anything is unpickled.

`scan_pickle` reads the opcode stream (`pickletools.genops`) and simulates the unpickler's stack,
memo and marks on *sizes*, not values, before anything is built. It refuses, with a one-line
`CheckpointError`, any pickle that would exceed `PickleLimits`: opcodes, objects, items per
container, nesting depth, memo indices, non-string dict/set keys, and the memo-expansion budget
(the tree size of everything pushed again by GET/DUP, summed). A "billion laughs" (`x = (x, x)`
forty times through memo references) therefore fails after about twenty levels and a few hundred
opcodes wherever it sits: it is never built, hashed or printed. Containers may not be modified
after they were referenced (no cycles, no late growth of a shared structure) and only known
dict-like / stateful stand-ins take SETITEMS / BUILD. Known torch names of unsupported tensor kinds
(float8, complex, quantised, sparse, ...) are reported as "dtype X is not supported".

Why a pre-scan rather than hooks in the unpickler: the C unpickler's opcode handlers cannot be
overridden, and its memo is an array resized to twice the largest PUT index (a 10-byte pickle can
ask for 32 GiB); the pure-Python unpickler's dispatch table is private and version-dependent. The
scan uses only the documented opcode stream, sees the whole pickle before a single object exists,
costs ~2 us per opcode, and leaves the fast C unpickler to do the real work on a stream already
known to be bounded.
"""

import pickle
import pickletools
from typing import Any, NamedTuple

from di_jax.convert.errors import CheckpointError, clean, exception_text
from di_jax.convert.tensors import TORCH_DTYPES, unsupported_tensor_global


class PickleLimits(NamedTuple):
    """What one pickle may contain, each limit with >= 4x headroom over real checkpoints.

    Measured on the golden EDM test networks (tests/data; ddpmpp, 211 tensors, written as the
    official persistence code does): ~22k opcodes, ~9k objects, <= 211 items in a container,
    nesting depth 30, no non-string keys, memo expansion ~6k values and ~4 MB of repeated module
    source; torch.save zips need a third of that. The official networks differ from them in channel
    counts and numbers of blocks (a few times more tensors at most), not in depth. Anything within
    the limits is scanned in under 2 s (500k memoised strings, the slowest) and the scan's own
    bookkeeping stays under ~100 MB.
    """

    opcodes: int = 1_000_000          # scan time: ~2 us each
    objects: int = 500_000            # values pushed (not re-pushed from the memo)
    container_items: int = 100_000    # one list / tuple / dict / set; a state_dict has ~1k entries
    depth: int = 200                  # nesting; a recursive consumer (hash, repr, deepcopy) stays
    #                                   far below Python's recursion limit and the C stack
    memo_index: int = 1_000_000       # largest PUT index: the C unpickler allocates 16 bytes per index
    expansion: int = 1_000_000        # sum of the tree sizes of all values pushed by GET / DUP
    expansion_bytes: int = 64 << 20   # sum of their str/bytes lengths, on top of the bytes read so far
    hashed_keys: int = 1_000          # non-string dict keys / set items per container (hash flooding:
    #                                   int/float/tuple hashes are not randomised)


DEFAULT_LIMITS = PickleLimits()

# Stand-ins that may take pickle's BUILD (set state) and SETITEMS after creation. Everything else
# (tensors, storages, persistent records, globals themselves) is immutable to the pickle.
BUILDABLE = frozenset({("collections", "OrderedDict"), ("numpy", "dtype"), ("dnnlib.util", "EasyDict"),
                       ("torch.nn.modules.container", "ModuleDict")})
DICT_LIKE = frozenset({("collections", "OrderedDict"), ("dnnlib.util", "EasyDict")})


class _Node:
    """What the scan knows of one value: tree size (shared references counted each time), str/bytes
    bytes under it, nesting depth, whether it was pushed again from the memo, its kind and origin."""

    __slots__ = ("kind", "size", "nbytes", "depth", "shared", "items", "keys", "origin", "text")

    def __init__(self, kind, origin=None):
        self.kind, self.size, self.nbytes, self.depth, self.shared = kind, 1, 0, 0, False
        self.items, self.keys, self.origin, self.text = 0, 0, origin, None


class _Text:
    """A str / bytes value (immutable; `text`: the string itself when short, for STACK_GLOBAL)."""

    __slots__ = ("kind", "nbytes", "text", "shared")
    size, depth, items, keys, origin = 1, 0, 0, 0, None

    def __init__(self, kind, nbytes, text=None):
        self.kind, self.nbytes, self.text, self.shared = kind, nbytes, text, False


_LEAF = _Node("leaf")  # ints, floats, None, booleans: never modified, so one node serves all
_MUTATORS = {"APPEND": "list", "APPENDS": "list", "SETITEM": "dict", "SETITEMS": "dict", "ADDITEMS": "set",
             "BUILD": "object"}
_STRINGS = ("STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
            "BINUNICODE8")
_BYTES = ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8")
_LEAVES = ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "NONE", "NEWTRUE", "NEWFALSE",
           "FLOAT", "BINFLOAT")
_EMPTY = {"EMPTY_LIST": "list", "EMPTY_DICT": "dict", "EMPTY_SET": "set", "EMPTY_TUPLE": "tuple"}
_FROM_MARK = {"TUPLE": "tuple", "LIST": "list", "DICT": "dict", "FROZENSET": "frozenset"}
_TUPLE_N = {"TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}


class _Scan:
    """The stack machine of `scan_pickle` (see the module docstring): one handler per opcode."""

    def __init__(self, what: str, limits: PickleLimits, start: int):
        self.what, self.limits, self.start = what, limits, start
        self.stack: list = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.objects = self.expansion = self.expansion_bytes = 0
        self.raw_pos = start
        self.finding: str | None = None  # first unsupported tensor kind / dtype seen (reported at the end)
        self.finding_rank = 0
        self.dispatch: dict = {}  # opcode name -> handler, built on first use (a storage pickle uses ~10 of 68)

    @property
    def pos(self) -> int:
        return (self.raw_pos or 0) - self.start

    def fail(self, detail: str) -> CheckpointError:
        return CheckpointError(f"{self.what} refused at byte {self.pos}: {detail}")

    def corrupt(self, detail: str) -> CheckpointError:
        return CheckpointError(f"corrupt {self.what} at byte {self.pos}: {detail}")

    # -- stack helpers
    def pop(self):
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise self.corrupt("stack underflow")
        return self.stack.pop()

    def top(self):
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise self.corrupt("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list:
        if not self.marks:
            raise self.corrupt("no MARK on the stack")
        k = self.marks.pop()
        items = self.stack[k:]
        del self.stack[k:]
        return items

    def push(self, node) -> None:
        self.objects += 1
        if self.objects > self.limits.objects:
            raise self.fail(f"more than {self.limits.objects} objects")
        self.stack.append(node)

    def reuse(self, node) -> None:
        """Push a value again (memo GET, DUP): its whole tree counts against the expansion budget."""
        node.shared = True
        self.expansion += node.size
        self.expansion_bytes += node.nbytes
        if self.expansion > self.limits.expansion:
            raise self.fail(f"memo references expand to more than {self.limits.expansion} values (a "
                            "\"billion laughs\" structure)")
        if self.expansion_bytes > self.limits.expansion_bytes + self.pos:
            raise self.fail(f"memo references repeat more than {self.limits.expansion_bytes + self.pos} bytes "
                            "of strings (a \"billion laughs\" structure)")
        self.stack.append(node)

    # -- containers
    def container(self, kind: str, items: list, origin=None) -> _Node:
        node = _Node(kind, origin)
        self.add(node, items, kind in ("dict", "set", "frozenset"), pairs=kind == "dict")
        return node

    def add(self, node: _Node, items: list, hashed: bool = False, pairs: bool = False) -> None:
        lim = self.limits
        if items:
            node.size += sum(i.size for i in items)
            node.nbytes += sum(i.nbytes for i in items)
            node.depth = max(node.depth, 1 + max(i.depth for i in items))
        node.items += len(items) // 2 if pairs else len(items)
        if node.items > lim.container_items:
            raise self.fail(f"a container of more than {lim.container_items} items")
        if node.depth > lim.depth:
            raise self.fail(f"structures nested more than {lim.depth} levels deep")
        if node.size > lim.opcodes + lim.expansion:  # cannot happen within the other limits
            raise self.fail("a structure too large")
        if hashed:
            keys = items[::2] if pairs else items
            node.keys += sum(1 for k in keys if k.kind not in ("str", "bytes"))
            if node.keys > lim.hashed_keys:
                raise self.fail(f"a dict or set with more than {lim.hashed_keys} non-string keys")

    def mutate(self, op: str, target, items: list) -> None:
        want = _MUTATORS[op]
        ok = target.kind == want or (target.kind == "object" and (
            (want == "dict" and target.origin in DICT_LIKE) or (want == "object" and target.origin in BUILDABLE)))
        if not ok:
            made = ".".join(target.origin) if isinstance(target.origin, tuple) else "an unknown callable"
            on = f"an object made by {clean(made, 80)}" if target.kind == "object" else f"a {target.kind}"
            raise self.fail(f"{op} on {on} is not allowed")
        if target.shared:
            raise self.fail(f"{op} modifies a {target.kind} after it was referenced (a cyclic or "
                            "self-expanding structure)")
        if op == "BUILD":
            self.add(target, items)
        else:
            self.add(target, items, hashed=want in ("dict", "set"), pairs=want == "dict")

    def call(self, func, args: list) -> _Node:
        node = _Node("object", func.origin if func.kind == "global" else None)
        self.add(node, args)
        return node

    def global_(self, module, name) -> _Node:
        if isinstance(module, str) and isinstance(name, str):
            message = unsupported_tensor_global(module, name)
            rank = 2 if module == "torch" and (name in TORCH_DTYPES or name.endswith("Storage")) else 1
            if message and rank > self.finding_rank:  # a named dtype says more than "_rebuild_tensor_v3"
                self.finding, self.finding_rank = message, rank
            return _Node("global", (module, name))
        return _Node("global")

    # -- one handler per opcode (arg: the opcode's argument, decoded by pickletools)
    def _handler(self, name: str):  # noqa: C901  (a table of small closures)
        if name in _LEAVES:
            return lambda arg: self.push(_LEAF)
        if name in _STRINGS:
            return lambda arg: self.push(_Text("str", len(arg), arg if len(arg) <= 256 else None))
        if name in _BYTES:
            return lambda arg: self.push(_Text("bytes", len(arg)))
        if name in ("GET", "BINGET", "LONG_BINGET"):
            return self._get
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            return self._memoize if name == "MEMOIZE" else self._put
        if name == "MARK":
            return lambda arg: self.marks.append(len(self.stack))
        if name in _EMPTY:
            return lambda arg, kind=_EMPTY[name]: self.push(_Node(kind))
        if name in _FROM_MARK:
            return lambda arg, kind=_FROM_MARK[name]: self._from_mark(kind)
        if name in _TUPLE_N:
            return lambda arg, n=_TUPLE_N[name]: self._tuple_n(n)
        if name in ("APPEND", "SETITEM", "BUILD"):
            return lambda arg, op=name: self._mutate_top(op, 2 if op == "SETITEM" else 1)
        if name in ("APPENDS", "SETITEMS", "ADDITEMS"):
            return lambda arg, op=name: self._mutate_from_mark(op)
        simple = {
            "POP": self._pop, "POP_MARK": lambda arg: self.pop_mark(), "DUP": lambda arg: self.reuse(self.top()),
            "GLOBAL": lambda arg: self.push(self.global_(*arg.partition(" ")[::2])),
            "STACK_GLOBAL": self._stack_global,
            "EXT1": lambda arg: self.push(_Node("global")), "EXT2": lambda arg: self.push(_Node("global")),
            "EXT4": lambda arg: self.push(_Node("global")),
            "REDUCE": self._reduce, "NEWOBJ": self._reduce, "NEWOBJ_EX": self._newobj_ex, "OBJ": self._obj,
            "INST": lambda arg: self.push(self.call(self.global_(*arg.partition(" ")[::2]), self.pop_mark())),
            "PERSID": lambda arg: self.push(_Node("object", "persistent id")),
            "BINPERSID": lambda arg: self.push(self.call(_Node("persistent id"), [self.pop()])),
            "NEXT_BUFFER": lambda arg: self.push(_Node("object", "out-of-band buffer")),
            "PROTO": self._proto, "FRAME": lambda arg: None, "READONLY_BUFFER": lambda arg: None,
            "STOP": lambda arg: None,
        }
        if name in simple:
            return simple[name]
        return lambda arg: self._unknown(name)

    def _unknown(self, name):
        raise self.corrupt(f"unknown opcode {clean(name)}")

    def _get(self, arg):
        node = self.memo.get(arg)
        if node is None:
            raise self.corrupt(f"memo entry {arg} is read before it is stored")
        self.reuse(node)

    def _put(self, arg):
        if arg > self.limits.memo_index:
            raise self.fail(f"memo index {arg} above {self.limits.memo_index}")
        self.memo[arg] = self.top()

    def _memoize(self, arg):
        self._put(len(self.memo))

    def _from_mark(self, kind):
        items = self.pop_mark()
        if kind == "dict" and len(items) % 2:
            raise self.corrupt("odd number of items for DICT")
        self.push(self.container(kind, items))

    def _tuple_n(self, n):
        if len(self.stack) < (self.marks[-1] if self.marks else 0) + n:
            raise self.corrupt("stack underflow")
        items = self.stack[-n:]
        del self.stack[-n:]
        self.push(self.container("tuple", items))

    def _mutate_top(self, op, n):
        """APPEND / SETITEM / BUILD: `n` operands on top of the value they modify."""
        if len(self.stack) <= (self.marks[-1] if self.marks else 0) + n:
            raise self.corrupt("stack underflow")
        target, items = self.stack[-1 - n], self.stack[-n:]
        del self.stack[-n:]
        self.mutate(op, target, items)

    def _mutate_from_mark(self, op):
        items = self.pop_mark()
        if op == "SETITEMS" and len(items) % 2:
            raise self.corrupt("odd number of items for SETITEMS")
        self.mutate(op, self.top(), items)

    def _pop(self, arg):
        if self.marks and self.marks[-1] == len(self.stack):
            self.marks.pop()
        else:
            self.pop()

    def _stack_global(self, arg):
        gname, module = self.pop(), self.pop()
        self.push(self.global_(module.text, gname.text))

    def _reduce(self, arg):
        args = self.pop()
        self.push(self.call(self.pop(), [args]))

    def _newobj_ex(self, arg):
        kwargs, args = self.pop(), self.pop()
        self.push(self.call(self.pop(), [args, kwargs]))

    def _obj(self, arg):
        items = self.pop_mark()
        if not items:
            raise self.corrupt("OBJ without a class")
        self.push(self.call(items[0], items[1:]))

    def _proto(self, arg):
        if arg > pickle.HIGHEST_PROTOCOL:
            raise self.corrupt(f"unsupported pickle protocol {arg}")


def scan_pickle(stream, what: str = "pickle", limits: PickleLimits = DEFAULT_LIMITS) -> None:
    """Read one pickle (up to STOP) from `stream` and refuse it if it exceeds `limits` (see module doc).

    Leaves `stream` after the STOP opcode. Raises `CheckpointError` (one line) for a pickle over a
    limit, a corrupt or truncated one, or one naming an unsupported tensor kind / dtype.
    """
    try:
        start = stream.tell()
    except (AttributeError, OSError, ValueError):
        start = 0
    scan = _Scan(what, limits, start)
    dispatch, max_ops = scan.dispatch, limits.opcodes
    try:
        for n, (opcode, arg, pos) in enumerate(pickletools.genops(stream), 1):
            scan.raw_pos = pos
            if n > max_ops:
                raise scan.fail(f"more than {max_ops} opcodes")
            handler = dispatch.get(opcode.name)
            if handler is None:
                handler = dispatch[opcode.name] = scan._handler(opcode.name)
            handler(arg)
    except CheckpointError:
        raise
    except (ValueError, EOFError, OverflowError, MemoryError, IndexError, TypeError) as e:
        raise CheckpointError(f"corrupt or truncated {what} ({exception_text(e)})") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} ({exception_text(e)})") from None
    if scan.finding:
        raise CheckpointError(f"{what}: {scan.finding}")
