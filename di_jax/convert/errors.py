"""The one error every checkpoint reader raises, and safe wording of untrusted values in its messages.

Messages never contain repr/str of an untrusted structure: `describe` names a type and a size,
`clean` makes a string single-line, length-capped and escaped, `exception_text` gives an
exception's type and first line only when that line cannot echo an untrusted object.
"""

from typing import Any

import numpy as np


class CheckpointError(ValueError):
    """The checkpoint is unreadable, unsafe or does not match what was asked of it."""


class RefusedGlobalError(CheckpointError):
    """The pickle references a global outside the allow-list (a possible code-execution payload)."""


def clean(text: Any, limit: int = 80) -> str:
    """`text` (a str) as a single line of at most `limit` characters, control characters escaped."""
    if not isinstance(text, str):
        return describe(text)
    out, n = [], 0
    for c in text[:limit]:
        part = c if c.isprintable() else repr(c)[1:-1]
        if n + len(part) > limit:
            return "".join(out) + "..."
        out.append(part)
        n += len(part)
    return "".join(out) + ("..." if len(text) > limit else "")


def describe(value: Any) -> str:
    """A short one-line description of an untrusted value: a type and a size, never its repr."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return repr(bool(value)) if value is not None else "None"
    if isinstance(value, (int, np.integer)):
        value = int(value)
        return str(value) if value.bit_length() <= 64 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        if len(value) <= 60:
            return f"'{clean(value, 60)}'"
        return f"'{clean(value, 40)}' (a string of {len(value)} characters)"
    if isinstance(value, (bytes, bytearray)):
        return f"a bytes object of {len(value)} bytes"
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, (tuple, list, dict, set, frozenset)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def exception_text(e: BaseException) -> str:
    """`Type: first line of the message` (escaped, capped), or just `Type` where the message could echo
    an untrusted object: a KeyError (its message is the key's repr), arguments other than strings and
    numbers."""
    name = type(e).__name__
    plain = isinstance(e, (UnicodeDecodeError, UnicodeEncodeError)) or all(
        isinstance(a, (str, int, float)) for a in e.args)
    if isinstance(e, KeyError) or not plain:
        return name
    try:
        lines = str(e).strip().splitlines()
    except ValueError:  # an integer argument beyond the int -> str digit limit
        return name
    return f"{name}: {clean(lines[0], 160)}" if lines else name
