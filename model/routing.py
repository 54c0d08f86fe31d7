"""Expert-routing traces: which experts each token selected at each MoE layer.

``load_trace(path, num_layers, num_experts, top_k)`` counts a trace file into
per-token routing probabilities ``q[layer][expert]``: the number of tokens at
that layer that selected that expert, divided by the number of tokens seen at
that layer.  Each row therefore sums to ``top_k``.  Layers and experts are
0-based indices.  The format is chosen by the file suffix (case-insensitive):

``.jsonl``
    One JSON object per line; blank lines are ignored.  Each line is one token,
    in one of two forms (lines of both forms may be mixed in one file):

    * ``{"layer": 3, "experts": [5, 1]}`` -- the token's choice at one layer;
    * ``{"experts": [[5, 1], [0, 7], ...]}`` (no ``"layer"`` key) -- the
      token's choice at every layer, in layer order: exactly ``num_layers``
      lists.

    Other keys (``"token"``, ...) are allowed and ignored; in particular each
    layer-form line counts as its own token, whatever its ``"token"`` says.

``.csv``
    A header row with at least the columns ``token``, ``layer`` and ``expert``
    (any order; other columns ignored), then one row per selection: a token
    that selected k experts at a layer gives k rows.  Rows are grouped into
    tokens by ``(token, layer)``; the rows of a group need not be adjacent.
    All three cells must be integers.  Blank lines are ignored.

Every token at every layer must select exactly ``top_k`` distinct experts, and
every layer must have at least one token.  Any problem with the file raises
``InputError(field, str(path), reason)`` whose reason says, on one line, where
(line number, or column / layer) and what is wrong.  Pure standard library.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from .errors import InputError
from .inputs import TRACE_MAX_BYTES, open_regular

__all__ = ["load_trace"]

_CSV_COLUMNS = ("token", "layer", "expert")
_INT_CELL = re.compile(r"[+-]?[0-9]+")


def _show(value: object, limit: int = 40) -> str:
    """A value for an error message: repr, on one line, shortened."""
    s = repr(value)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _Trace:
    """Counts per layer and expert, raising ``InputError`` for the file ``path``."""

    def __init__(self, path: Path, field: str, num_layers: int, num_experts: int, top_k: int):
        self.path, self.field = path, field
        self.num_layers, self.num_experts, self.top_k = num_layers, num_experts, top_k
        self.counts = [[0] * num_experts for _ in range(num_layers)]
        self.tokens = [0] * num_layers

    def error(self, reason: str) -> InputError:
        return InputError(self.field, str(self.path), reason)

    def check_layer(self, layer: object, where: str) -> int:
        if not _is_int(layer):
            raise self.error(f"{where}: layer must be an integer, got {_show(layer)}")
        if not 0 <= layer < self.num_layers:
            raise self.error(f"{where}: layer {layer} is out of range 0..{self.num_layers - 1}")
        return layer

    def check_expert(self, expert: object, where: str) -> int:
        if not _is_int(expert):
            raise self.error(f"{where}: expert index must be an integer, got {_show(expert)}")
        if not 0 <= expert < self.num_experts:
            raise self.error(f"{where}: expert {expert} is out of range 0..{self.num_experts - 1}")
        return expert

    def add_token(self, layer: int, experts: list[int], where: str) -> None:
        """One token's selection at one layer (indices already range-checked)."""
        if len(set(experts)) != len(experts):
            dup = next(e for e in experts if experts.count(e) > 1)
            raise self.error(f"{where}: expert {dup} is selected more than once at layer {layer}")
        if len(experts) != self.top_k:
            raise self.error(f"{where}: {len(experts)} expert(s) selected at layer {layer}, "
                             f"expected exactly top_k = {self.top_k}")
        row = self.counts[layer]
        for e in experts:
            row[e] += 1
        self.tokens[layer] += 1

    def result(self) -> tuple[tuple[float, ...], ...]:
        if not any(self.tokens):
            raise self.error("the trace holds no tokens")
        for layer, n in enumerate(self.tokens):
            if n == 0:
                raise self.error(f"layer {layer} has no tokens anywhere in the trace "
                                 f"(every layer 0..{self.num_layers - 1} needs at least one)")
        return tuple(tuple(c / n for c in row) for row, n in zip(self.counts, self.tokens))


MAX_LINE_BYTES = 1024 * 1024   # one line of a trace (a token at 1024 layers x top-8 is ~40 KiB)


def _lines(path: Path, field: str):
    """``(line number, text)`` of each line, streamed: the file is never held whole (a trace of
    10 million token choices is ~150 MiB). Through the input layer (regular file, size cap);
    lines end at "\n" only (str.splitlines would also split on characters JSON allows inside
    strings) and keep it; each is at most :data:`MAX_LINE_BYTES` and valid UTF-8."""
    with open_regular(path, field, TRACE_MAX_BYTES) as f:
        lineno = 0
        while True:
            try:
                raw = f.readline(MAX_LINE_BYTES + 1)
            except OSError as exc:
                raise InputError(field, str(path), f"cannot read ({type(exc).__name__})") from None
            if not raw:
                return
            lineno += 1
            if len(raw) > MAX_LINE_BYTES:
                raise InputError(field, str(path), f"line {lineno}: longer than {MAX_LINE_BYTES // 1024} KiB")
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]   # a UTF-8 byte order mark
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(field, str(path), f"line {lineno}: not valid UTF-8 (byte {exc.start} of the line)") \
                    from None


def _jsonl(t: _Trace, lines) -> None:
    for lineno, line in lines:
        if not line.strip():
            continue
        where = f"line {lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise t.error(f"{where}, column {e.colno}: not valid JSON ({e.msg})")
        except RecursionError:
            raise t.error(f"{where}: not valid JSON (nested too deeply)")
        except ValueError as e:  # e.g. an integer literal longer than Python converts
            raise t.error(f"{where}: not valid JSON ({e})")
        if not isinstance(obj, dict):
            raise t.error(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
        if "experts" not in obj:
            raise t.error(f'{where}: the object has no "experts" key')
        experts = obj["experts"]
        if "layer" in obj:
            layer = t.check_layer(obj["layer"], where)
            if not isinstance(experts, list):
                raise t.error(f'{where}: "experts" must be a list of expert indices, got {_show(experts)}')
            t.add_token(layer, [t.check_expert(e, where) for e in experts], where)
        else:
            if not isinstance(experts, list):
                raise t.error(f'{where}: "experts" (no "layer" key) must be a list of one list per layer, '
                              f"got {_show(experts)}")
            if len(experts) != t.num_layers:
                raise t.error(f'{where}: "experts" (no "layer" key) has {len(experts)} entries, '
                              f"expected one per layer ({t.num_layers})")
            for layer, sel in enumerate(experts):
                w = f"{where}, layer {layer}"
                if not isinstance(sel, list):
                    raise t.error(f"{w}: must be a list of expert indices, got {_show(sel)}")
                t.add_token(layer, [t.check_expert(e, w) for e in sel], w)


def _csv(t: _Trace, lines) -> None:
    # Streamed: a (token, layer) group is counted as soon as it has top_k experts; only the
    # groups still open keep their rows, and completed ones are remembered as one integer each
    # (token * num_layers + layer) to catch a row that comes after its group was complete.
    reader = csv.reader((line for _lineno, line in lines), strict=True)
    header: list[str] | None = None
    cols: dict[str, int] = {}
    groups: dict[tuple[int, int], tuple[list[int], list[int]]] = {}  # open: (token, layer) -> (experts, lines)
    complete: set[int] = set()
    try:
        for row in reader:
            lineno = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                for name in _CSV_COLUMNS:
                    if header.count(name) > 1:
                        raise t.error(f"line {lineno}: the header names column {name!r} more than once")
                missing = [name for name in _CSV_COLUMNS if name not in header]
                if missing:
                    raise t.error(f"line {lineno}: the header lacks column(s) {', '.join(map(repr, missing))} "
                                  f"(needs {', '.join(_CSV_COLUMNS)}; has {_show(header, 80)})")
                cols = {name: header.index(name) for name in _CSV_COLUMNS}
                continue
            where = f"line {lineno}"
            values = {}
            for name, i in cols.items():
                if i >= len(row):
                    raise t.error(f"{where}: column {name!r} is missing (the row has {len(row)} cells, "
                                  f"the header {len(header)})")
                cell = row[i].strip()
                try:
                    values[name] = int(cell) if _INT_CELL.fullmatch(cell) else None
                except ValueError:  # more digits than Python converts
                    values[name] = None
                if values[name] is None:
                    raise t.error(f"{where}, column {name!r}: must be an integer, got {_show(row[i])}")
            layer = t.check_layer(values["layer"], where)
            expert = t.check_expert(values["expert"], where)
            token = values["token"]
            if token * t.num_layers + layer in complete:
                _csv_overfull(t, cols, token, layer, lineno)
            key = (token, layer)
            experts, rows = groups.setdefault(key, ([], []))
            if expert in experts:
                raise t.error(f"{where}: token {token} selects expert {expert} at layer {layer} "
                              f"more than once (also on line {rows[experts.index(expert)]})")
            experts.append(expert)
            rows.append(lineno)
            if len(experts) == t.top_k:
                t.add_token(layer, experts, f"line {rows[0]}")
                del groups[key]
                complete.add(token * t.num_layers + layer)
    except csv.Error as e:
        raise t.error(f"line {reader.line_num}: not valid CSV ({e})")
    if header is None:
        raise t.error("the file is empty: expected a header row with columns token,layer,expert")
    for (token, layer), (experts, rows) in groups.items():   # fewer than top_k
        where = f"line{'s' if len(rows) > 1 else ''} {', '.join(map(str, rows))}"
        raise t.error(f"{where}: token {token} selects {len(experts)} expert(s) at layer {layer}, "
                      f"expected exactly top_k = {t.top_k}")


def _csv_overfull(t: _Trace, cols: dict[str, int], token: int, layer: int, upto: int) -> None:
    """A row for a (token, layer) that already had top_k experts: read the file again (errors are
    rare; the first pass keeps no lines of complete groups) to name all its lines."""
    found: list[int] = []
    reader = csv.reader((line for _n, line in _lines(t.path, t.field)), strict=True)
    next(reader, None)
    for row in reader:
        if reader.line_num > upto:
            break
        try:
            cells = [int(row[cols[name]].strip()) for name in _CSV_COLUMNS]
        except (IndexError, ValueError):
            continue
        if cells[0] == token and cells[1] == layer:
            found.append(reader.line_num)
    where = f"lines {', '.join(map(str, found))}" if len(found) > 1 else f"line {upto}"
    raise t.error(f"{where}: token {token} selects {max(len(found), t.top_k + 1)} expert(s) at layer {layer}, "
                  f"expected exactly top_k = {t.top_k}")


def load_trace(path, num_layers: int, num_experts: int, top_k: int,
               field: str = "experts.routing_trace") -> tuple[tuple[float, ...], ...]:
    """Per-token routing probabilities q[layer][expert] counted from a trace file.

    ``q[l][e]`` = (tokens at layer ``l`` that selected expert ``e``) / (tokens
    seen at layer ``l``), for ``l`` in ``0..num_layers-1`` and ``e`` in
    ``0..num_experts-1``; each row sums to ``top_k``.  ``path`` is a ``.jsonl``
    or ``.csv`` file (see the module docstring).  Raises ``InputError(field,
    str(path), reason)`` for any problem with the file.
    """
    p = Path(path)
    for name, v in (("num_layers", num_layers), ("num_experts", num_experts), ("top_k", top_k)):
        if not _is_int(v) or v < 1:
            raise InputError(field, str(p), f"cannot check the trace: {name} must be an integer >= 1, got {_show(v)}")
    if top_k > num_experts:
        raise InputError(field, str(p), f"cannot check the trace: top_k = {top_k} exceeds num_experts = {num_experts}")
    suffix = p.suffix.lower()
    if suffix not in (".jsonl", ".csv"):
        raise InputError(field, str(p), f"unknown trace format {p.suffix or '(no suffix)'!r}: "
                                        "the file name must end in .jsonl or .csv")
    t = _Trace(p, field, num_layers, num_experts, top_k)
    (_jsonl if suffix == ".jsonl" else _csv)(t, _lines(p, field))
    return t.result()
