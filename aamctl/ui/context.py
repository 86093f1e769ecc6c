"""What every command needs from the state: the home folder, the store, a run by name, a run
observed now (reconciled with its folder and its executor). One place, so each verb reads alike."""
from __future__ import annotations

from pathlib import Path

import click

from aam_runtime import runfolder as RF

from aamctl.api.schema import KIND_ALIASES
from aamctl.errors import AamError, Diagnostic, UsageError
from aamctl.home import DB_FILE, default_home
from aamctl.runs.reconcile import reconcile
from aamctl.runs.store import StateStore, check_home


class Context:
    """Wraps click's context object for one aamctl invocation."""

    def __init__(self, ctx: click.Context):
        self.ctx = ctx
        self.obj = ctx.find_root().obj

    @property
    def home(self) -> Path:
        return Path(self.obj.get("home") or default_home())

    def store(self, create: bool = True):
        """The state store of --home; with create=False None when no state exists there yet."""
        check_home(self.home)
        if not create and not (self.home / DB_FILE).exists():
            return None
        store = StateStore(self.home)
        self.obj.setdefault("stores", []).append(store)
        return store

    def require_store(self):
        store = self.store(create=False)
        if store is None:
            raise AamError(Diagnostic(f"no aam state in {self.home}", file="aamctl",
                                      hint="apply a manifest first, or point --home / AAM_HOME at your state folder"))
        return store

    def find_run(self, store, name: str, generation: int | None = None):
        """The run row (latest generation unless given), or a clear error."""
        row = store.run(name, generation) if generation else store.latest_run(name)
        if row is None:
            what = f"run '{name}'" + (f" generation {generation}" if generation else "")
            raise AamError(Diagnostic(f"{what} not found", file="aamctl", hint="'aamctl get runs' lists runs"))
        return row


def observe(store, rows: list, warn: bool = True) -> list:
    """Reconcile rows now: [(row, phase, reason, status)]; warns about damaged status files."""
    observed = reconcile(store, rows)
    if warn:
        for _row, _phase, _reason, status in observed:
            if status.get(RF.STATUS_PROBLEM):
                click.echo("warning: " + status[RF.STATUS_PROBLEM], err=True)
    return observed


def observe_one(store, row, warn: bool = True) -> tuple:
    (one,) = observe(store, [row], warn)
    return one


def kind_of(word: str) -> str:
    k = KIND_ALIASES.get(word.lower())
    if k is None:
        raise UsageError(f"unknown resource type '{word}'; one of runs, datasets, models, hardwareprofiles, sweeps")
    return k
