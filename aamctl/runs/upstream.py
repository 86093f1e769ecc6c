"""Where a run's starting weights come from: a checkpoint path, or the runs it starts from
(initFrom), found in the store (reconciled now, before anything is planned) or planned earlier in
the same apply; and the runs it must wait for."""
from __future__ import annotations

from pathlib import Path

from aam_runtime import runfolder as RF

from aamctl.api.resolve import Obj, Resolved, init_field, init_runs
from aamctl.errors import AamError
from aamctl.phases import STOPPED_BADLY, RunPhase
from aamctl.planning.plan import Dependency, RunPlan, Upstream
from aamctl.runs.reconcile import reconcile


def find_upstreams(res: Resolved, new_runs: list[Obj], store) -> dict[tuple[str, str], tuple]:
    """For each run to start and each run it starts from that is not started by this apply:
    (checkpoint, stage, Dependency or None), keyed by (run, source). A source from the store is
    reconciled now, before anything is planned; a source among this apply's runs is filled in
    when it has been planned (`upstream_of`)."""
    starting = {r.name for r in new_runs}
    out: dict[tuple[str, str], tuple] = {}
    for run in new_runs:
        which = (run.spec.get("initFrom") or {}).get("which", "best")
        for name in init_runs(run.spec):
            if name in starting:
                continue
            src = res.get("Run", name)
            row = store.latest_run(src.name) if store is not None else None
            if row is None:
                raise AamError(run.diag(f"initFrom run '{src.name}' has never run", init_field(run.spec, name),
                                        hint=f"apply run/{src.name} first or in the same command"))
            (row, phase, reason, _), = reconcile(store, [row])
            if phase in STOPPED_BADLY:
                raise AamError(run.diag(f"initFrom run '{src.name}' is {phase}" + (f" ({reason})" if reason else ""),
                                        init_field(run.spec, name),
                                        hint=f"re-apply run/{src.name} (--force) and this run waits for it"))
            dep = None
            if phase != RunPhase.SUCCEEDED:
                dep = Dependency(row["name"], row["generation"], row["executor"], Path(row["folder"]))
                _check_same_executor(run, dep)
            out[(run.name, name)] = (str(Path(row["folder"]) / RF.checkpoint_name(which)), src.spec["stage"], dep)
    return out


def _check_same_executor(run: Obj, dep: Dependency) -> None:
    if dep.executor != run.spec["executor"]["type"]:
        raise AamError(run.diag(f"run '{run.name}' ({run.spec['executor']['type']}) cannot wait for "
                                f"run '{dep.name}' ({dep.executor})", ("spec", "executor", "type"),
                                hint="use the same executor for a pipeline"))


def upstream_of(run: Obj, found: dict[tuple[str, str], tuple], planned: dict[str, RunPlan]) -> Upstream | None:
    """Where a run's starting weights come from: a checkpoint path, or its source run(s), from
    the store (`found`) or planned earlier in this apply."""
    init = run.spec.get("initFrom") or {}
    if init.get("checkpoint"):
        return Upstream(checkpoints=(init["checkpoint"],))
    parts = []
    for name in init_runs(run.spec):
        if (run.name, name) in found:
            parts.append(found[(run.name, name)])
            continue
        src = planned[name]
        dep = Dependency(src.name, src.generation, src.executor, src.folder)
        _check_same_executor(run, dep)
        parts.append((str(src.folder / RF.checkpoint_name(init.get("which", "best"))), src.stage, dep))
    if not parts:
        return None
    return Upstream(checkpoints=tuple(c for c, _, _ in parts), stage=parts[0][1],
                    dependencies=tuple(d for _, _, d in parts if d is not None))
