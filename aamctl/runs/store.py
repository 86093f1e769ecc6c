"""SQLite state: applied objects with their generation history, and the run index.

Rollback journal (not WAL: the folder may be on NFS), a busy timeout and short IMMEDIATE
transactions make two aamctl processes safe together. The runtime never writes here.

Every SQLite failure leaves this module as a StateError that names the database and says what
to do; a failed transaction is rolled back by SQLite itself, so nothing recorded before is lost.
"""
from __future__ import annotations

import errno
import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path

from aam_runtime.runfolder import LOW_SPACE, free_bytes

from aamctl.errors import AamError, Diagnostic
from aamctl.home import DB_FILE, RUNS_DIR, default_home

SCHEMA_VERSION = 2
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
    2: """
    CREATE TABLE sweeps (
        name TEXT NOT NULL, generation INTEGER NOT NULL, space_hash TEXT NOT NULL, folder TEXT NOT NULL,
        phase TEXT NOT NULL, reason TEXT, executor TEXT NOT NULL, pid INTEGER, pid_start REAL,
        created REAL NOT NULL, finished REAL,
        PRIMARY KEY (name, generation));
    CREATE TABLE trials (
        sweep TEXT NOT NULL, generation INTEGER NOT NULL, number INTEGER NOT NULL,
        run_name TEXT NOT NULL, run_generation INTEGER, state TEXT NOT NULL, value REAL,
        params TEXT NOT NULL, created REAL NOT NULL, finished REAL, reason TEXT,
        PRIMARY KEY (sweep, generation, number));
    """,
}

class StateError(AamError):
    """The state folder or its database cannot be used; the message names the path and the way out."""

    def __init__(self, message: str, path: Path, hint: str | None = None):
        super().__init__(Diagnostic(message, file=str(path), hint=hint), exit_code=1)


def check_home(home: Path) -> None:
    """A state folder that exists must be a folder (a file there is a mistyped --home)."""
    if home.exists() and not home.is_dir():
        raise StateError("the state folder is a file, not a folder", home,
                         hint="point --home (or AAM_HOME) at a folder; aamctl creates it when missing")
    db = home / DB_FILE
    if db.exists() and not db.is_file():
        raise StateError("the state database is not a regular file", db, hint="move it aside")


def explain_sqlite_error(exc: Exception, db: Path) -> StateError:
    """Turn a sqlite3 or OS error into one sentence with the path and what to do."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    home = db.parent
    runs = home / RUNS_DIR
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC or "SQLITE_FULL" in name or "disk is full" in text or (
            ("SQLITE_IOERR" in name or "disk I/O error" in text) and (free_bytes(db) or 0) < LOW_SPACE):
        return StateError(f"no space left on device: the state database could not be written ({text}); nothing "
                          "was changed", db, hint=f"free space on the file system of {home} (df -h {home}) and run "
                                                  "the command again; runs and records written earlier are intact")
    if "SQLITE_READONLY" in name or "readonly" in text or isinstance(exc, OSError) and exc.errno in (errno.EROFS,
                                                                                                   errno.EACCES):
        return StateError(f"the state folder is read-only ({text})", db,
                          hint="reading commands work there, but apply, cancel and delete need write access: "
                               f"check the permissions and mount of {home}, or point --home at a writable copy")
    if "SQLITE_NOTADB" in name or "SQLITE_CORRUPT" in name or "not a database" in text or "malformed" in text:
        return StateError(f"the state database is damaged ({text})", db,
                          hint=f"run folders under {runs} are intact: move the database aside "
                               f"(mv {db} {db}.broken), then 'aamctl --home {home} rebuild-state' re-indexes "
                               "every run and object from the records in the run folders")
    if "SQLITE_CANTOPEN" in name or "unable to open" in text:
        return StateError(f"cannot open the state database ({text})", db,
                          hint=f"check that {home} is a writable folder, or point --home at one")
    if "SQLITE_BUSY" in name or "locked" in text:
        return StateError(f"the state database stayed locked for 30 s ({text})", db,
                          hint="another aamctl holds it (or the file system does not support locks: keep the "
                               "state folder off NFS without lockd); try again")
    return StateError(f"state database error: {text}", db, hint="'aamctl doctor' checks the machine")


class StateStore:
    def __init__(self, home: str | Path | None = None, create: bool = True):
        self.home = Path(home) if home else default_home()
        check_home(self.home)
        self.path = self.home / DB_FILE
        try:
            if create:
                self.home.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise explain_sqlite_error(exc, self.path) from None
        self._conn.row_factory = sqlite3.Row
        self.write_problem: StateError | None = None  # set by readers that could not record a change
        try:
            self._conn.execute("PRAGMA busy_timeout = 30000")
            # journal_mode reads the header: a damaged file fails here, before any command runs
            mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "delete":
                self._conn.execute("PRAGMA journal_mode = DELETE")
            self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise explain_sqlite_error(exc, self.path) from None
        self._migrate()

    # -- every statement goes through these three, so every failure is explained once

    def _all(self, sql: str, params=()) -> list:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise explain_sqlite_error(exc, self.path) from None

    def _one(self, sql: str, params=()):
        try:
            return self._conn.execute(sql, params).fetchone()
        except sqlite3.Error as exc:
            raise explain_sqlite_error(exc, self.path) from None

    @contextmanager
    def tx(self):
        """One IMMEDIATE transaction. On any failure SQLite's own rollback (or ours) keeps the
        database as it was; a ROLLBACK that finds no transaction (SQLite already rolled back
        after SQLITE_FULL) must not hide the real error."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise explain_sqlite_error(exc, self.path) from None
        try:
            yield _Tx(self)
            self._conn.execute("COMMIT")
        except BaseException as exc:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if isinstance(exc, sqlite3.Error):
                raise explain_sqlite_error(exc, self.path) from None
            raise

    def _migrate(self):
        version = self._one("PRAGMA user_version")[0]
        if version > SCHEMA_VERSION:
            raise StateError(f"the state database has schema version {version}; this aamctl knows up to "
                             f"{SCHEMA_VERSION}", self.path, hint="use the newer aamctl that wrote it")
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
        row = self._one("SELECT manifest, deleted FROM objects WHERE kind=? AND name=? "
                              "ORDER BY generation DESC LIMIT 1", (kind, name))
        if row is None or row["deleted"]:
            return None
        return json.loads(row["manifest"])

    def object_row(self, kind: str, name: str):
        return self._one("SELECT * FROM objects WHERE kind=? AND name=? ORDER BY generation DESC LIMIT 1",
                               (kind, name))

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
        rows = self._all(
            "SELECT o.* FROM objects o JOIN (SELECT kind, name, MAX(generation) g FROM objects WHERE kind=? "
            "GROUP BY kind, name) m ON o.kind=m.kind AND o.name=m.name AND o.generation=m.g WHERE o.deleted=0 "
            "ORDER BY o.name", (kind,))
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
        return self._one("SELECT * FROM runs WHERE name=? ORDER BY generation DESC LIMIT 1", (name,))

    def run(self, name: str, generation: int):
        return self._one("SELECT * FROM runs WHERE name=? AND generation=?", (name, generation))

    def runs(self, name: str | None = None, all_generations: bool = False) -> list:
        if name:
            q = "SELECT * FROM runs WHERE name=? ORDER BY generation"
            rows = self._all(q, (name,))
            return rows if all_generations else rows[-1:]
        if all_generations:
            return self._all("SELECT * FROM runs ORDER BY name, generation")
        return self._all(
            "SELECT r.* FROM runs r JOIN (SELECT name, MAX(generation) g FROM runs GROUP BY name) m "
            "ON r.name=m.name AND r.generation=m.g ORDER BY r.created")

    def generation_on_disk(self, name: str) -> int:
        """The highest generation folder of a run under runs/ (0 if none): a state that was moved
        aside or lost must never hand out a generation whose folder holds an older run."""
        gens = [int(p.name) for p in (self.home / RUNS_DIR / name).glob("*") if p.name.isdigit()]
        return max(gens, default=0)

    def next_run_generation(self, name: str) -> int:
        row = self._one("SELECT MAX(generation) g FROM runs WHERE name=?", (name,))
        return max(row["g"] or 0, self.generation_on_disk(name)) + 1

    def add_run(self, **f) -> int:
        """Insert a run with the next free generation (atomic across processes)."""
        with self.tx() as db:
            row = db.execute("SELECT MAX(generation) g FROM runs WHERE name=?", (f["name"],)).fetchone()
            gen = f.get("generation") or max(row["g"] or 0, self.generation_on_disk(f["name"])) + 1
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
        return self._all("SELECT * FROM events WHERE name=? AND generation=? ORDER BY id",
                               (name, generation))

    # -- sweeps: one row per generation (a new search space), one row per trial

    def latest_sweep(self, name: str):
        return self._one("SELECT * FROM sweeps WHERE name=? ORDER BY generation DESC LIMIT 1", (name,))

    def sweep(self, name: str, generation: int):
        return self._one("SELECT * FROM sweeps WHERE name=? AND generation=?", (name, generation))

    def sweeps(self) -> list:
        return self._all("SELECT s.* FROM sweeps s JOIN (SELECT name, MAX(generation) g FROM sweeps GROUP BY name) m "
                         "ON s.name=m.name AND s.generation=m.g ORDER BY s.name")

    def add_sweep(self, **f) -> int:
        with self.tx() as db:
            row = db.execute("SELECT MAX(generation) g FROM sweeps WHERE name=?", (f["name"],)).fetchone()
            gen = (row["g"] or 0) + 1
            f = dict(f, generation=gen, created=time.time())
            db.execute(f"INSERT INTO sweeps ({','.join(f)}) VALUES ({','.join('?' * len(f))})", tuple(f.values()))
            return gen

    def update_sweep(self, name: str, generation: int, **f) -> None:
        with self.tx() as db:
            db.execute(f"UPDATE sweeps SET {','.join(f'{k}=?' for k in f)} WHERE name=? AND generation=?",
                       (*f.values(), name, generation))

    def trials(self, sweep: str, generation: int) -> list:
        return self._all("SELECT * FROM trials WHERE sweep=? AND generation=? ORDER BY number", (sweep, generation))

    def put_trial(self, sweep: str, generation: int, number: int, **f) -> None:
        """Insert a trial, or update the given fields of an existing one."""
        with self.tx() as db:
            have = db.execute("SELECT 1 FROM trials WHERE sweep=? AND generation=? AND number=?",
                              (sweep, generation, number)).fetchone()
            if have is None:
                f = dict(f, sweep=sweep, generation=generation, number=number)
                f.setdefault("created", time.time())
                db.execute(f"INSERT INTO trials ({','.join(f)}) VALUES ({','.join('?' * len(f))})",
                           tuple(f.values()))
            elif f:
                db.execute(f"UPDATE trials SET {','.join(f'{k}=?' for k in f)} WHERE sweep=? AND generation=? "
                           "AND number=?", (*f.values(), sweep, generation, number))



class _Tx:
    """The connection inside a transaction (errors are explained by StateStore.tx)."""

    def __init__(self, store: StateStore):
        self._conn = store._conn

    def execute(self, sql: str, params=()):
        return self._conn.execute(sql, params)
