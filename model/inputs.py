"""One input layer for every file the program reads (scenario, preset, hf_config, routing trace,
study file, measurements CSV).

Every reader goes through :func:`open_regular` / :func:`read_text`, which

* accept regular files only (a FIFO, ``/dev/zero`` or a directory would be read forever or
  make no sense): the check is on the opened descriptor, so a path swapped after the check
  cannot slip through;
* cap the size (``max_bytes``; each kind of file has its own cap, sized for real inputs);
* decode UTF-8 (a BOM is allowed), naming the line of the first bad byte.

:func:`load_yaml` composes the YAML node graph first and counts what it would expand to:
anchors and aliases are allowed (scenarios use them), but their expansion is bounded
(:data:`YAML_MAX_NODES`) and a recursive alias is refused, before any Python object is built.
Duplicate mapping keys are refused too (PyYAML keeps the last one silently).
:func:`load_json` bounds nesting depth. :func:`excerpt` quotes a value in an error message:
bounded, escaped, one line, and never by calling ``repr`` on something huge.

Every problem raises :class:`~model.errors.InputError` naming the field and the path.
"""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import InputError, excerpt

KIB, MIB = 1024, 1024 * 1024
# Caps, sized for real inputs with a wide margin.
SCENARIO_MAX_BYTES = 4 * MIB         # a scenario or preset is a few KiB; routing rows for 100 layers x 256 experts ~0.5 MiB
CONFIG_MAX_BYTES = 4 * MIB           # a Hugging Face config.json is a few KiB
STUDY_MAX_BYTES = 4 * MIB
CSV_MAX_BYTES = 64 * MIB             # measurements: a row is ~200 bytes
TRACE_MAX_BYTES = 2 * 1024 * MIB     # a routing trace: 10 million token choices as CSV is ~150 MiB
YAML_MAX_NODES = 200_000             # nodes after alias expansion (a scenario has a few hundred)
JSON_MAX_DEPTH = 64


def _size_text(n: int) -> str:
    return f"{n / MIB:.0f} MiB" if n >= MIB else f"{n / KIB:.0f} KiB"


def open_regular(path: str | Path, field: str, max_bytes: int):
    """Open ``path`` for binary reading if it is a regular file of at most ``max_bytes``."""
    p = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer; regular files ignore it
        fd = os.open(p, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InputError(field, str(path), "file not found") from None
    except IsADirectoryError:
        raise InputError(field, str(path), "is a directory, not a file") from None
    except PermissionError:
        raise InputError(field, str(path), "permission denied") from None
    except (OSError, ValueError) as exc:   # ValueError: a NUL byte in the path
        raise InputError(field, str(path), f"cannot open ({type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise InputError(field, str(path), "is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise InputError(field, str(path), "is not a regular file (a FIFO, device or socket would be read "
                                               "forever or makes no sense as input)")
        if st.st_size > max_bytes:
            raise InputError(field, str(path), f"file is {_size_text(st.st_size)}, larger than the "
                                               f"{_size_text(max_bytes)} accepted for this kind of file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | Path, field: str, max_bytes: int) -> bytes:
    with open_regular(path, field, max_bytes) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise InputError(field, str(path), f"cannot read ({type(exc).__name__})") from None
    if len(data) > max_bytes:  # it grew while we read it
        raise InputError(field, str(path), f"file is larger than the {_size_text(max_bytes)} accepted")
    return data


def decode_utf8(data: bytes, path: str | Path, field: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(field, str(path), f"line {line}: not valid UTF-8 (byte {exc.start})") from None


def read_text(path: str | Path, field: str, max_bytes: int) -> str:
    """The file's text: a regular file, at most ``max_bytes``, valid UTF-8."""
    return decode_utf8(read_bytes(path, field, max_bytes), path, field)


# --------------------------------------------------------------------------- YAML


class _DuplicateKey(Exception):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping and non-scalar keys."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _value in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise TypeError(f"a {key_node.id} used as a mapping key at line {key_node.start_mark.line + 1}")
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise _DuplicateKey(f"duplicate key {excerpt(key, 40)} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root, limit: int) -> int:
    """Nodes the graph expands to when every alias is copied out; raises ValueError beyond ``limit``
    or on a cycle (a recursive alias). Iterative: no recursion limit to hit."""
    size: dict[int, int] = {}
    state: dict[int, int] = {}     # 1: on the stack, 2: done
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        kids = []
        if isinstance(node, yaml.SequenceNode):
            kids = node.value
        elif isinstance(node, yaml.MappingNode):
            kids = [x for pair in node.value for x in pair]
        if children_done:
            total = 1 + sum(size[id(k)] for k in kids)
            if total > limit:
                raise ValueError(f"aliases expand to more than {limit:,} nodes")
            size[key] = total
            state[key] = 2
            continue
        if state.get(key) == 2:
            continue
        if state.get(key) == 1:
            raise ValueError("a recursive alias (a node that contains itself)")
        state[key] = 1
        stack.append((node, True))
        for k in kids:
            if state.get(id(k)) == 1:
                raise ValueError("a recursive alias (a node that contains itself)")
            if state.get(id(k)) != 2:
                stack.append((k, False))
    return size[id(root)]


def parse_yaml(text: str, path: str | Path, field: str, max_nodes: int = YAML_MAX_NODES) -> Any:
    """YAML text to Python data, with bounded alias expansion, no duplicate keys, one-line errors."""
    try:
        loader = _Loader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            _expanded_size(node, max_nodes)
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except _DuplicateKey as exc:
        raise InputError(field, str(path), str(exc)) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise InputError(field, str(path), f"malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise InputError(field, str(path), "malformed YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as exc:  # expansion bound, "!!int 1.5", a mapping key
        raise InputError(field, str(path), f"malformed YAML: {exc}") from None


def load_yaml(path: str | Path, field: str, max_bytes: int = SCENARIO_MAX_BYTES) -> Any:
    """A YAML file read through the input layer (see the module docstring)."""
    return parse_yaml(read_text(path, field, max_bytes), path, field)


# --------------------------------------------------------------------------- JSON


def _json_depth_ok(text: str, limit: int) -> bool:
    """Whether brackets nest at most ``limit`` deep (strings skipped): checked before parsing."""
    depth = 0
    in_str = esc = False
    for ch in text:
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
        elif ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"number {text[:40]} is out of range")
    return x


def parse_json(text: str, path: str | Path, field: str, max_depth: int = JSON_MAX_DEPTH) -> Any:
    if not _json_depth_ok(text, max_depth):
        raise InputError(field, str(path), f"not valid JSON here: nested more than {max_depth} levels deep")
    try:
        return json.loads(text, parse_float=_finite_float,
                          parse_constant=lambda c: (_ for _ in ()).throw(ValueError(f"{c} is not a number")))
    except json.JSONDecodeError as exc:
        raise InputError(field, str(path), f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") \
            from None
    except (ValueError, RecursionError) as exc:   # an integer too long to convert, Infinity, NaN
        raise InputError(field, str(path), f"not valid JSON ({str(exc)[:120]})") from None


def load_json(path: str | Path, field: str, max_bytes: int = CONFIG_MAX_BYTES) -> Any:
    """A JSON file read through the input layer: regular, capped, UTF-8, bounded depth, finite numbers."""
    return parse_json(read_text(path, field, max_bytes), path, field)
