"""The harness of the `di-jax` sub-commands that fail in one line (convert, export, sample).

    return run_command(prog, parser, argv[1:], body, messages=lambda: (CheckpointError,))

A bad command line, any exception of `body` and Ctrl-C each print one line `PROG: error: ...` on
stderr and return 2 (130 for Ctrl-C); `--verbose` prints the traceback first. `body(opts)` returns
the text printed on success.
"""

import argparse
import sys
import traceback
from typing import Callable, Sequence, Tuple, Type, Union


class UsageError(Exception):
    """A bad command line: argparse's message, plus the usage string when the parser has one."""


class OneLineParser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing its usage block and exiting."""

    def error(self, message):
        raise UsageError(f"{message} (usage: {self.usage})" if self.usage else message)


def error_line(e: BaseException, messages: Tuple[Type[BaseException], ...] = ()) -> str:
    """One line for an exception. `messages`: types whose message stands alone (the library's own errors);
    others read `Type: message`. str() is taken only of string/number arguments (never of untrusted
    objects a hostile checkpoint could have put into an exception)."""
    plain = not e.args or all(isinstance(a, (str, int, float)) for a in e.args)
    text = " ".join(str(e).split())[:1000] if plain else ""
    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename + ': ' if isinstance(e.filename, str) else ''}{e.strerror}"
    if messages and isinstance(e, messages):
        return text or type(e).__name__
    if isinstance(e, MemoryError):
        return "out of memory (MemoryError)"
    if isinstance(e, RecursionError):
        return "input nested too deeply (RecursionError)"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def run_command(prog: str, parser: argparse.ArgumentParser, args: Sequence[str],
                body: Callable[[argparse.Namespace], str],
                messages: Union[Tuple[Type[BaseException], ...], Callable[[], tuple]] = ()) -> int:
    """Parses `args`, runs `body(opts)` and prints what it returns; returns the exit status.

    Args:
      prog: the program name of the error lines.
      parser: a `OneLineParser` (its --help still prints and exits 0).
      args: the arguments after the program name.
      body: the command; its return value is printed on success.
      messages: exception types whose message is printed alone (see `error_line`), or a function returning
        them, called only on an error (so that --help and usage errors import nothing heavy).
    """
    verbose = "--verbose" in args
    try:
        opts = parser.parse_args(args)
    except UsageError as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    try:
        text = body(opts)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - every failure: one line
        if verbose:
            traceback.print_exc()
        types = messages() if callable(messages) else messages
        print(f"{prog}: error: {' '.join(error_line(e, types).split())}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2
    print(text)
    return 0
