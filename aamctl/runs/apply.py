"""apply: parse -> validate -> preflight -> plan -> store -> execute, for the runs of a set of
manifests. A Sweep among them is stored here and started by the caller (sweeps/launch.py), since
a sweep's controller itself applies its trials through this module."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aam_runtime import runfolder as RF
from aam_runtime.machine import cpu_bf16_flags

from aamctl.api.parse import load_paths
from aamctl.api.resolve import MemoryStore, Obj, Resolved, init_runs, needs_distances, run_targets
from aamctl.api.sweepspace import template_run
from aamctl.api.validate import validate
from aamctl.errors import AamError, Diagnostic
from aamctl.home import run_folder
from aamctl.phases import STOPPED_BADLY, RunPhase
from aamctl.planning.plan import RunPlan, build_plan, dump_documents
from aamctl.planning.provenance import annotations, data_artifacts, data_digests
from aamctl.planning.slurm import check_path
from aamctl.planning.stripes import plan_stripes
from aamctl.planning.stripes import submit as submit_stripes
from aamctl.runs.executors import executor_for
from aamctl.runs.preflight import check_dataset_paths, check_local_fit, check_record_digests, run_preflight
from aamctl.runs.reconcile import reconcile
from aamctl.runs.upstream import find_upstreams, upstream_of


@dataclass
class ApplyResult:
    started: list[RunPlan] = field(default_factory=list)
    held: list[RunPlan] = field(default_factory=list)  # planned and written, not submitted (hold=True)
    sweeps: list[Obj] = field(default_factory=list)  # Sweeps stored by this apply: the caller starts them
    # (name, generation) of the newest generation of each unchanged run: apply --wait waits for
    # these too, and fails when one already ended other than Succeeded (Failed, Cancelled, Pruned)
    unchanged: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class _Apply:
    """One apply's settings and what it learns on the way."""
    store: object
    home: Path
    dry_run: bool
    hold: bool
    reuse: dict[str, int]
    echo: object
    res: Resolved | None = None
    python: str = ""
    host_bf16: bool = False  # precision auto on a CPU of the local executor
    prepared: dict = field(default_factory=dict)  # run name -> the data preflight prepared for it
    digests: dict = field(default_factory=dict)  # per Dataset: its files are hashed once, however many runs use it
    artifacts: dict = field(default_factory=dict)  # per Dataset: its QIIME 2 archives, described once
    planned: dict = field(default_factory=dict)  # run name -> RunPlan


def _topo_runs(res: Resolved) -> list[Obj]:
    runs = [o for o in res.given if o.kind == "Run"]
    names = {r.name for r in runs}
    ordered, done = [], set()

    def visit(r: Obj):
        if r.name in done:
            return
        for dep in init_runs(r.spec):
            if dep in names:
                visit(next(x for x in runs if x.name == dep))
        done.add(r.name)
        ordered.append(r)

    for r in runs:
        visit(r)
    return ordered


def apply_manifests(store, files: list[str] | None, *, home: Path, dry_run: bool = False, force: bool = False,
                    allow_data_change: bool = False, preflight: bool = True, output: str | None = None,
                    echo=print, warn=None, documents=None, hold: bool = False,
                    reuse: dict[str, int] | None = None) -> ApplyResult:
    """parse -> validate -> preflight -> plan (each run once) -> store -> execute.

    `documents` replaces `files` for manifests made in memory (a sweep's trials); with hold=True
    the runs are planned, written and recorded as Pending but not submitted: the caller submits
    them (a sweep submits a batch of trials as one SLURM job array). `reuse` maps a run name to a
    generation that was reserved (and maybe written) but never submitted: it is planned again
    under that generation instead of a new one (a sweep controller finishing a trial that the
    controller before it was creating when it stopped)."""
    docs = documents if documents is not None else load_paths(files)
    res = validate(docs, store or MemoryStore())
    diags = check_record_digests(res, allow_data_change)
    if diags:
        raise AamError(diags)
    a = _Apply(store=store, home=home, dry_run=dry_run, hold=hold, reuse=reuse or {}, echo=echo, res=res,
               python=_python(), host_bf16=bool(cpu_bf16_flags()))
    runs = _topo_runs(res)
    new_runs = [(run, h) for run, h in ((r, res.run_hash(r)) for r in runs) if force or not _unchanged(store, run, h)]
    if preflight:
        _preflight(a, [r for r, _ in new_runs], warn)
    local_fit = check_local_fit(res, [r for r, _ in new_runs])
    if local_fit and not dry_run:
        raise AamError(local_fit)
    for d in local_fit:  # a dry run shows the plan all the same (it may be meant for another machine)
        (warn or echo)("warning: " + d.render())
    upstreams = find_upstreams(res, [r for r, _ in new_runs], store)
    for run, _ in new_runs:  # before anything is written: a folder SLURM cannot carry fails here
        if run.spec["executor"]["type"] == "slurm":
            check_path(str(run_folder(home, run.name, 1)), "run folder", run)
    if output:
        data = [o.manifest for o in res.given]
        echo(json.dumps(data if len(data) > 1 else data[0], indent=2) if output == "json"
             else dump_documents(data).rstrip("\n"))
    states = _store_objects(a)
    result = ApplyResult()
    for run, h in new_runs:  # each new run planned once, dependencies first
        _plan_run(a, run, h, upstream_of(run, upstreams, a.planned), result)
    if dry_run:
        _report_dry_run(a, states, show_files=not output)
        return result
    for run in runs:
        if run.name not in a.planned:
            echo(f"run/{run.name} unchanged" + _unchanged_hint(store, run.name))
            row = store.latest_run(run.name)
            if row is not None:
                result.unchanged.append((run.name, row["generation"]))
    result.sweeps = [o for o in res.given if o.kind == "Sweep"]
    return result


def _unchanged(store, run: Obj, run_hash: str) -> bool:
    latest = store.latest_run(run.name) if store is not None else None
    return latest is not None and latest["run_hash"] == run_hash


def _preflight(a: _Apply, new_runs: list[Obj], warn) -> None:
    """The data checks before anything is written: each Dataset's files, each new run's data as
    it will read it, each Sweep's template as its trials will."""
    res = a.res
    diags = check_dataset_paths(res)
    if not diags and new_runs:
        diags = run_preflight(res, new_runs, warn=warn, prepared=a.prepared)
    if not diags:
        for sw in [o for o in res.given if o.kind == "Sweep"]:
            diags += run_preflight(res, [template_run(res, sw)], warn=warn)
    if diags:
        raise AamError(diags)


def _store_objects(a: _Apply) -> dict:
    """A real apply stores every given object (runs are reported with their generation, later);
    a dry run only says what it would do to each."""
    if a.dry_run:
        return {o.key: _dry_state(a.store, o) for o in a.res.given} if a.store is not None else {}
    for obj in a.res.given:
        state, _ = a.store.put_object(obj.kind, obj.name, obj.manifest, obj.hash)
        if obj.kind != "Run":
            a.echo(f"{obj.kind.lower()}/{obj.name} {state}")
    return {}


def _plan_run(a: _Apply, run: Obj, run_hash: str, upstream, result: ApplyResult) -> None:
    """Reserve the run's generation (a real apply), plan it, write it and submit it (unless held)."""
    store = a.store
    gen = _reserve(a, run, run_hash, upstream)
    bundle = a.res.run_bundle(run)
    ds = bundle["dataset"]
    if ds.name not in a.digests:
        a.digests[ds.name] = data_digests(ds.spec)
        a.artifacts[ds.name] = data_artifacts(ds.spec)
    provenance = annotations(name=run.name, generation=gen, run_hash=run_hash, dataset_spec=ds.spec,
                             hardware=bundle["hardware"].spec, seed=run.spec["trainer"]["seed"],
                             manifest_dir=run.doc.base_dir if run.doc is not None else None,
                             digests=a.digests[ds.name], artifacts=a.artifacts[ds.name])
    try:
        plan = build_plan(a.res, run, generation=gen, run_hash=run_hash, home=a.home, upstream=upstream,
                          provenance=provenance, python=a.python, host_bf16=a.host_bf16)
    except AamError:
        if not a.dry_run:
            store.set_phase(run.name, gen, RunPhase.FAILED, "planning failed")
        raise
    a.planned[run.name] = plan
    stripes = None if a.hold else _stripes_for(a.res, run, bundle, a.prepared, a.python)
    if a.dry_run:
        if stripes is not None:
            a.echo(f"run/{run.name} would wait for {stripes.label}: UniFrac of {stripes.n_samples} samples as "
                   f"{len(stripes.ranges)} partial-stripe jobs and a merge (dry run; {stripes.work})")
        return
    write_plan(store, plan)
    if a.hold:
        result.held.append(plan)
        return
    executor = executor_for(plan.executor)
    extra = _submit_stripes(store, plan, stripes, a.prepared[run.name], executor, a.echo) \
        if stripes is not None else None
    submit_plan(store, plan, executor, a.echo, extra_jobs=extra)
    result.started.append(plan)


def _reserve(a: _Apply, run: Obj, run_hash: str, upstream) -> int:
    """The generation the run is planned as: a new row in the store, the reserved one it is
    planned again under (`reuse`), or (dry run) the one it would get."""
    store = a.store
    labels = json.dumps(run.manifest["metadata"].get("labels", {}))
    if a.dry_run:
        return store.next_run_generation(run.name) if store is not None else 1
    if run.name in a.reuse:
        gen = a.reuse[run.name]
        store.update_run(run.name, gen, run_hash=run_hash, folder="", phase=RunPhase.PENDING, reason=None, labels=labels)
        store.add_event(run.name, gen, "Replanned", "reserved but never submitted; planned again")
        return gen
    return store.add_run(name=run.name, run_hash=run_hash, stage=run.spec["stage"],
                         executor=run.spec["executor"]["type"], folder="", phase=RunPhase.PENDING,
                         depends_on=", ".join(d.label for d in upstream.dependencies) if upstream and
                         upstream.dependencies else None, labels=labels)


def _report_dry_run(a: _Apply, states: dict, show_files: bool) -> None:
    for obj in a.res.given:
        state = states[obj.key] if a.store is not None else "created"
        if obj.kind == "Run" and obj.name in a.planned:
            p = a.planned[obj.name]
            state = f"{state}; would start generation {p.generation} ({p.executor})"
            state += p.after
        a.echo(f"{obj.kind.lower()}/{obj.name} {state} (dry run)")
    if show_files:
        for plan in a.planned.values():
            for fname in (plan.entry, RF.ACCELERATE_CONFIG):
                a.echo(f"--- run/{plan.name} {fname} ({plan.folder / fname})")
                a.echo(plan.files[fname].rstrip("\n"))


def _python() -> str:
    return os.environ.get("AAM_PYTHON") or sys.executable


def _dry_state(store, obj: Obj) -> str:
    row = store.object_row(obj.kind, obj.name)
    if row is None or row["deleted"]:
        return "created"
    return "configured" if row["hash"] != obj.hash else "unchanged"


def write_plan(store, plan: RunPlan) -> None:
    """Write a planned generation's files; its row learns the folder."""
    plan.folder.mkdir(parents=True, exist_ok=True)
    for fname, text in plan.files.items():
        RF.atomic_write(plan.folder / fname, text)
    os.chmod(plan.folder / plan.entry, 0o755)
    store.update_run(plan.name, plan.generation, folder=str(plan.folder))


def _stripes_for(res: Resolved, run: Obj, bundle: dict, prepared: dict, python: str):
    """The UniFrac stripe jobs a SLURM run waits for (executor.slurm.unifracPartitions), or None."""
    from aam_runtime.data.table import DataError, load  # lazily: numpy, pandas

    spec = run.spec
    if spec["executor"]["type"] != "slurm" or (spec["executor"]["slurm"].get("unifracPartitions") or 1) <= 1:
        return None
    tr = spec["trainer"]
    ds = bundle["dataset"].spec
    if not needs_distances(spec) or ds.get("distanceMatrix"):
        return None
    if run.name not in prepared:  # preflight was skipped, or did not keep it: read the data as the run will
        need = run_targets(spec, ds) if spec["stage"] == "finetune" else []
        try:
            prepared[run.name] = load(ds, need_targets=need, seed=tr["seed"])
        except DataError as exc:
            raise AamError(bundle["dataset"].diag(str(exc), ("spec",))) from None
    stripes = plan_stripes(ds, spec, bundle["hardware"].spec, prepared[run.name], python)
    if stripes is not None:  # its path goes into #SBATCH directives, like a run folder's
        check_path(str(stripes.work), "UniFrac cache folder ($AAM_CACHE_DIR)", run)
    return stripes


def _submit_stripes(store, plan: RunPlan, stripes, prepared, executor, echo) -> str:
    """Write and queue the stripe jobs; the merge job's id, for the run to wait on."""
    try:
        array, merge = submit_stripes(stripes, executor, prepared)
    except (AamError, OSError) as exc:
        store.set_phase(plan.name, plan.generation, RunPhase.FAILED, "UniFrac stripe jobs not submitted")
        if isinstance(exc, AamError):
            raise
        raise AamError(Diagnostic(f"cannot write the UniFrac stripes folder {stripes.work}: {exc}",
                                  file=str(stripes.work), hint="check AAM_CACHE_DIR points at a writable "
                                                               "shared file system")) from None
    store.add_event(plan.name, plan.generation, "UniFracStripes",
                    json.dumps({"key": stripes.key, "array_job": array, "merge_job": merge,
                                "partitions": len(stripes.ranges), "folder": str(stripes.work)}))
    echo(f"{stripes.label}: UniFrac of {stripes.n_samples} samples as {len(stripes.ranges)} partial-stripe jobs "
         f"(slurm job {array or 'queued before'}) and a merge (job {merge}) -> {stripes.work}")
    return merge


def submit_plan(store, plan: RunPlan, executor, echo, extra_jobs: str | None = None) -> None:
    """Hand a written generation to its executor (after extra_jobs too: SLURM ids, 'A:B')."""
    gen = plan.generation
    try:
        if plan.executor == "slurm":
            dep = ":".join(j for j in (dependency_jobs(store, plan), extra_jobs) if j) or None
            info = executor.submit(plan.folder, dependency=dep)
        else:
            info = executor.submit(plan.folder)
    except AamError:
        store.set_phase(plan.name, gen, RunPhase.FAILED, "submission failed")
        raise
    store.update_run(plan.name, gen, **info)
    store.add_event(plan.name, gen, "Submitted", json.dumps(info))
    what = f"job {info['job_id']}" if "job_id" in info else f"pid {info['pid']}"
    state = "created" if gen == 1 else "configured"
    echo(f"run/{plan.name} {state} (generation {gen}, {plan.executor} {what}{plan.after}) -> {plan.folder}")


def dependency_jobs(store, plan: RunPlan) -> str | None:
    """The SLURM job ids a plan waits for, as sbatch's afterok list wants them ('12:13')."""
    jobs = []
    for dep in plan.dependencies:
        row = store.run(dep.name, dep.generation)
        if row is not None and row["job_id"]:
            jobs.append(str(row["job_id"]))
    return ":".join(jobs) or None


def _unchanged_hint(store, name: str) -> str:
    """An unchanged manifest over a stopped run: say how to go on, since apply will not."""
    row = store.latest_run(name)
    if row is None:
        return ""
    (row, phase, _, _), = reconcile(store, [row])
    if phase not in STOPPED_BADLY:
        return ""
    return (f" (generation {row['generation']} is {phase}: 'aamctl resume {name}' continues it from its last "
            f"checkpoint; 'aamctl apply --force' starts generation {row['generation'] + 1})")
