"""Study files: the axes of a design-space study, its ``where:`` filters, and its points.

A study file is a sweep file (see :mod:`runners.sweep`) with any number of ``vary`` axes,
plus optional axes over scenario files and hardware presets, filters, and outputs::

    name: mixtral_hosts                   # optional; default: the file's name without .yaml
    base: ../a100_16g.yaml                # one scenario file, relative to the study file ...
    scenario: [../mixtral-8x7b.yaml, ../dbrx.yaml]   # ... or an axis over scenario files
    preset: [t4, a100_40g_pcie]           # optional axis over hardware presets (names or files)
    vary:                                 # any number of dotted scenario fields
      - field: hardware.memory_gib.cpu
        values: [64, 128, 256]
      - field: workload.prompt_len
        range: {start: 128, stop: 4096, num: 6, scale: log}
    where:                                # optional: keep only the points where all hold
      - hardware.memory_gib.cpu >= hardware.memory_gib.gpu
      - workload.prompt_len < 4000
    overrides: {workload.gen_len: 64}     # optional: dotted fields set at every point
    solver: {time_limit_s: 60}            # optional: solver settings at every point
    outputs: [sensitivity, flexllmgen]    # optional: per-point extras (each makes a point slower)

The axes, slowest first, are ``scenario``, ``preset``, then ``vary`` in order; the points are
every combination. A ``preset`` axis puts the preset over the scenario's ``hardware`` section:
what the preset gives (the GPU's memory, links, FLOP rates, ...) replaces the scenario's, what
it leaves out (CPU memory, disk, alphas) stays the scenario's; ``vary`` and ``overrides``
fields under ``hardware.`` then apply on top. A ``where:`` condition is ``LEFT OP RIGHT`` with ``OP``
one of ``<= >= < > == !=`` and each side a numeric scenario field or a number; it is
evaluated on the point's resolved scenario (so a field the study does not vary counts with
the base's value) and parsed by a regular expression, never ``eval``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import itertools
import json
import math
import operator
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model import InputError, Scenario, load_scenario, override
from model import solvers
from model.inputs import STUDY_MAX_BYTES, TRACE_MAX_BYTES, CONFIG_MAX_BYTES, load_yaml, read_bytes
from model.scenario import SolverOptions, to_dict

STUDY_KEYS = ("name", "base", "scenario", "preset", "vary", "where", "overrides", "solver", "outputs")
VARY_KEYS = ("field", "values", "range")
RANGE_KEYS = ("start", "stop", "step", "num", "scale")
OUTPUTS = ("sensitivity", "flexllmgen")
MAX_VALUES = 10_000            # per parameter: more is a typo (a step of 1e-9), not a plan
MAX_POINTS = 2_000_000         # a study's combinations before where: filters
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
SCENARIO_AXIS, PRESET_AXIS = "scenario", "preset"


@dataclass(frozen=True)
class Param:
    """One axis and its values, in order (``field`` is a dotted scenario field, ``scenario`` or ``preset``)."""

    field: str
    values: tuple
    is_int: bool = False
    log_scale: bool | None = None      # True: from ``scale: log``; None: let the plot decide


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SweepInputError(InputError):
    """A bad sweep file: ``field`` is the sweep file's key (``vary[0].values``)."""


def _unwrap(tp):
    """``X | None`` -> ``X``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else tp
    return tp


def field_type(dotted: Any, where: str):
    """The annotation of a dotted scenario field (``int``, ``float``, a section, ...).

    Raises :class:`SweepInputError` naming ``where`` when the path is not a field of
    the scenario schema. Below a free-form mapping (``solver.options``) any key is
    allowed and the type is unknown (``None``).
    """
    if not isinstance(dotted, str) or not dotted.strip():
        raise SweepInputError(where, dotted, "expected a dotted scenario field, e.g. hardware.memory_gib.gpu")
    parts = dotted.split(".")
    tp: Any = Scenario
    for i, part in enumerate(parts):
        tp = _unwrap(tp)
        here = ".".join(parts[:i]) or "the scenario"
        if typing.get_origin(tp) is dict:
            return None
        if not dataclasses.is_dataclass(tp):
            raise SweepInputError(where, dotted, f"{here} is a value, not a section: it has no field {part!r}")
        names = [f.name for f in dataclasses.fields(tp)]
        if part not in names:
            raise SweepInputError(where, dotted, f"unknown field {part!r} in {here} (allowed: {', '.join(names)})")
        tp = typing.get_type_hints(tp)[part]
    return _unwrap(tp)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _mapping(raw: Any, where: str, allowed: tuple[str, ...]) -> dict:
    if not isinstance(raw, dict):
        raise SweepInputError(where, raw, f"expected a mapping with keys {', '.join(allowed)}")
    for key in raw:
        if key not in allowed:
            name = f"{where}.{key}" if where else str(key)
            raise SweepInputError(name, raw[key], f"unknown key (allowed: {', '.join(allowed)})")
    return raw


def _round_int(x: float) -> int:
    return int(math.floor(x + 0.5))


def _dedupe(values: list) -> list:
    out = []
    for v in values:
        if v not in out:
            out.append(v)
    return out


def expand_range(spec: Any, where: str, is_int: bool) -> tuple[list, bool]:
    """The values of ``range: {start, stop, step}`` or ``{start, stop, num, scale}``, and whether log."""
    spec = _mapping(spec, where, RANGE_KEYS)
    for key in ("start", "stop"):
        if key not in spec:
            raise SweepInputError(f"{where}.{key}", None, "required key is missing")
        if not _is_number(spec[key]):
            raise SweepInputError(f"{where}.{key}", spec[key], "expected a finite number")
    start, stop = spec["start"], spec["stop"]
    if ("step" in spec) == ("num" in spec):
        raise SweepInputError(where, spec, "give either step or num (with scale), not both nor neither")
    log = False
    if "step" in spec:
        step = spec["step"]
        if "scale" in spec:
            raise SweepInputError(f"{where}.scale", spec["scale"], "goes with num, not with step")
        if not _is_number(step) or step == 0:
            raise SweepInputError(f"{where}.step", step, "expected a non-zero number")
        if (stop - start) / step < 0:
            raise SweepInputError(f"{where}.step", step, f"goes away from stop ({stop}) from start ({start})")
        n = int(math.floor((stop - start) / step + 1e-9)) + 1
        if n > MAX_VALUES:
            raise SweepInputError(f"{where}.step", step, f"gives {n} values (at most {MAX_VALUES})")
        values = [start + i * step for i in range(n)]
    else:
        num, scale = spec["num"], spec.get("scale", "linear")
        if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_VALUES:
            raise SweepInputError(f"{where}.num", num, f"expected an integer from 1 to {MAX_VALUES}")
        if scale not in ("linear", "log"):
            raise SweepInputError(f"{where}.scale", scale, "must be 'linear' or 'log'")
        log = scale == "log"
        if log and not (start > 0 and stop > 0):
            raise SweepInputError(where, spec, "scale: log needs start > 0 and stop > 0")
        if num == 1:
            values = [start]
        elif log:
            values = [start * (stop / start) ** (i / (num - 1)) for i in range(num)]
        else:
            values = [start + (stop - start) * i / (num - 1) for i in range(num)]
        values[-1] = stop if num > 1 else values[-1]
    if is_int:
        values = [_round_int(v) for v in values]
    else:
        values = [float(f"{v:.12g}") for v in values]   # 0.30000000000000004 -> 0.3
    return _dedupe(values), log


def _param(raw: Any, where: str) -> Param:
    raw = _mapping(raw, where, VARY_KEYS)
    if "field" not in raw:
        raise SweepInputError(f"{where}.field", None, "required key is missing")
    dotted = raw["field"]
    tp = field_type(dotted, f"{where}.field")
    is_int = tp is int
    if ("values" in raw) == ("range" in raw):
        raise SweepInputError(where, dotted, "give either values or range, not both nor neither")
    log = None
    if "values" in raw:
        values = raw["values"]
        if not isinstance(values, list) or not values:
            raise SweepInputError(f"{where}.values", values, f"expected a non-empty list of values for {dotted}")
        seen = []
        for v in values:
            if v in seen:
                raise SweepInputError(f"{where}.values", values, f"{_short(v)} is given twice")
            seen.append(v)
    else:
        if not (is_int or tp is float or tp is None):
            raise SweepInputError(f"{where}.range", raw["range"], f"{dotted} is not a number field; give values")
        values, log = expand_range(raw["range"], f"{where}.range", is_int)
        log = log or None
    return Param(field=dotted, values=tuple(values), is_int=is_int, log_scale=log)


# --------------------------------------------------------------------------- where: filters
_OPS = {"<=": operator.le, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
        "<": operator.lt, ">": operator.gt}
_COND_RE = re.compile(r"^\s*(\S+?)\s*(<=|>=|==|!=|<|>)\s*(\S+)\s*$")
_NUMBER_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


@dataclass(frozen=True)
class Condition:
    """``left op right``; each side a dotted scenario field (str) or a number (float)."""

    text: str
    left: str | float
    op: str
    right: str | float

    def holds(self, resolved: dict) -> bool:
        a, b = _side(self.left, resolved), _side(self.right, resolved)
        if a is None or b is None:
            return False          # a field that is unset here (e.g. an optional section) selects nothing
        return _OPS[self.op](a, b)


def _side(side: str | float, resolved: dict):
    if not isinstance(side, str):
        return side
    node: Any = resolved
    for part in side.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node if _is_number(node) else None


def parse_condition(text: Any, where: str) -> Condition:
    """One ``where:`` entry: ``hardware.memory_gib.cpu >= hardware.memory_gib.gpu`` or ``workload.prompt_len < 4000``."""
    if not isinstance(text, str):
        raise SweepInputError(where, text, "expected a comparison, e.g. 'hardware.memory_gib.cpu >= 64'")
    m = _COND_RE.match(text)
    if not m:
        raise SweepInputError(where, text, "expected FIELD OP FIELD or FIELD OP NUMBER with OP one of "
                                           "<= >= < > == !=")
    sides = []
    for token in (m.group(1), m.group(3)):
        if _NUMBER_RE.match(token):
            value = float(token)
            if not math.isfinite(value):
                raise SweepInputError(where, text, f"{token} is not a finite number")
            sides.append(value)
            continue
        tp = field_type(token, where)
        if tp not in (int, float) and tp is not None:
            raise SweepInputError(where, text, f"{token} is not a numeric scenario field")
        sides.append(token)
    if not any(isinstance(s, str) for s in sides):
        raise SweepInputError(where, text, "compares two numbers: name a scenario field on one side")
    return Condition(text=text.strip(), left=sides[0], op=m.group(2), right=sides[1])


# --------------------------------------------------------------------------- the study
@dataclass(frozen=True)
class Sweep:
    """A study: the axes (``params``), the scenario file(s), filters and per-point settings."""

    name: str
    path: Path
    base: Path                                         # the (first) scenario file
    params: tuple[Param, ...]                          # every axis, slowest first
    overrides: dict = field(default_factory=dict)      # ``overrides`` and ``solver.*``, applied at every point
    bases: dict = field(default_factory=dict)          # scenario-axis value -> resolved scenario file
    presets: dict = field(default_factory=dict)        # preset-axis value -> what hardware.preset gets
    where: tuple[Condition, ...] = ()
    outputs: frozenset = frozenset()

    def points(self) -> list[tuple]:
        """Every combination of the axes' values (the first axis varies slowest), before ``where:``."""
        return list(itertools.product(*(p.values for p in self.params)))

    def point_overrides(self, values: tuple) -> dict:
        """The dotted-field overrides of one point (the scenario axis picks the file, not a field)."""
        out: dict[str, Any] = {}
        for p, v in zip(self.params, values):
            if p.field == PRESET_AXIS:
                out["hardware"] = {"preset": self.presets[v]}
        out.update(self.overrides)
        out.update({p.field: v for p, v in zip(self.params, values) if p.field not in (SCENARIO_AXIS, PRESET_AXIS)})
        return out

    def point_base(self, values: tuple) -> Path:
        for p, v in zip(self.params, values):
            if p.field == SCENARIO_AXIS:
                return self.bases[v]
        return self.base

    @property
    def group_axes(self) -> list[int]:
        """Indexes of the scenario and preset axes (the summary's groups)."""
        return [i for i, p in enumerate(self.params) if p.field in (SCENARIO_AXIS, PRESET_AXIS)]


def _file_list(raw: Any, key: str, study_dir: Path) -> dict:
    if not isinstance(raw, list) or not raw:
        raise SweepInputError(key, raw, "expected a non-empty list of scenario files (relative to the study file)")
    out = {}
    for i, item in enumerate(raw):
        if not isinstance(item, str) or not item.strip():
            raise SweepInputError(f"{key}[{i}]", item, "expected a scenario file path")
        if item in out:
            raise SweepInputError(f"{key}[{i}]", item, "is given twice")
        p = (Path(item) if Path(item).is_absolute() else study_dir / item).resolve()
        if not p.is_file():
            raise SweepInputError(f"{key}[{i}]", item, _not_a_file("scenario file", p))
        out[item] = p
    return out


def _preset_list(raw: Any, study_dir: Path) -> dict:
    from model.scenario import is_preset_path, resolve_preset

    if not isinstance(raw, list) or not raw:
        raise SweepInputError(PRESET_AXIS, raw, "expected a non-empty list of hardware presets (names or files)")
    out = {}
    for i, item in enumerate(raw):
        where = f"{PRESET_AXIS}[{i}]"
        if item in out:
            raise SweepInputError(where, item, "is given twice")
        try:
            path = resolve_preset(item, study_dir, where)
        except InputError as exc:
            raise SweepInputError(where, item, exc.problem) from None
        if is_preset_path(item):
            if not path.is_file():
                raise SweepInputError(where, item, _not_a_file("preset file", path))
            out[item] = str(path.resolve())
        else:
            out[item] = item
    return out


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a study (or sweep) file; not its points: see :func:`prepare`."""
    path = Path(path)
    try:
        raw = load_yaml(path, "sweep", STUDY_MAX_BYTES)
    except InputError as exc:  # file missing, unreadable, malformed YAML, duplicate key
        raise SweepInputError("sweep", str(path), exc.problem) from None
    if raw is None:
        raise SweepInputError("sweep", str(path), "file is empty")
    raw = _mapping(raw, "", STUDY_KEYS)
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SweepInputError("name", name, "expected a name of letters, digits, '_', '-' or '.'")
    study_dir = path.resolve().parent
    axes: list[Param] = []
    bases: dict = {}
    if "scenario" in raw:
        if "base" in raw:
            raise SweepInputError("scenario", raw["scenario"], "give base (one file) or scenario (a list), not both")
        bases = _file_list(raw["scenario"], "scenario", study_dir)
        base_path = next(iter(bases.values()))
        axes.append(Param(field=SCENARIO_AXIS, values=tuple(bases)))
    else:
        if "base" not in raw:
            raise SweepInputError("base", None, "required key is missing (the scenario file to vary, "
                                                "or scenario: a list of them)")
        base = raw["base"]
        if not isinstance(base, str) or not base.strip():
            raise SweepInputError("base", base, "expected a scenario file path (relative to the sweep file)")
        base_path = (Path(base) if Path(base).is_absolute() else study_dir / base).resolve()
        if not base_path.is_file():
            raise SweepInputError("base", base, _not_a_file("scenario file", base_path))
    presets: dict = {}
    if "preset" in raw:
        presets = _preset_list(raw["preset"], study_dir)
        axes.append(Param(field=PRESET_AXIS, values=tuple(presets)))
    vary = raw.get("vary", [])
    if not isinstance(vary, list) or (not vary and not axes):
        raise SweepInputError("vary", vary, "expected a list of {field, values | range} entries "
                                            "(or a scenario or preset axis)")
    for i, entry in enumerate(vary):
        param = _param(entry, f"vary[{i}]")
        if any(p.field == param.field for p in axes):
            raise SweepInputError(f"vary[{i}].field", param.field, "is varied twice")
        if param.field == "hardware.preset" or param.field == "hardware":
            raise SweepInputError(f"vary[{i}].field", param.field, "vary presets with the preset: axis")
        axes.append(param)
    n_points = math.prod(len(p.values) for p in axes)
    if n_points > MAX_POINTS:
        raise SweepInputError("vary", vary, f"gives {n_points} combinations (at most {MAX_POINTS})")
    common: dict[str, Any] = {}
    overrides = raw.get("overrides")
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise SweepInputError("overrides", overrides, "expected a mapping of dotted scenario fields to values")
    for key, value in overrides.items():
        try:
            field_type(key, f"overrides.{key}")
        except SweepInputError as exc:
            raise SweepInputError(exc.field, value, exc.problem) from None
        common[key] = value
    solver = raw.get("solver")
    solver = {} if solver is None else solver
    solver_keys = tuple(f.name for f in dataclasses.fields(SolverOptions))
    for key, value in _mapping(solver, "solver", solver_keys).items():
        common[f"solver.{key}"] = value
    where_raw = raw.get("where", [])
    if isinstance(where_raw, str):
        where_raw = [where_raw]
    if not isinstance(where_raw, list):
        raise SweepInputError("where", where_raw, "expected a list of comparisons")
    where = tuple(parse_condition(c, f"where[{i}]") for i, c in enumerate(where_raw))
    outputs = raw.get("outputs", [])
    if not isinstance(outputs, list) or any(o not in OUTPUTS for o in outputs):
        raise SweepInputError("outputs", outputs, f"expected a list of: {', '.join(OUTPUTS)}")
    return Sweep(name=name, path=path, base=base_path, params=tuple(axes), overrides=common, bases=bases,
                 presets=presets, where=where, outputs=frozenset(outputs))


# --------------------------------------------------------------------------- keys and program version
_VERSION: str | None = None


def program_version() -> str:
    """The package version plus a hash of the ``model`` package's source files (cached per process)."""
    global _VERSION
    if _VERSION is None:
        import model

        try:
            pkg = importlib.metadata.version("moe-offload-policy")
        except importlib.metadata.PackageNotFoundError:
            pkg = "unknown"
        h = hashlib.sha256()
        root = Path(model.__file__).resolve().parent
        for f in sorted(root.rglob("*")):
            if f.is_file() and f.suffix in (".py", ".yaml", ".json"):
                h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
        _VERSION = f"{pkg}+{h.hexdigest()[:16]}"
    return _VERSION


# the file fields of a scenario (read when the point is solved; their bytes are inputs too)
# and the cap on each file's size
FILE_FIELDS = {("model", "hf_config"): CONFIG_MAX_BYTES, ("experts", "routing_trace"): TRACE_MAX_BYTES}


def _file_hashes(resolved: dict, cache: dict) -> dict:
    out = {}
    for (section, key), cap in FILE_FIELDS.items():
        p = (resolved.get(section) or {}).get(key)
        if isinstance(p, str) and p:
            if p not in cache:
                try:
                    cache[p] = hashlib.sha256(read_bytes(p, f"{section}.{key}", cap)).hexdigest()
                except InputError:
                    cache[p] = "unreadable"
            out[f"{section}.{key}"] = cache[p]
    return out


def point_key(payload: dict, version: str) -> str:
    """sha256 of the point's resolved inputs and the program version (independent of axis order)."""
    text = json.dumps({"inputs": payload, "version": version}, sort_keys=True, default=str,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- points
@dataclass
class Prepared:
    """The points of a study that pass ``where:``: values, keys, and a scenario or the row that says why not."""

    values: list[tuple]                     # the kept points' axis values, in study order
    keys: list[str]                         # their store keys
    scenarios: dict[int, Scenario]          # index into values -> the scenario to solve
    invalid: dict[int, str]                 # index -> why the point's scenario is invalid
    skipped: int = 0                        # combinations dropped by where:
    version: str = ""


def _input_message(exc: InputError) -> str:
    return f"{exc.field} = {_short(exc.value)}: {exc.problem}"


def _preset_over(hardware: dict, preset: str) -> dict:
    """``hardware`` (a resolved scenario's section) with the preset's keys replacing its own."""
    from model.scenario import _merge, _with_preset

    return _merge(hardware, _with_preset({"preset": preset}, None))


def prepare(sweep: Sweep, version: str | None = None) -> Prepared:
    """Resolve every point's scenario, apply ``where:``, and key each point.

    Raises :class:`InputError` when a base scenario is invalid, or when every point is.
    """
    version = version or program_version()
    base_sc: dict[Path, Scenario] = {}
    for p in dict.fromkeys([sweep.base, *sweep.bases.values()]):
        base_sc[p] = load_scenario(p)            # a bad base file is bad input (exit 2), named
    file_cache: dict = {}
    preset_hw: dict[tuple, dict] = {}
    checked: dict[tuple, InputError | None] = {}
    outputs = sorted(sweep.outputs)
    values, keys, scenarios, invalid = [], [], {}, {}
    first: InputError | None = None
    skipped = 0
    for combo in sweep.points():
        base = sweep.point_base(combo)
        ovr = sweep.point_overrides(combo)
        try:
            if "hardware" in ovr:   # the preset axis: the preset over the base's hardware section
                pk = (base, ovr["hardware"]["preset"])
                if pk not in preset_hw:
                    preset_hw[pk] = _preset_over(to_dict(base_sc[base])["hardware"], pk[1])
                ovr = {**ovr, "hardware": preset_hw[pk]}
            sc = override(base_sc[base], ovr)
            skey = (sc.solver.name, json.dumps(sc.solver.options, sort_keys=True, default=str))
            if skey not in checked:  # unknown or missing solver, bad HiGHS option: fail here, not per worker
                try:
                    solvers.check_options(sc.solver.name, sc.solver.options)
                    checked[skey] = None
                except InputError as exc:
                    checked[skey] = exc
            if checked[skey] is not None:
                raise checked[skey]
        except InputError as exc:
            first = first or exc
            values.append(combo)
            keys.append(point_key({"invalid": [str(base), ovr], "outputs": outputs}, version))
            invalid[len(values) - 1] = _input_message(exc)
            continue
        resolved = to_dict(sc)
        if not all(c.holds(resolved) for c in sweep.where):
            skipped += 1
            continue
        values.append(combo)
        keys.append(point_key({"scenario": resolved, "files": _file_hashes(resolved, file_cache),
                               "outputs": outputs}, version))
        scenarios[len(values) - 1] = sc
    if not values:
        raise SweepInputError("where", [c.text for c in sweep.where], "no point of the study passes the filters")
    if not scenarios:
        raise InputError(first.field, first.value, f"{first.problem} (at every point of the sweep)")
    return Prepared(values=values, keys=keys, scenarios=scenarios, invalid=invalid, skipped=skipped,
                    version=version)


def _not_a_file(what: str, path) -> str:
    """Why ``path`` is not a readable input: absent, or there but not a regular file (a FIFO, a device,
    a directory: never opened, since reading one could hang or make no sense)."""
    from pathlib import Path

    p = Path(path)
    if p.exists():
        return f"{what} {p} is not a regular file (a FIFO, device or directory is not read)"
    return f"{what} not found ({p})"
