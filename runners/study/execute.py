"""Running a study's points: in this process, on an embedded Dask LocalCluster, or on a Dask cluster.

Workers receive the point's resolved :class:`~model.Scenario` (never a study or scenario file
path; on a ``--scheduler`` cluster also the bytes of the hf_config and routing-trace files it
names, sent once per file) and return one result row; only the process that owns the study database writes it.
Each task first checks that the worker runs the same program version as the study (package
version and a hash of ``model/``): a worker running another one is refused (exit 2).

Lost workers: the scheduler reschedules a point whose worker died; a point whose worker dies
twice (``distributed.scheduler.allowed-failures`` = 1 on the embedded cluster; an external
scheduler uses its own setting, default 3) comes back as ``KilledWorker`` and is recorded as
``error`` with that message, never dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import multiprocessing
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Iterator

from model import Infeasible, InputError, Scenario, SolverError, optimize
from runners.cli import Terminated  # noqa: F401 - re-exported for runners.sweep
from model.inputs import read_bytes
from model.terms import DEVICES, TENSOR_KINDS

from .spec import FILE_FIELDS, _input_message, program_version

FRACTION_COLUMNS = tuple(f"{kind}_{dev}" for kind in TENSOR_KINDS for dev in DEVICES)
PEAK_COLUMNS = {
    "gpu_prefill_gib": ("gpu", "prefill"),
    "gpu_decode_gib": ("gpu", "decode"),
    "cpu_prefill_gib": ("cpu", "prefill"),
    "cpu_decode_gib": ("cpu", "decode"),
    "disk_gib": ("disk", None),
}
RESULT_COLUMNS = ("status", "throughput_tokens_per_s", "gpu_batch_size", "num_gpu_batches",
                  *FRACTION_COLUMNS, *PEAK_COLUMNS, "block_time_s", "solve_s", "message")
CONNECT_TIMEOUT_S = 10
SCRATCH_PREFIX = ".dask-scratch-"


class VersionMismatch(Exception):
    """A worker runs another program version than the study's."""


def empty_row(status: str, message: str = "") -> dict:
    row = {col: None for col in RESULT_COLUMNS}
    row.update(status=status, message=message)
    return row


# This process's last optimum (g, N): the hint of its next point. Neighbouring points of a study
# have close optima, and a close hint halves HiGHS's time (optimize's ``hint``); the answer is the
# same with or without it.
_LAST_BATCH_SIZES: dict[str, tuple[int, int]] = {}


def solve_point(sc: Scenario, outputs: frozenset | tuple = ()) -> dict:
    """Optimize one point's scenario; never raises (the study goes on).

    Sensitivity and FlexLLMGen's integer percents are computed only when ``outputs`` asks
    for them (``sensitivity``, ``flexllmgen``): a study rarely needs them per point. The
    previous point solved in this process gives the hint.
    """
    try:
        res = optimize(sc, sensitivity="sensitivity" in outputs, integer_percents="flexllmgen" in outputs,
                       hint=_LAST_BATCH_SIZES.get("last"))
    except Infeasible as exc:
        return empty_row("infeasible", "; ".join(exc.reasons))
    except InputError as exc:
        row = empty_row("error", _input_message(exc))
        row["_input_error"] = True
        return row
    except SolverError as exc:
        return empty_row("error", str(exc))
    except Exception as exc:  # noqa: BLE001 - one point's crash is recorded; the study goes on
        return empty_row("error", f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:300]}")
    row = empty_row(res.status)
    if res.status == "infeasible":
        row["message"] = "; ".join(res.infeasible_reasons)
        return row
    ev = res.evaluation
    if res.gpu_batch_size and res.num_gpu_batches:
        _LAST_BATCH_SIZES["last"] = (res.gpu_batch_size, res.num_gpu_batches)
    row.update(throughput_tokens_per_s=ev.throughput_tokens_per_s, gpu_batch_size=res.gpu_batch_size,
               num_gpu_batches=res.num_gpu_batches, solve_s=res.solve.wall_s if res.solve else None,
               block_time_s=ev.total_s)
    for kind in TENSOR_KINDS:
        for dev in DEVICES:
            row[f"{kind}_{dev}"] = res.fractions[(kind, dev)]
    for col, key in PEAK_COLUMNS.items():
        row[col] = ev.peak_memory_gib[key]
    notes = list(res.notes)
    if res.status == "time_limit" and res.solve and res.solve.gap is not None:
        notes.insert(0, f"stopped at the time limit with gap {100 * res.solve.gap:.4f}%")
    row["message"] = "; ".join(notes)
    if "flexllmgen" in outputs:
        row["flexllmgen_percent"] = " ".join(map(str, res.flexllmgen_percent)) if res.flexllmgen_percent else None
        row["flexllmgen_num_gpu_batches"] = res.flexllmgen_num_gpu_batches
        row["flexllmgen_throughput_tokens_per_s"] = res.flexllmgen_throughput
    if "sensitivity" in outputs and res.sensitivity is not None:
        s = res.sensitivity
        row["sensitivity_binding"] = "; ".join(s.binding)
        for name, v in {**s.tokens_per_s_per_gib, **s.tokens_per_s_per_gib_per_s}.items():
            row[f"sensitivity_{name}"] = v
    return row




def referenced_files(sc: Scenario) -> dict[str, str]:
    """``{"model.hf_config": path, ...}``: the files a scenario names."""
    out = {}
    for (section, key) in FILE_FIELDS:
        path = getattr(getattr(sc, section, None), key, None)
        if path:
            out[f"{section}.{key}"] = str(path)
    return out


def read_file(dotted: str, path: str) -> tuple[str, bytes]:
    """``(file name, bytes)`` of a referenced file, through the input layer (regular file, size cap)."""
    section, key = dotted.split(".")
    return Path(path).name, read_bytes(path, dotted, FILE_FIELDS[(section, key)])


def materialize(sc: Scenario, files: dict[str, tuple[str, bytes]], root: Path) -> Scenario:
    """``sc`` with each referenced file replaced by a copy of the shipped bytes under ``root``
    (in a folder named by their hash, under the file's own name: a trace's format is in its
    suffix, and a model without a ``name`` is named after its config file)."""
    for dotted, (name, data) in files.items():
        section, key = dotted.split(".")
        folder = Path(root) / "moe-study-files" / hashlib.sha256(data).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / name
        if not target.exists():
            tmp = target.with_name(f".{target.name}.{os.getpid()}")
            tmp.write_bytes(data)
            os.replace(tmp, target)
        part = dataclasses.replace(getattr(sc, section), **{key: str(target)})
        sc = dataclasses.replace(sc, **{section: part})
    return sc


def solve_task(sc: Scenario, outputs: tuple, version: str, files: dict | None = None,
               root: Path | None = None) -> dict:
    """A worker's task: refuse another program version, then solve the point.

    ``files`` (from a ``--scheduler`` study): the bytes of the files the scenario names, written
    into the worker's own scratch folder (``root``, default the Dask worker's local directory),
    so a worker on another machine needs none of the study's files."""
    mine = program_version()
    if mine != version:
        raise VersionMismatch(f"a worker runs program version {mine}, this study {version}")
    if files:
        if root is None:
            from distributed import get_worker

            root = Path(get_worker().local_directory)
        sc = materialize(sc, files, root)
    return solve_point(one_solver_thread(sc), frozenset(outputs))


def one_solver_thread(sc: Scenario) -> Scenario:
    """A Dask worker's scenario: one solver thread unless the study set ``solver.threads``.

    The workers already run one point per core; a solver's own threads would only compete for
    the same cores (bench_1000-like points, 2 workers on 2 cores: 14.4 -> 12.8 s for 100 points).
    Results do not depend on it."""
    if sc.solver.threads is not None:
        return sc
    return dataclasses.replace(sc, solver=dataclasses.replace(sc.solver, threads=1))


OnResult = Callable[[int, dict], None]


def run_local(todo: list[int], scenarios: dict[int, Scenario], outputs: frozenset, on_result: OnResult) -> None:
    """Solve the points one after another in this process (``--jobs 1``)."""
    for i in todo:
        on_result(i, solve_point(scenarios[i], outputs))


_ADDRESS_RE = re.compile(r"^(?:(?P<proto>[a-z]+)://)?(?P<host>\[[0-9a-fA-F:]+\]|[^\s:/\[\]]+)(?::(?P<port>\d{1,5}))?/?$")
DEFAULT_SCHEDULER_PORT = 8786


def check_scheduler(address: str) -> None:
    """Refuse (exit 2, one line) an address that is malformed, or where no Dask scheduler answers
    an ``identity`` request within :data:`CONNECT_TIMEOUT_S`, before any Dask client exists (a
    client that fails half-way leaves a noisy finalizer, and a server that is not Dask's can
    send anything)."""
    m = _ADDRESS_RE.match(address.strip())
    if not m or (m["proto"] or "tcp") not in ("tcp", "tls", "ws", "wss"):
        raise InputError("--scheduler", address, "expected a scheduler address, e.g. tcp://HOST:8786")
    import asyncio

    from distributed.comm import connect

    full = address.strip() if m["proto"] else f"tcp://{address.strip()}"
    if not m["port"]:
        full = f"{full.rstrip('/')}:{DEFAULT_SCHEDULER_PORT}"

    async def identity():
        comm = await connect(full, timeout=CONNECT_TIMEOUT_S)
        try:
            await comm.write({"op": "identity"})
            return await comm.read()
        finally:
            comm.abort()

    try:
        info = asyncio.run(asyncio.wait_for(identity(), CONNECT_TIMEOUT_S))
    except (Exception, MemoryError) as exc:  # noqa: BLE001 - refused, timed out, not Dask's protocol
        reason = getattr(exc, "strerror", None) or type(exc).__name__
        raise InputError("--scheduler", address, f"no Dask scheduler answers there within "
                                                 f"{CONNECT_TIMEOUT_S} s ({reason})") from None
    if not isinstance(info, dict) or info.get("type") != "Scheduler":
        raise InputError("--scheduler", address, "answers, but is not a Dask scheduler")


@contextlib.contextmanager
def dask_client(scheduler: str | None, jobs: int, scratch_parent: Path) -> Iterator:
    """A connected ``distributed.Client``: to ``scheduler``, or to an embedded LocalCluster of ``jobs``
    single-threaded worker processes whose scratch folder is removed on every way out."""
    import dask
    from distributed import Client, LocalCluster

    for name in ("distributed", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", module=r"distributed(\.|$)")   # stderr is for our one-line messages
    if scheduler:
        check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise InputError("--scheduler", scheduler, f"cannot connect within {CONNECT_TIMEOUT_S} s "
                                                       f"({type(exc).__name__})") from None
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.close(timeout=5)
        return
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=scratch_parent))
    cluster = client = None
    settings = {"distributed.scheduler.allowed-failures": 1, "temporary-directory": str(scratch),
                # a worker holds only the point it runs, so a point that kills its worker takes
                # no queued bystander down with it (each death counts against every point there)
                "distributed.scheduler.worker-saturation": 1.0, "distributed.worker.daemon": True}
    if "forkserver" in multiprocessing.get_all_start_methods():
        # workers fork from a clean server process that imported this program and Dask once
        # (about 2 s less per worker than spawn); never fork this process: HiGHS's thread pool
        # does not survive a fork (see the old sweep's note)
        multiprocessing.set_forkserver_preload(["model", "distributed", "runners.study.execute"])
        settings["distributed.worker.multiprocessing-method"] = "forkserver"
    try:
        with dask.config.set(settings):
            cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                                   local_directory=str(scratch), dashboard_address=":0",
                                   silence_logs=logging.CRITICAL)
            client = Client(cluster, set_as_default=False)
            yield client
    finally:
        if client is not None:
            with contextlib.suppress(BaseException):
                client.close(timeout=5)
        if cluster is not None:
            with contextlib.suppress(BaseException):
                cluster.close(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)


def remove_stale_scratch(out: Path) -> int:
    """Remove the embedded cluster's scratch folders that a killed run (SIGKILL) left in ``out``.
    Call only while holding the study's lock: no live run of this study can own one then."""
    n = 0
    for d in Path(out).glob(SCRATCH_PREFIX + "*"):
        if d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def check_workers(client, version: str, scheduler: str | None) -> int:
    """The number of worker threads; refuses workers of another program version (exit 2)."""
    try:
        versions = client.run(program_version)
    except Exception as exc:  # noqa: BLE001 - e.g. a worker that cannot import this program
        raise InputError("--scheduler", scheduler or "embedded", f"the workers cannot run this program "
                                                                 f"({type(exc).__name__}: {exc})") from None
    if not versions:
        raise InputError("--scheduler", scheduler, "the cluster has no workers")
    for addr, v in sorted(versions.items()):
        if v != version:
            raise InputError("--scheduler", scheduler or "embedded",
                             f"worker {addr} runs program version {v}, this study {version}")
    return max(1, sum(client.nthreads().values()))


def run_dask(client, todo: list[int], scenarios: dict[int, Scenario], outputs: frozenset, version: str,
             on_result: OnResult, scheduler: str | None, window: int, ship_files: bool = False,
             task: Callable = None) -> None:
    """Solve the points on the cluster, at most ``window`` in flight; results come back here in order of
    finishing. ``ship_files``: send the bytes of the files the scenarios name (a cluster on other machines).
    ``task``: what a worker runs per point (default :func:`solve_task`; tests crash workers with it)."""
    from distributed import as_completed

    try:
        from distributed import KilledWorker
    except ImportError:  # older distributed
        from distributed.scheduler import KilledWorker

    pending = iter(todo)
    futures: dict = {}
    ac = None
    out = tuple(sorted(outputs))
    shipped: dict[tuple[str, str], object] = {}   # (field, path) -> the file's bytes, scattered once

    def files_of(sc: Scenario) -> dict | None:
        if not ship_files:
            return None
        refs = referenced_files(sc)
        for dotted, path in refs.items():
            if (dotted, path) not in shipped:
                shipped[(dotted, path)] = client.scatter([read_file(dotted, path)], hash=False)[0]
        return {dotted: shipped[(dotted, path)] for dotted, path in refs.items()} or None

    def submit_next() -> bool:
        nonlocal ac
        i = next(pending, None)
        if i is None:
            return False
        fut = client.submit(task or solve_task, scenarios[i], out, version, files_of(scenarios[i]), pure=False)
        futures[fut] = i
        if ac is not None:
            ac.add(fut)
        return True

    try:
        for _ in range(window):
            if not submit_next():
                break
        ac = as_completed(list(futures), loop=client.loop)
        for fut in ac:
            i = futures.pop(fut)
            try:
                row = fut.result()
            except VersionMismatch as exc:
                raise InputError("--scheduler", scheduler or "embedded", str(exc)) from None
            except KilledWorker as exc:
                row = empty_row("error", f"worker crashed twice on this point (KilledWorker: "
                                         f"{' '.join(str(exc).split())[:200]})")
            except Exception as exc:  # noqa: BLE001 - recorded, never dropped
                row = empty_row("error", f"worker failed: {exc.__class__.__name__}: "
                                         f"{' '.join(str(exc).split())[:300]}")
            on_result(i, row)
            submit_next()
    finally:
        if futures:
            with contextlib.suppress(BaseException):
                client.cancel(list(futures))
