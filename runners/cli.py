"""The front door every runner goes through: one exit-code contract, one-line messages.

    exit 0    the work was done (a policy found or evaluated, a study run, a file written)
    exit 1    infeasible (the message names the resource), or the work failed (a solver error,
              an unexpected error: one line, ``--debug`` shows the traceback)
    exit 2    bad input: one line naming the field or flag and the value
    exit 130  interrupted (SIGINT, Ctrl-C)        exit 143  terminated (SIGTERM)

A runner defines ``run(argv) -> int`` and ends with ``main_guard(run)``. The guard turns
SIGTERM into an exception (:class:`Terminated`) so that ``finally`` blocks and context
managers clean up exactly as on Ctrl-C, maps the project's errors onto the exit codes,
and treats a closed stdout (``... --json | head -c 10``) as the reader's choice: silence,
and the exit status of the work.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
import unicodedata
from typing import Callable

from model.errors import Infeasible, InputError, SolverError, excerpt

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143
DEBUG_ENV = "MOE_OFFLOAD_DEBUG"


class Terminated(BaseException):
    """SIGTERM arrived (a BaseException, like KeyboardInterrupt: ``except Exception`` does not swallow it)."""


def one_line(text: str) -> str:
    """``text`` with every character that could break or hide a line escaped (newlines, other
    control characters, Unicode line and paragraph separators): a message is one line, whatever
    the input file's keys or values hold."""
    return "".join(repr(ch)[1:-1] if ch != " " and (ch.isspace() or unicodedata.category(ch)[0] in "CZ") else ch
                   for ch in text)


def say(text: str) -> None:
    """One line on stderr (a closed stderr is ignored)."""
    try:
        print(one_line(text), file=sys.stderr, flush=True)
    except (BrokenPipeError, OSError, ValueError):
        pass


def input_error_line(exc: InputError, field: str | None = None) -> str:
    return f"error: {field or exc.field} = {excerpt(exc.value)}: {exc.problem}"


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error and exit status 2 (no usage dump): the runners' bad-input contract."""

    MAX_MESSAGE_CHARS = 400   # argparse quotes the whole value ("invalid int value: '999...'")

    def error(self, message: str):
        if len(message) > self.MAX_MESSAGE_CHARS:
            half = self.MAX_MESSAGE_CHARS // 2
            message = f"{message[:half]}...({len(message) - 2 * half} characters)...{message[-half:]}"
        self.exit(EXIT_BAD_INPUT, one_line(f"error: {message} (see --help)") + "\n")


def add_debug_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true",
                   help=f"show the Python traceback of an unexpected error (or set {DEBUG_ENV}=1)")


def _debug_requested(argv) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _raise_terminated(signum, frame):
    raise Terminated()


def stdout_closed() -> None:
    """Call on a BrokenPipeError from printing: later output goes nowhere, quietly."""
    _silence_stdout()


def _silence_stdout() -> None:
    """After the reader closed stdout: point fd 1 at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def guarded(run: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run ``run(argv)`` under the contract and return its exit status (no ``sys.exit``)."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:   # not the main thread: leave signals alone
        previous = None
    debug = _debug_requested(argv)
    code = None   # until run() returns
    try:
        code = _outcome(run, argv, debug)
    except KeyboardInterrupt:   # a second Ctrl-C while the first outcome was being reported
        code = EXIT_INTERRUPTED
    except Terminated:
        code = EXIT_TERMINATED
    finally:
        if previous is not None:
            try:
                signal.signal(signal.SIGTERM, previous)
            except (ValueError, TypeError):
                pass
    return int(code or 0)


def _outcome(run, argv, debug: bool) -> int:
    code = None   # until run() returns
    try:
        code = run(argv)
        code = EXIT_OK if code is None else code
        sys.stdout.flush()
    except KeyboardInterrupt as exc:
        say("interrupted" + (f": {exc}" if str(exc) else ""))
        code = EXIT_INTERRUPTED
    except Terminated as exc:
        say("terminated" + (f": {exc}" if str(exc) else ""))
        code = EXIT_TERMINATED
    except BrokenPipeError:
        # the reader closed stdout while we printed: the work was done (a runner that prints a
        # failure's report first catches it itself, with stdout_closed(), to keep its status)
        _silence_stdout()
        code = EXIT_OK if code is None else code
    except InputError as exc:
        say(input_error_line(exc))
        code = EXIT_BAD_INPUT
    except Infeasible as exc:
        for reason in exc.reasons:
            say(f"infeasible: {reason}")
        code = EXIT_FAILED
    except SolverError as exc:
        say(f"error: {exc}")
        code = EXIT_FAILED
    except SystemExit as exc:   # argparse's --help (0) and its one-line errors (2)
        code = exc.code if isinstance(exc.code, int) else (EXIT_OK if exc.code is None else EXIT_FAILED)
    except MemoryError:
        say("error: out of memory (the input asks for more than this machine has)")
        code = EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - the contract: no traceback reaches a user
        if debug:
            traceback.print_exc()
        say(f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            + ("" if debug else " (run again with --debug for the traceback)"))
        code = EXIT_FAILED
    return code


def main_guard(run: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """``sys.exit(guarded(run, argv))``: the last line of every runner."""
    code = guarded(run, argv)
    try:
        if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):   # no second message or traceback on the way out
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sys.stdout.flush()
    except (BrokenPipeError, OSError, ValueError):
        _silence_stdout()
    sys.exit(code)
