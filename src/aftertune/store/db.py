"""The run store: one SQLite file (WAL) per workspace.

Holds the request → response cache that every engine call goes through, the
runs, and the per-item records that every aggregate, statistic and plot is
derived from. Each write is one transaction, so a killed process loses at most
the batch in flight and two processes can share the file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aftertune.errors import UserError
from aftertune.fileio import canonical_json
from aftertune.record import Record

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cache (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    engine_version TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_fp ON cache(fingerprint);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    out_dir TEXT,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    run_id TEXT NOT NULL,
    label TEXT NOT NULL,
    ref TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    info TEXT NOT NULL,
    PRIMARY KEY (run_id, label)
);
CREATE TABLE IF NOT EXISTS records (
    run_id TEXT NOT NULL,
    model TEXT NOT NULL,
    suite TEXT NOT NULL,
    item_id TEXT NOT NULL,
    category TEXT NOT NULL,
    request TEXT NOT NULL,
    response TEXT NOT NULL,
    scores TEXT NOT NULL,
    details TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, model, suite, item_id)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, kind);
"""


@dataclass(frozen=True)
class Run:
    id: str
    kind: str
    name: str
    spec: dict[str, Any]
    status: str
    out_dir: str | None
    created: float
    updated: float


def new_run_id(tag: str = "") -> str:
    """A fresh run id: time first (ids sort by start), then the tag, then random bits, so two identical runs
    started in the same second never share an id (nor a run in the store)."""
    middle = f"-{tag}" if tag else ""
    return f"{time.strftime('%Y%m%d-%H%M%S')}{middle}-{uuid.uuid4().hex[:6]}"


def damaged_message(path: Path | str, problem: str) -> str:
    """One line for a damaged store: what SQLite found and how to recover."""
    problem = " ".join(problem.split())[:200]
    return (f"{path}: the store is damaged ({problem}); recover what is readable with "
            f"`sqlite3 {path} .recover | sqlite3 {path}.recovered` and pass --store {path}.recovered, or move "
            "the file aside to start an empty store (cached answers are then recomputed)")


class Store:
    """Thread-safe handle on a store file; cheap to open, safe to share across processes."""

    def __init__(self, path: str | Path) -> None:
        from aftertune.paths import ensure_dir

        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path}: the store is a folder; point --store (or AFTERTUNE_STORE) at a file")
        ensure_dir(self.path.parent, "the store's folder")
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(self.path, timeout=60.0, check_same_thread=False, isolation_level=None)
            self._setup()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path}: not a usable aftertune store ({exc}); point --store at another file") from None

    def _setup(self) -> None:
        """WAL mode and schema. Two processes creating the same new file at once (the ranks of a
        `tune --processes 2`) can get SQLITE_BUSY from the journal-mode switch without the busy
        handler being asked, so "locked" is retried here rather than reported as a broken store."""
        deadline = time.monotonic() + 60.0
        delay = 0.01
        while True:
            try:
                self._conn.execute("PRAGMA busy_timeout=60000")
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.executescript(_SCHEMA)
                self._conn.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def check(self) -> None:
        """UserError with recovery advice when SQLite's own check finds damage (overwritten pages read as
        missing rows, so a damaged store would otherwise list nothing and exit 0). Reads every page once."""
        try:
            with self._lock:
                problems = [r[0] for r in self._conn.execute("PRAGMA quick_check(3)").fetchall()]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems != ["ok"]:
            raise UserError(damaged_message(self.path, "; ".join(problems)))

    # -- cache -------------------------------------------------------------
    def cache_get(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = list(keys[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for key, response in self._conn.execute(
                    f"SELECT key, response FROM cache WHERE key IN ({marks})", chunk
                ):
                    found[key] = json.loads(response)
        return found

    def cache_put(self, rows: Iterable[tuple[str, str, str, dict[str, Any], dict[str, Any], str]]) -> None:
        """rows: (key, fingerprint, kind, request, response, engine_version), written in one transaction."""
        now = time.time()
        with self.transaction() as cur:
            cur.executemany(
                "INSERT OR REPLACE INTO cache VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(k, fp, kind, canonical_json(req), canonical_json(resp), ver, now) for k, fp, kind, req, resp, ver in rows],
            )

    def cache_count(self, fingerprint: str | None = None) -> int:
        with self._lock:
            if fingerprint is None:
                return self._conn.execute("SELECT COUNT(*) FROM cache").fetchone()[0]
            return self._conn.execute("SELECT COUNT(*) FROM cache WHERE fingerprint=?", (fingerprint,)).fetchone()[0]

    # -- runs ----------------------------------------------------------------
    def create_run(self, kind: str, name: str, spec: dict[str, Any], out_dir: str | None = None,
                   run_id: str | None = None) -> str:
        """Create a run, or return the existing one with the same id (resume)."""
        run_id = run_id or new_run_id()
        now = time.time()
        with self.transaction() as cur:
            cur.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, ?, ?, 'running', ?, ?, ?)",
                (run_id, kind, name, canonical_json(spec), out_dir, now, now),
            )
        return run_id

    @contextmanager
    def run_status(self, run_id: str) -> Iterator[None]:
        """The one owner of a run's status: "running" inside, "done" on success, "interrupted" on Ctrl-C or
        SIGTERM (the CLI turns it into KeyboardInterrupt), "failed" on any other exception. Nested steps that
        work inside a run someone else owns (the pipeline's audits) do not touch it."""
        self.set_run_status(run_id, "running")
        try:
            yield
        except KeyboardInterrupt:
            self.set_run_status(run_id, "interrupted")
            raise
        except BaseException:
            self.set_run_status(run_id, "failed")
            raise
        self.set_run_status(run_id, "done")

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id))

    def get_run(self, run_id: str) -> Run:
        with self._lock:
            row = self._conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
            if row is None:
                # allow unique prefixes, as git does for commits
                rows = self._conn.execute("SELECT * FROM runs WHERE id LIKE ?", (run_id + "%",)).fetchall()
                if len(rows) != 1:
                    raise UserError(f"no run {run_id!r} in {self.path}; `aftertune runs list` shows the runs")
                row = rows[0]
        return Run(row[0], row[1], row[2], json.loads(row[3]), row[4], row[5], row[6], row[7])

    def list_runs(self) -> list[Run]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM runs ORDER BY created DESC").fetchall()
        return [Run(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7]) for r in rows]

    def add_model(self, run_id: str, label: str, ref: str, fingerprint: str, info: dict[str, Any]) -> None:
        with self.transaction() as cur:
            # an upsert, not REPLACE: a re-added model keeps its place (rowid) in the run's order
            cur.execute("INSERT INTO models VALUES (?, ?, ?, ?, ?) ON CONFLICT(run_id, label) DO UPDATE SET "
                        "ref=excluded.ref, fingerprint=excluded.fingerprint, info=excluded.info",
                        (run_id, label, ref, fingerprint, canonical_json(info)))

    def models(self, run_id: str) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT label, ref, fingerprint, info FROM models WHERE run_id=? ORDER BY rowid", (run_id,)
            ).fetchall()
        return [{"label": r[0], "ref": r[1], "fingerprint": r[2], "info": json.loads(r[3])} for r in rows]

    # -- records -------------------------------------------------------------
    def put_records(self, run_id: str, records: Sequence[Record]) -> None:
        now = time.time()
        with self.transaction() as cur:
            # an upsert, not REPLACE: a rewritten record keeps its place (rowid) in the run's order
            cur.executemany(
                "INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(run_id, model, suite, item_id) DO UPDATE SET category=excluded.category, "
                "request=excluded.request, response=excluded.response, scores=excluded.scores, "
                "details=excluded.details, created=excluded.created",
                [(run_id, r.model, r.suite, r.item_id, r.category, canonical_json(r.request), r.response,
                  canonical_json(r.scores), canonical_json(r.details), now) for r in records],
            )

    def records(self, run_id: str, *, model: str | None = None, suite: str | None = None) -> list[Record]:
        sql = "SELECT model, suite, item_id, category, request, response, scores, details FROM records WHERE run_id=?"
        args: list[Any] = [run_id]
        if model is not None:
            sql += " AND model=?"
            args.append(model)
        if suite is not None:
            sql += " AND suite=?"
            args.append(suite)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY rowid", args).fetchall()
        return [Record(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], json.loads(r[6]), json.loads(r[7])) for r in rows]

    def record_counts(self, run_id: str | None = None) -> list[tuple[str, str, str, int]]:
        """(run id, model, suite, number of records), for one run or all of them."""
        sql = "SELECT run_id, model, suite, COUNT(*) FROM records"
        args: list[Any] = []
        if run_id is not None:
            sql += " WHERE run_id=?"
            args.append(run_id)
        with self._lock:
            rows = self._conn.execute(sql + " GROUP BY run_id, model, suite ORDER BY run_id, model, suite",
                                      args).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def done_items(self, run_id: str, model: str, suite: str) -> set[str]:
        """Item ids already recorded, so a resumed audit skips them."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT item_id FROM records WHERE run_id=? AND model=? AND suite=?", (run_id, model, suite)
            ).fetchall()
        return {r[0] for r in rows}

    # -- events (training metrics, timings, step completion) ------------------
    def add_event(self, run_id: str, step: str, kind: str, payload: dict[str, Any]) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?)",
                        (run_id, step, kind, canonical_json(payload), time.time()))

    def events(self, run_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT step, kind, payload, created FROM events WHERE run_id=?"
        args: list[Any] = [run_id]
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind)
        with self._lock:
            rows = self._conn.execute(sql + " ORDER BY rowid", args).fetchall()
        return [{"step": r[0], "kind": r[1], "payload": json.loads(r[2]), "created": r[3]} for r in rows]
