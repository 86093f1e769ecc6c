"""What a sweep's trials came to: counts by state, each trial's validations and objective read
from its run folder, and the leaderboard (SQLite and the trials' run rows only: no Optuna)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from aam_runtime import runfolder as RF

from aamctl.api.sweepspace import direction
from aamctl.errors import AamError, Diagnostic
from aamctl.phases import TERMINAL_TRIAL, RunPhase, SweepPhase, TrialState
from aamctl.runs.reconcile import reconcile
from aamctl.sweeps.folder import controller_alive


def counts(trials) -> dict[str, int]:
    c = {state.value: 0 for state in TrialState}
    for t in trials:
        c[t["state"]] = c.get(t["state"], 0) + 1
    return c


def validations(folder: Path, metric: str) -> list[tuple[int, float]]:
    """(epoch, value) of each validation in a run folder's metrics.jsonl."""
    out = []
    for r in RF.read_jsonl(folder / RF.METRICS):
        if r.get("split") == "validation" and isinstance(r.get(metric), (int, float)):
            out.append((int(r.get("epoch", 0)), float(r[metric])))
    return out


def objective_value(folder: Path, metric: str) -> float | None:
    """The metric at the validation of the run's best checkpoint (the model the trial leaves)."""
    st = RF.read_status(folder)
    best_step = (st.get("best_metric") or {}).get("step")
    rows = [r for r in RF.read_jsonl(folder / RF.METRICS)
            if r.get("split") == "validation" and isinstance(r.get(metric), (int, float))]
    at = [r for r in rows if r.get("step") == best_step]
    if at or rows:
        return float((at or rows)[-1][metric])
    v = (st.get("final_metrics") or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) else None


def leaderboard(store, name: str, generation: int | None = None) -> dict:
    """The sweep and its trials, best first (reads SQLite and the trials' run rows only)."""
    row = store.latest_sweep(name) if generation is None else store.sweep(name, generation)
    if row is None:
        raise AamError(Diagnostic(f"sweep '{name}' not found", file="aamctl", hint="'aamctl get sweeps' lists them"))
    manifest = store.get_object("Sweep", name) or {}
    spec = manifest.get("spec") or {}
    trials = [dict(t) for t in store.trials(name, row["generation"])]
    runs = {}
    live = [t for t in trials if t["state"] not in TERMINAL_TRIAL and t["run_generation"]]
    if live:
        rows = [store.run(t["run_name"], t["run_generation"]) for t in live]
        for r, phase, _, _ in reconcile(store, [r for r in rows if r is not None]):
            runs[(r["name"], r["generation"])] = phase
    sign = -1 if spec and direction(spec) == "maximize" else 1
    order = {TrialState.COMPLETE: 0, TrialState.RUNNING: 1, TrialState.CREATING: 1, TrialState.PRUNED: 2,
             TrialState.FAILED: 3}
    for t in trials:
        t["params"] = json.loads(t["params"] or "{}")
        if t["state"] not in TERMINAL_TRIAL:
            t["run_phase"] = runs.get((t["run_name"], t["run_generation"]), RunPhase.PENDING)
        end = t["finished"] or time.time()
        t["duration"] = round(end - t["created"], 1)
    trials.sort(key=lambda t: (order.get(t["state"], 4), sign * t["value"] if t["value"] is not None else 0,
                               t["number"]))
    tally = counts(trials)
    best = trials[0] if trials and trials[0]["state"] == TrialState.COMPLETE else None
    phase = row["phase"]
    reason = row["reason"]
    if phase == SweepPhase.RUNNING and not controller_alive(Path(row["folder"])):
        reason = "no controller is running: re-apply the Sweep to continue"
    return {"name": name, "generation": row["generation"], "phase": phase, "reason": reason,
            "folder": row["folder"], "executor": row["executor"],
            "objective": {"metric": spec.get("objective", {}).get("metric"),
                          "direction": direction(spec) if spec else None},
            "algorithm": (spec.get("algorithm") or {}).get("type"),
            "earlyStopping": (spec.get("earlyStopping") or {}).get("type"),
            "maxTrials": spec.get("maxTrials"), "parallelism": spec.get("parallelism"),
            "counts": tally, "best": {"trial": best["number"], "run": best["run_name"], "value": best["value"]}
            if best else None,
            "parameters": [p["path"] for p in spec.get("parameters", [])],
            "trials": trials, "created": row["created"], "finished": row["finished"]}
