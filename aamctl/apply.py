"""apply: parse -> validate -> resolve -> preflight -> plan -> store -> execute."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aam_runtime import runfolder as RF

from .errors import AamError, Diagnostic
from .parse import load_paths
from .plan import (RunPlan, accelerate_config, dump_documents, launch_command, record_documents,
                   render_local_script)
from .resolve import effective_model_ref
from .resolve import MemoryStore, Obj, Resolved
from .validate import validate

TERMINAL_BAD = {"Failed", "Cancelled"}


@dataclass
class ApplyResult:
    started: list[RunPlan] = field(default_factory=list)


def _topo_runs(res: Resolved) -> list[Obj]:
    runs = [o for o in res.given if o.kind == "Run"]
    names = {r.name for r in runs}
    ordered, done = [], set()

    def visit(r: Obj):
        if r.name in done:
            return
        dep = (r.spec.get("initFrom") or {}).get("run")
        if dep in names:
            visit(next(x for x in runs if x.name == dep))
        done.add(r.name)
        ordered.append(r)

    for r in runs:
        visit(r)
    return ordered


def check_record_digests(res: Resolved, allow_change: bool) -> list[Diagnostic]:
    """A record remembers its data digests: refuse to reproduce it on changed data."""
    from aam_runtime.data.table import file_digest

    diags = []
    for run in [o for o in res.given if o.kind == "Run"]:
        raw = run.manifest["metadata"].get("annotations", {}).get("aam/data-digests")
        if not raw:
            continue
        try:
            digests = json.loads(raw)
        except ValueError:
            diags.append(run.diag("annotation aam/data-digests is not valid JSON", ("metadata", "annotations")))
            continue
        for path, want in digests.items():
            have = file_digest(path) or "missing"
            if have != want and not allow_change:
                what = "is missing" if have == "missing" else "changed since the record was made"
                diags.append(run.diag(f"data file {path} {what} ({want[:19]}... -> {have[:19]}...)",
                                      ("metadata", "annotations", "aam/data-digests"),
                                      hint="restore the data, or pass --allow-data-change to run on the new data"))
    return diags


def run_preflight(res: Resolved, runs: list[Obj], warn=None) -> list[Diagnostic]:
    """Read each Dataset as its runs will (once per distinct use); errors are returned, warnings
    go to warn()."""
    from aam_runtime.data.preflight import check_dataset

    from .plan import processes

    diags, done = [], set()
    for run in runs:
        ds = res.get("Dataset", run.spec["datasetRef"])
        hw = res.get("HardwareProfile", run.spec["hardwareRef"]).spec
        stage = run.spec["stage"]
        tr = run.spec["trainer"]
        target = run.spec.get("target") or (ds.spec["targets"][0]["name"] if ds.spec["targets"] else None)
        need_d = stage == "pretrain" and tr["lossWeights"]["unifrac"] > 0
        nodes = run.spec["executor"]["slurm"].get("nodes") if run.spec["executor"]["type"] == "slurm" else None
        procs = processes(hw, nodes)[1] if stage in ("pretrain", "finetune") else 1
        key = (ds.name, stage, target, need_d, tr["batchSize"], procs, tr["seed"])
        if key in done:
            continue
        done.add(key)
        for problem in check_dataset(ds.spec, stage, target, need_distances=need_d, batch_size=tr["batchSize"],
                                     processes=procs, seed=tr["seed"]):
            owner = run if problem.owner == "run" else ds
            hint = problem.hint or f"needed by run/{run.name}"
            d = owner.diag(str(problem), problem.field, hint=hint)
            if problem.severity == "warning":
                if warn is not None:
                    warn("warning: " + d.render())
            else:
                diags.append(d)
    return diags


def _python() -> str:
    return os.environ.get("AAM_PYTHON") or sys.executable


def build_plan(res: Resolved, run: Obj, generation: int, run_hash: str, home: Path,
               dep: tuple[str, int, str, Path] | None, init_checkpoint: str | None, init_stage: str | None) -> RunPlan:
    """All files of one run generation (pure apart from reading data digests and versions)."""
    from .provenance import annotations
    from .slurm import render_sbatch

    bundle = res.run_bundle(run)
    hw = bundle["hardware"].spec
    ds = bundle["dataset"].spec
    folder = (home / "runs" / run.name / str(generation)).resolve()
    ex = run.spec["executor"]["type"]
    plan = RunPlan(name=run.name, generation=generation, run_hash=run_hash, stage=run.spec["stage"],
                   executor=ex, folder=folder)
    if dep is not None:
        plan.depends_on = (dep[0], dep[1])
        plan.depends_folder = dep[3]
    manifest_dir = run.doc.base_dir if run.doc is not None else None
    ann = annotations(name=run.name, generation=generation, run_hash=run_hash, dataset_spec=ds, hardware=hw,
                      seed=run.spec["trainer"]["seed"], model=effective_model_ref(res, run), init_checkpoint=init_checkpoint,
                      init_stage=init_stage, manifest_dir=manifest_dir)
    docs = record_documents(res, run, ann)
    plan.files[RF.RECORD] = dump_documents(
        docs, f"record of run/{run.name} generation {generation}: apply it to reproduce the run")
    nodes = run.spec["executor"]["slurm"].get("nodes") if ex == "slurm" else None
    stage_hw = hw if run.spec["stage"] != "baseline" else dict(hw, nodes=1, devicesPerNode=1)
    acc = accelerate_config(stage_hw, run.spec, nodes)
    plan.files[RF.ACCELERATE_CONFIG] = dump_documents([acc])
    python = _python()
    if ex == "local":
        plan.command = launch_command(python, folder, stage_hw)
        plan.files[RF.LOCAL_SCRIPT] = render_local_script(plan, stage_hw, python)
    else:
        data_paths = [p for p in (ds.get("table"), ds.get("tree"), ds.get("distanceMatrix"),
                                  (ds.get("metadata") or {}).get("path")) if p]
        plan.files[RF.SLURM_SCRIPT] = render_sbatch(run, run.spec, stage_hw, run.name, generation, folder, python,
                                                 data_paths)
    return plan


def apply_manifests(store, files: list[str], *, home: Path, dry_run: bool = False, force: bool = False,
                    allow_data_change: bool = False, preflight: bool = True, output: str | None = None,
                    echo=print, warn=None) -> ApplyResult:
    from .executors import executor_for

    docs = load_paths(files)
    res = validate(docs, store or MemoryStore())
    diags = check_record_digests(res, allow_data_change)
    if diags:
        raise AamError(diags)
    result = ApplyResult()

    # which runs need a new generation
    runs = _topo_runs(res)
    new_runs = []
    for run in runs:
        h = res.run_hash(run)
        latest = store.latest_run(run.name) if store is not None else None
        if latest is not None and latest["run_hash"] == h and not force:
            continue
        new_runs.append((run, h))
    if preflight:
        from aam_runtime.data.preflight import check_dataset_files

        diags = [ds.diag(str(p), p.field, hint=p.hint) for ds in res.given if ds.kind == "Dataset"
                 for p in check_dataset_files(ds.spec)]
        if not diags and new_runs:
            diags = run_preflight(res, [r for r, _ in new_runs], warn=warn)
        if diags:
            raise AamError(diags)

    # plan each new run (dependencies first)
    planned: dict[str, RunPlan] = {}
    plans: list[RunPlan] = []
    for run, h in new_runs:
        dep = None
        init_ckpt, init_stage = None, None
        init = run.spec.get("initFrom") or {}
        if init.get("run"):
            src = res.get("Run", init["run"])
            init_stage = src.spec["stage"]
            which = init.get("which", "best")
            if src.name in planned:
                p = planned[src.name]
                dep = (p.name, p.generation, p.executor, p.folder)
                init_ckpt = str(p.folder / RF.checkpoint_name(which))
            else:
                row = store.latest_run(src.name) if store is not None else None
                if row is None:
                    raise AamError(run.diag(f"initFrom run '{src.name}' has never run", ("spec", "initFrom", "run"),
                                            hint=f"apply run/{src.name} first or in the same command"))
                from .reconcile import reconcile
                (row, phase, reason, _), = reconcile(store, [row])
                if phase in TERMINAL_BAD:
                    raise AamError(run.diag(f"initFrom run '{src.name}' is {phase}" + (f" ({reason})" if reason else ""),
                                            ("spec", "initFrom", "run"),
                                            hint=f"re-apply run/{src.name} (--force) and this run waits for it"))
                init_ckpt = str(Path(row["folder"]) / RF.checkpoint_name(which))
                if phase != "Succeeded":
                    dep = (row["name"], row["generation"], row["executor"], Path(row["folder"]))
            if dep is not None and dep[2] != run.spec["executor"]["type"]:
                raise AamError(run.diag(f"run '{run.name}' ({run.spec['executor']['type']}) cannot wait for "
                                        f"run '{dep[0]}' ({dep[2]})", ("spec", "executor", "type"),
                                        hint="use the same executor for a pipeline"))
        gen = store.next_run_generation(run.name) if store is not None else 1
        plan = build_plan(res, run, gen, h, home, dep, init_ckpt, init_stage)
        planned[run.name] = plan
        plans.append((plan, run))

    if output:
        data = [o.manifest for o in res.given]
        if output == "json":
            echo(json.dumps(data if len(data) > 1 else data[0], indent=2))
        else:
            echo(dump_documents(data).rstrip("\n"))
    if dry_run:
        for obj in res.given:
            state = "unchanged"
            if store is not None:
                row = store.object_row(obj.kind, obj.name)
                if row is None or row["deleted"]:
                    state = "created"
                elif row["hash"] != obj.hash:
                    state = "configured"
            else:
                state = "created"
            if obj.kind == "Run" and obj.name in planned:
                p = planned[obj.name]
                state = f"{state}; would start generation {p.generation} ({p.executor})"
                if p.depends_on:
                    state += f" after run/{p.depends_on[0]}"
            echo(f"{obj.kind.lower()}/{obj.name} {state} (dry run)")
        if not output:
            for plan, _ in plans:
                for fname in (plan.entry, RF.ACCELERATE_CONFIG):
                    echo(f"--- run/{plan.name} {fname} ({plan.folder / fname})")
                    echo(plan.files[fname].rstrip("\n"))
        return result

    # write: objects, then runs (dependencies first)
    for obj in res.given:
        state, gen = store.put_object(obj.kind, obj.name, obj.manifest, obj.hash)
        if obj.kind != "Run":  # runs are reported below, with their generation
            echo(f"{obj.kind.lower()}/{obj.name} {state}")
    for plan, run in plans:
        labels = json.dumps(run.manifest["metadata"].get("labels", {}))
        depends = f"{plan.depends_on[0]}/{plan.depends_on[1]}" if plan.depends_on else None
        gen = store.add_run(name=plan.name, run_hash=plan.run_hash, stage=plan.stage, executor=plan.executor,
                            folder="", phase="Pending", depends_on=depends, labels=labels)
        if gen != plan.generation:  # another aamctl took that generation meanwhile: re-plan
            dep = (plan.depends_on[0], plan.depends_on[1], plan.executor, plan.depends_folder) if plan.depends_on else None
            ann_ck = None
            init = run.spec.get("initFrom") or {}
            if init.get("run"):
                ann_ck = str((plan.depends_folder or Path(store.latest_run(init["run"])["folder"]))
                             / RF.checkpoint_name(init.get('which', 'best')))
            plan = build_plan(res, run, gen, plan.run_hash, home, dep, ann_ck,
                              res.get("Run", init["run"]).spec["stage"] if init.get("run") else None)
            planned[run.name] = plan
        plan.folder.mkdir(parents=True, exist_ok=True)
        for fname, text in plan.files.items():
            (plan.folder / fname).write_text(text)
        for script in (RF.LOCAL_SCRIPT, RF.SLURM_SCRIPT):
            if (plan.folder / script).exists():
                os.chmod(plan.folder / script, 0o755)
        store.update_run(plan.name, gen, folder=str(plan.folder))
        executor = executor_for(plan.executor)
        try:
            if plan.executor == "slurm":
                dep_job = None
                if plan.depends_on:
                    dep_row = store.run(*plan.depends_on)
                    dep_job = dep_row["job_id"] if dep_row is not None else None
                info = executor.submit(plan.folder, dependency=dep_job)
            else:
                info = executor.submit(plan.folder)
        except AamError:
            store.set_phase(plan.name, gen, "Failed", "submission failed")
            raise
        store.update_run(plan.name, gen, **info)
        store.add_event(plan.name, gen, "Submitted", json.dumps(info))
        what = f"job {info['job_id']}" if "job_id" in info else f"pid {info['pid']}"
        after = f", after run/{plan.depends_on[0]}" if plan.depends_on else ""
        state = "created" if gen == 1 else "configured"
        echo(f"run/{plan.name} {state} (generation {gen}, {plan.executor} {what}{after}) -> {plan.folder}")
        result.started.append(plan)
    for run in runs:
        if run.name not in planned:
            echo(f"run/{run.name} unchanged" + _unchanged_hint(store, run.name))
    return result


def _unchanged_hint(store, name: str) -> str:
    """An unchanged manifest over a stopped run: say how to go on, since apply will not."""
    from .reconcile import reconcile

    row = store.latest_run(name)
    if row is None:
        return ""
    (row, phase, _, _), = reconcile(store, [row])
    if phase not in TERMINAL_BAD:
        return ""
    return (f" (generation {row['generation']} is {phase}: 'aamctl resume {name}' continues it from its last "
            f"checkpoint; 'aamctl apply --force' starts generation {row['generation'] + 1})")
