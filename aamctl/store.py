"""SQLite state: applied objects with their generation history, and the run index.

Rollback journal (not WAL: the folder may be on NFS), a busy timeout and short IMMEDIATE
transactions make two aamctl processes safe together. The runtime never writes here.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 1
MIGRATIONS = {
    1: """
    CREATE TABLE objects (
        kind TEXT NOT NULL, name TEXT NOT NULL, generation INTEGER NOT NULL,
        hash TEXT NOT NULL, applied_at REAL NOT NULL, manifest TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (kind, name, generation));
    CREATE TABLE runs (
        name TEXT NOT NULL, generation INTEGER NOT NULL, run_hash TEXT NOT NULL,
        stage TEXT NOT NULL, executor TEXT NOT NULL, folder TEXT NOT NULL,
        phase TEXT NOT NULL, reason TEXT, pid INTEGER, pid_start REAL, job_id TEXT,
        depends_on TEXT, labels TEXT NOT NULL DEFAULT '{}',
        created REAL NOT NULL, started REAL, finished REAL, exit_code INTEGER,
        PRIMARY KEY (name, generation));
    CREATE INDEX runs_phase ON runs(phase);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, name TEXT NOT NULL,
        generation INTEGER NOT NULL, event TEXT NOT NULL, detail TEXT);
    CREATE INDEX events_run ON events(name, generation);
    """,
}
TERMINAL = {"Succeeded", "Failed", "Cancelled"}


def default_home() -> Path:
    return Path(os.environ.get("AAM_HOME") or ".aam")


class StateStore:
    def __init__(self, home: str | Path | None = None):
        self.home = Path(home) if home else default_home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.path = self.home / "state.db"
        self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA busy_timeout = 30000")
        self.db.execute("PRAGMA journal_mode = DELETE")
        self._migrate()

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @contextmanager
    def tx(self):
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _migrate(self):
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SCHEMA_VERSION:
            return
        with self.tx() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[v].split(";"):
                    if stmt.strip():
                        db.execute(stmt)
                db.execute(f"PRAGMA user_version = {v}")

    # -- objects

    def get_object(self, kind: str, name: str) -> dict | None:
        row = self.db.execute("SELECT manifest, deleted FROM objects WHERE kind=? AND name=? "
                              "ORDER BY generation DESC LIMIT 1", (kind, name)).fetchone()
        if row is None or row["deleted"]:
            return None
        return json.loads(row["manifest"])

    def object_row(self, kind: str, name: str):
        return self.db.execute("SELECT * FROM objects WHERE kind=? AND name=? ORDER BY generation DESC LIMIT 1",
                               (kind, name)).fetchone()

    def put_object(self, kind: str, name: str, manifest: dict, hash_: str) -> tuple[str, int]:
        """Store if new or changed: ('created'|'configured'|'unchanged', generation)."""
        with self.tx() as db:
            row = db.execute("SELECT generation, hash, deleted FROM objects WHERE kind=? AND name=? "
                             "ORDER BY generation DESC LIMIT 1", (kind, name)).fetchone()
            if row is not None and row["hash"] == hash_ and not row["deleted"]:
                return "unchanged", row["generation"]
            gen = 1 if row is None else row["generation"] + 1
            db.execute("INSERT INTO objects VALUES (?,?,?,?,?,?,0)",
                       (kind, name, gen, hash_, time.time(), json.dumps(manifest)))
            return ("created" if row is None or row["deleted"] else "configured"), gen

    def list_objects(self, kind: str) -> list[dict]:
        rows = self.db.execute(
            "SELECT o.* FROM objects o JOIN (SELECT kind, name, MAX(generation) g FROM objects WHERE kind=? "
            "GROUP BY kind, name) m ON o.kind=m.kind AND o.name=m.name AND o.generation=m.g WHERE o.deleted=0 "
            "ORDER BY o.name", (kind,)).fetchall()
        return [dict(r) | {"manifest": json.loads(r["manifest"])} for r in rows]

    def delete_object(self, kind: str, name: str) -> bool:
        with self.tx() as db:
            row = db.execute("SELECT generation, deleted FROM objects WHERE kind=? AND name=? "
                             "ORDER BY generation DESC LIMIT 1", (kind, name)).fetchone()
            if row is None or row["deleted"]:
                return False
            db.execute("UPDATE objects SET deleted=1 WHERE kind=? AND name=?", (kind, name))
            return True

    # -- runs

    def latest_run(self, name: str):
        return self.db.execute("SELECT * FROM runs WHERE name=? ORDER BY generation DESC LIMIT 1", (name,)).fetchone()

    def run(self, name: str, generation: int):
        return self.db.execute("SELECT * FROM runs WHERE name=? AND generation=?", (name, generation)).fetchone()

    def runs(self, name: str | None = None, all_generations: bool = False) -> list:
        if name:
            q = "SELECT * FROM runs WHERE name=? ORDER BY generation"
            rows = self.db.execute(q, (name,)).fetchall()
            return rows if all_generations else rows[-1:]
        if all_generations:
            return self.db.execute("SELECT * FROM runs ORDER BY name, generation").fetchall()
        return self.db.execute(
            "SELECT r.* FROM runs r JOIN (SELECT name, MAX(generation) g FROM runs GROUP BY name) m "
            "ON r.name=m.name AND r.generation=m.g ORDER BY r.created").fetchall()

    def find_run_by_hash(self, name: str, run_hash: str):
        return self.db.execute("SELECT * FROM runs WHERE name=? AND run_hash=? ORDER BY generation DESC LIMIT 1",
                               (name, run_hash)).fetchone()

    def next_run_generation(self, name: str) -> int:
        row = self.db.execute("SELECT MAX(generation) g FROM runs WHERE name=?", (name,)).fetchone()
        return (row["g"] or 0) + 1

    def add_run(self, **f) -> int:
        """Insert a run with the next free generation (atomic across processes)."""
        with self.tx() as db:
            row = db.execute("SELECT MAX(generation) g FROM runs WHERE name=?", (f["name"],)).fetchone()
            gen = f.get("generation") or (row["g"] or 0) + 1
            f = dict(f, generation=gen)
            f.setdefault("created", time.time())
            cols = ",".join(f)
            db.execute(f"INSERT INTO runs ({cols}) VALUES ({','.join('?' * len(f))})", tuple(f.values()))
            db.execute("INSERT INTO events (time, name, generation, event, detail) VALUES (?,?,?,?,?)",
                       (time.time(), f["name"], gen, "Created", f.get("phase")))
            return gen

    def update_run(self, name: str, generation: int, **f) -> None:
        if not f:
            return
        sets = ",".join(f"{k}=?" for k in f)
        with self.tx() as db:
            db.execute(f"UPDATE runs SET {sets} WHERE name=? AND generation=?", (*f.values(), name, generation))

    def set_phase(self, name: str, generation: int, phase: str, reason: str | None = None, **f) -> None:
        with self.tx() as db:
            row = db.execute("SELECT phase FROM runs WHERE name=? AND generation=?", (name, generation)).fetchone()
            if row is None or row["phase"] == phase and not f:
                return
            sets = ",".join(f"{k}=?" for k in ["phase", "reason", *f])
            db.execute(f"UPDATE runs SET {sets} WHERE name=? AND generation=?",
                       (phase, reason, *f.values(), name, generation))
            if row["phase"] != phase:
                db.execute("INSERT INTO events (time, name, generation, event, detail) VALUES (?,?,?,?,?)",
                           (time.time(), name, generation, phase, reason))

    def add_event(self, name: str, generation: int, event: str, detail: str | None = None) -> None:
        with self.tx() as db:
            db.execute("INSERT INTO events (time, name, generation, event, detail) VALUES (?,?,?,?,?)",
                       (time.time(), name, generation, event, detail))

    def events(self, name: str, generation: int) -> list:
        return self.db.execute("SELECT * FROM events WHERE name=? AND generation=? ORDER BY id",
                               (name, generation)).fetchall()

    def close(self):
        self.db.close()
