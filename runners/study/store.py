"""The result store of a study: one SQLite database in the output folder.

``study.sqlite`` holds one row per finished point, keyed by the hash of the point's full
resolved scenario and the program version (:func:`runners.study.spec.point_key`), so a key
survives reordering the axes, and a changed base scenario, input file or program is a new
key. Every result is committed as it arrives (WAL journal): a study stopped at any moment
loses at most the points in flight, and a rerun skips the finished ones.

One process writes a database at a time: the writer holds an exclusive ``flock`` on
``study.sqlite.lock`` (released by the kernel when the process ends, however it ends); a
second writer is refused with one line (exit 2). Reading (``--export``) needs no lock.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable

from model import InputError

DB_NAME = "study.sqlite"
LOCK_NAME = "study.sqlite.lock"
SCHEMA_VERSION = "1"


class Busy(InputError):
    """Another process is writing this study's database."""


def _columns(result_columns: Iterable[str]) -> list[str]:
    return ["key", "study", "axes", *result_columns, "extra", "version", "finished_at"]


class Store:
    """The points table of one output folder. ``write=True`` takes the writer's lock."""

    def __init__(self, out: Path, result_columns: tuple[str, ...], write: bool = True):
        self.out = Path(out)
        self.result_columns = tuple(result_columns)
        self.path = self.out / DB_NAME
        self._lock_fd: int | None = None
        self.conn: sqlite3.Connection | None = None
        try:
            if write:
                self.out.mkdir(parents=True, exist_ok=True)
                self._lock()
            elif not self.path.is_file():
                raise InputError("--out", str(self.out), f"no {DB_NAME} here: run the study first")
            uri = f"file:{self.path}{'' if write else '?mode=ro'}"
            self.conn = sqlite3.connect(uri, uri=True, timeout=10, isolation_level=None)
            if write:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self._create()
        except sqlite3.Error as exc:
            self.close()
            raise InputError("--out", str(self.out), f"cannot use {DB_NAME} ({exc})") from None
        except OSError as exc:
            self.close()
            raise InputError("--out", str(self.out), f"cannot write ({exc.strerror or exc})") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lock
    def _lock(self) -> None:
        import fcntl

        fd = os.open(self.out / LOCK_NAME, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
            except OSError:
                holder = "?"
            os.close(fd)
            raise Busy("--out", str(self.out), f"its {DB_NAME} is being written by another process (pid "
                                               f"{holder}); wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    # ------------------------------------------------------------------ schema
    def _create(self) -> None:
        cols = _columns(self.result_columns)
        types = {"key": "TEXT PRIMARY KEY", "finished_at": "REAL", "throughput_tokens_per_s": "REAL",
                 "gpu_batch_size": "INTEGER", "num_gpu_batches": "INTEGER"}
        decl = ", ".join(f'"{c}" {types.get(c, "")}'.rstrip() for c in cols)
        self.conn.execute(f"CREATE TABLE IF NOT EXISTS points ({decl})")
        self.conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        have = [r[1] for r in self.conn.execute("PRAGMA table_info(points)")]
        for c in cols:  # a newer program may add result columns: add them, keep the rows
            if c not in have:
                self.conn.execute(f'ALTER TABLE points ADD COLUMN "{c}"')

    @property
    def journal_mode(self) -> str:
        return self.conn.execute("PRAGMA journal_mode").fetchone()[0]

    # ------------------------------------------------------------------ rows
    def put(self, key: str, study: str, axes: dict, row: dict, version: str) -> None:
        """Insert (or replace) one finished point and commit it at once."""
        extra = {k: v for k, v in row.items() if k not in self.result_columns and not k.startswith("_")}
        values = [key, study, json.dumps(axes, default=str),
                  *(_sql(row.get(c)) for c in self.result_columns),
                  json.dumps(extra, default=str) if extra else None, version, time.time()]
        cols = _columns(self.result_columns)
        self.conn.execute(f'INSERT OR REPLACE INTO points ({", ".join(f"{chr(34)}{c}{chr(34)}" for c in cols)}) '
                          f'VALUES ({", ".join("?" * len(cols))})', values)

    def keys(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT key FROM points")}

    def rows(self, keys: Iterable[str] | None = None) -> dict[str, dict]:
        """Finished points by key (all of them, or those among ``keys``): the result columns plus extras."""
        wanted = None if keys is None else set(keys)
        cur = self.conn.execute("SELECT * FROM points")
        names = [d[0] for d in cur.description]
        out = {}
        for rec in cur:
            r = dict(zip(names, rec))
            if wanted is not None and r["key"] not in wanted:
                continue
            row = {c: r.get(c) for c in self.result_columns}
            if r.get("extra"):
                row.update(json.loads(r["extra"]))
            out[r["key"]] = row
        return out

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM points").fetchone()[0]

    def close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)   # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _sql(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, str)):
        return value
    return json.dumps(value, default=str)
