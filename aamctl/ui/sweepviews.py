"""How sweeps look to a person: get sweeps, describe sweep (the leaderboard), export sweep --best."""
from __future__ import annotations

import json
from pathlib import Path

import click

from aamctl.errors import AamError, Diagnostic
from aamctl.phases import RunPhase, TrialState
from aamctl.runs.records import export_record
from aamctl.sweeps.folder import PLOTS
from aamctl.sweeps.leaderboard import leaderboard
from aamctl.ui.context import Context, observe_one
from aamctl.ui.printers import Table, age, fmt, print_data


def sweep_rows(store) -> list[dict]:
    # a deleted Sweep leaves its trials' runs (they are ordinary runs) but is no longer listed
    return [leaderboard(store, r["name"]) for r in store.sweeps() if store.get_object("Sweep", r["name"]) is not None]


def counts_cell(b: dict) -> str:
    c = b["counts"]
    finished = c[TrialState.COMPLETE] + c[TrialState.PRUNED] + c[TrialState.FAILED]
    return (f"{finished}/{b['maxTrials']} finished ({c['Complete']} complete, {c['Pruned']} pruned, "
            f"{c['Failed']} failed), {c['Running'] + c['Creating']} running")


def best_cell(b: dict) -> str:
    if not b["best"]:
        return "-"
    return f"{b['objective']['metric']}={fmt(b['best']['value'])} (trial {b['best']['trial']})"


def print_sweeps(boards: list[dict]) -> None:
    t = Table(["SWEEP", "GEN", "PHASE", "TRIALS", "BEST", "AGE"])
    for b in boards:
        phase = b["phase"] + (" (no controller)" if b["reason"] and "no controller" in b["reason"] else "")
        t.add_row(b["name"], str(b["generation"]), phase, counts_cell(b), best_cell(b), age(b["created"]))
    t.print()


def get_sweeps(ctx, name, output) -> None:
    store = Context(ctx).store(create=False)
    boards = sweep_rows(store) if store is not None else []
    if name:
        boards = [b for b in boards if b["name"] == name]
        if not boards:
            raise AamError(Diagnostic(f"sweep '{name}' not found", file="aamctl",
                                      hint="'aamctl get sweeps' lists them"))
    if output in ("yaml", "json"):
        for b in boards:
            b.pop("trials")
        print_data(boards if not name else boards[0], output)
    elif not boards:
        click.echo("No sweeps.")
    else:
        print_sweeps(boards)


def describe_sweep(ctx, name, output=None, generation=None) -> None:
    store = Context(ctx).require_store()
    b = leaderboard(store, name, generation)
    if output in ("yaml", "json"):
        print_data(b, output)
        return
    out = [f"Name:        {b['name']}", f"Generation:  {b['generation']}",
           f"Phase:       {b['phase']}" + (f" ({b['reason']})" if b["reason"] else ""),
           f"Executor:    {b['executor']}", f"Objective:   {b['objective']['direction']} {b['objective']['metric']}",
           f"Algorithm:   {b['algorithm']}, early stopping {b['earlyStopping']}, "
           f"parallelism {b['parallelism']}",
           f"Trials:      {counts_cell(b)}", f"Best:        {best_cell(b)}", f"Folder:      {b['folder']}",
           "Leaderboard:"]
    params = b["parameters"]
    t = Table(["TRIAL", "RUN", "STATE", b["objective"]["metric"].upper(), *[p.split(".")[-1].upper() for p in params],
               "DURATION"])
    for tr in b["trials"]:
        state = tr["state"] if tr["state"] != TrialState.RUNNING else tr.get("run_phase", RunPhase.RUNNING)
        t.add_row(str(tr["number"]), f"{tr['run_name']}/{tr['run_generation'] or '-'}", state,
                  fmt(tr["value"]) if tr["value"] is not None else "-",
                  *[_cell(tr["params"].get(p)) for p in params], f"{tr['duration']:.0f}s")
    click.echo("\n".join(out))
    click.echo("\n".join("  " + line for line in t.render().splitlines()))
    plots = Path(b["folder"]) / PLOTS
    if plots.is_dir():
        click.echo("Plots:\n" + "\n".join(f"  {p}" for p in sorted(plots.glob("*.png"))))


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return fmt(v)
    return v if isinstance(v, str) else json.dumps(v)


def export_best(ctx, name: str) -> str:
    store = Context(ctx).require_store()
    b = leaderboard(store, name)
    if not b["best"]:
        raise AamError(Diagnostic(f"sweep '{name}' has no completed trial yet", file="aamctl",
                                  hint=f"'aamctl describe sweep {name}' shows its trials"))
    best = next(t for t in b["trials"] if t["number"] == b["best"]["trial"])
    row, phase, _, st = observe_one(store, store.run(best["run_name"], best["run_generation"]))
    return export_record(row, phase, st, None)
