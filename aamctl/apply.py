"""apply: parse -> validate -> preflight -> plan -> store -> execute."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from aam_runtime import runfolder as RF
from aam_runtime.machine import CPUS_VAR, MachineError, cpu_bf16_flags, memory_bytes, parse_size, usable_cpus, \
    visible_gpu_ids

from .errors import AamError, Diagnostic
from .parse import load_paths
from .plan import Dependency, RunPlan, Upstream, build_plan, dump_documents, run_folder
from .slurm import check_path
from .resolve import MemoryStore, Obj, Resolved, effective_model_ref, init_field, init_runs, run_split
from .validate import validate

TERMINAL_BAD = {"Failed", "Cancelled"}


@dataclass
class ApplyResult:
    started: list[RunPlan] = field(default_factory=list)
    held: list[RunPlan] = field(default_factory=list)  # planned and written, not submitted (hold=True)
    sweeps: list[str] = field(default_factory=list)  # sweeps whose controller runs after this apply
    # (name, generation) of the newest generation of each unchanged run: apply --wait waits for
    # these too, and fails when one already ended Failed, Preempted or Cancelled
    unchanged: list[tuple[str, int]] = field(default_factory=list)


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


def needs_distances(spec: dict) -> bool:
    """Whether a run reads the Dataset's UniFrac distances (pretraining, or fine-tuning that keeps
    the UniFrac loss)."""
    w = spec["trainer"]["lossWeights"]
    return (spec["stage"] == "pretrain" and w["unifrac"] > 0) or \
        (spec["stage"] == "finetune" and w.get("unifracWhenFinetuning", 0) > 0)


def run_preflight(res: Resolved, runs: list[Obj], warn=None, prepared: dict | None = None) -> list[Diagnostic]:
    """Read each Dataset as its runs will (once per distinct use); errors are returned, warnings
    go to warn(). prepared, when given, receives each run's prepared data by run name (the same
    object for runs that read the data alike)."""
    from aam_runtime.data.preflight import check_dataset

    from .plan import processes

    diags, done, warned = [], set(), set()
    kept: dict = {}
    for run in runs:
        ds = res.get("Dataset", run.spec["datasetRef"])
        hw = res.get("HardwareProfile", run.spec["hardwareRef"]).spec
        stage = run.spec["stage"]
        tr = run.spec["trainer"]
        target = run.spec.get("target") or (ds.spec["targets"][0]["name"] if ds.spec["targets"] else None)
        if run.spec.get("targets"):  # several: every one must be present in the samples kept
            target = tuple(t["name"] for t in run.spec["targets"])
        need_d = needs_distances(run.spec)
        nodes = run.spec["executor"]["slurm"].get("nodes") if run.spec["executor"]["type"] == "slurm" else None
        procs = processes(hw, nodes)[1] if stage in ("pretrain", "finetune") else 1
        split = run_split(run.spec)
        key = (ds.name, stage, target, need_d, tr["batchSize"], procs, tr["seed"], json.dumps(split, sort_keys=True))
        if key in done:
            if prepared is not None and key in kept:
                prepared[run.name] = kept[key]
            continue
        done.add(key)
        keep: dict = {}
        # batchSize auto picks at least 2 (an even batch): what the split must hold at the least
        problems = check_dataset(ds.spec, stage, target, need_distances=need_d,
                                 batch_size=2 if tr["batchSize"] == "auto" else tr["batchSize"],
                                 processes=procs, seed=tr["seed"], keep=keep, split=split)
        if prepared is not None and "prepared" in keep:
            kept[key] = prepared[run.name] = keep["prepared"]
        if "prepared" in keep and not any(p.severity != "warning" for p in problems):
            diags += _check_class_weights(res, run, ds, keep["prepared"])
            diags += _check_profile_window(run, keep["prepared"].n_samples, procs)
        for problem in problems:
            owner = run if problem.owner == "run" else ds
            hint = problem.hint or f"needed by run/{run.name}"
            d = owner.diag(str(problem), problem.field, hint=hint)
            if problem.severity == "warning":
                text = "warning: " + d.render()
                if warn is not None and text not in warned:  # runs reading the data alike: said once
                    warned.add(text)
                    warn(text)
            else:
                diags.append(d)
    return diags


def check_local_fit(res: Resolved, runs: list[Obj]) -> list[Diagnostic]:
    """Runs of the local executor that ask for more than this machine has (cores, GPUs, memory):
    they could only wait forever in its queue."""
    from aam_runtime.localslots import request

    diags = []
    try:
        cpus = usable_cpus()
    except MachineError as exc:
        return [Diagnostic(str(exc), file="aamctl", hint=f"unset {CPUS_VAR} or set it to a whole number")]
    memory = memory_bytes()
    for run in runs:
        if run.spec["executor"]["type"] != "local":
            continue
        hw = res.get("HardwareProfile", run.spec["hardwareRef"])
        spec = hw.spec if run.spec["stage"] != "baseline" else dict(hw.spec, nodes=1, devicesPerNode=1)
        field = ("spec", "hardwareRef")
        procs = spec["devicesPerNode"]
        try:
            gpus = visible_gpu_ids(spec["accelerator"])
        except MachineError as exc:
            return [Diagnostic(str(exc), file="aamctl", hint="unset AAM_LOCAL_GPUS or set it to a whole number")]
        need_cpu, need_gpu = request(str(spec["cpusPerTask"]), procs, spec["accelerator"], cpus)
        short = []
        if need_cpu > cpus:
            short.append(f"{need_cpu} CPU cores ({spec['cpusPerTask']} per process x {procs}), this machine has "
                         f"{cpus}")
        if need_gpu > len(gpus):
            short.append(f"{need_gpu} {spec['accelerator']} GPUs, this machine has {len(gpus)}")
        want_mem = parse_size(spec["memoryPerNode"]) if spec.get("memoryPerNode") else None
        if want_mem and memory and want_mem > memory:
            short.append(f"memoryPerNode {spec['memoryPerNode']}, this machine has {memory / 2**30:.1f} GiB")
        if short:
            diags.append(run.diag(f"run/{run.name} asks for {'; '.join(short)}: the local executor could never "
                                  f"start it", field,
                                  hint=f"apply a HardwareProfile that fits this machine (cpusPerTask: auto takes "
                                       f"every core), or use executor type slurm"))
    return diags


def _check_profile_window(run: Obj, n_samples: int, procs: int) -> list[Diagnostic]:
    """trainer.profile starting after the run's last step, on an epoch-bounded run: the most steps
    the run could take (every sample in training, the smallest batch, no accumulation) is known
    once the data is read. (With maxSteps, validate says it.)"""
    tr = run.spec["trainer"]
    prof = tr.get("profile")
    if not prof or tr.get("maxSteps") or run.spec["stage"] not in ("pretrain", "finetune"):
        return []
    batch = 2 if tr["batchSize"] == "auto" else tr["batchSize"]
    accum = 1 if tr["gradientAccumulation"] == "auto" else tr["gradientAccumulation"]
    most = -(-n_samples // (batch * max(1, procs))) // max(1, accum) * tr["epochs"]
    if prof["steps"][0] <= most:
        return []
    return [run.diag(f"profile.steps {prof['steps']} starts after the run's last step: {tr['epochs']} epochs of "
                     f"{n_samples} samples at batch {batch} x {procs} process(es) are at most {most} steps, so "
                     f"nothing would be profiled", ("spec", "trainer", "profile", "steps"),
                     hint=f"profile steps within 1..{most}")]


def _check_class_weights(res: Resolved, run: Obj, ds: Obj, prepared) -> list[Diagnostic]:
    """A Model's targetHead.classWeights naming a class the run's classification target(s) do not
    have in the data: known now, from the column preflight read, not when fine-tuning starts
    (after the pretraining it waits for)."""
    if run.spec["stage"] != "finetune":
        return []
    model_ref = effective_model_ref(res, run)
    if not model_ref or ("Model", model_ref) not in res.objects:
        return []
    model = res.get("Model", model_ref)
    weights = model.spec["targetHead"].get("classWeights")
    if not isinstance(weights, dict):
        return []
    kinds = {t["name"]: t["type"] for t in ds.spec["targets"]}
    names = [t["name"] for t in run.spec.get("targets") or []] or \
        [run.spec.get("target") or (ds.spec["targets"][0]["name"] if ds.spec["targets"] else None)]
    columns = [n for n in names if n and kinds.get(n) == "classification" and n in prepared.metadata]
    if not columns:
        return []
    classes: set[str] = set()
    for col in columns:
        classes |= {str(v) for v in prepared.metadata[col].dropna().unique()}
    unknown = sorted(str(k) for k in weights if str(k) not in classes)
    if not unknown:
        return []
    shown = ", ".join(sorted(classes)[:12]) + (", ..." if len(classes) > 12 else "")
    return [model.diag(f"targetHead.classWeights names {', '.join(repr(u) for u in unknown)}, which "
                       f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of "
                       f"{', '.join(repr(c) for c in columns)} in Dataset '{ds.name}' (used by run/{run.name})",
                       ("spec", "targetHead", "classWeights"), hint=f"the classes are: {shown}")]


def _python() -> str:
    return os.environ.get("AAM_PYTHON") or sys.executable


def find_upstreams(res: Resolved, new_runs: list[Obj], store) -> dict[tuple[str, str], tuple]:
    """For each run to start and each run it starts from that is not started by this apply:
    (checkpoint, stage, Dependency or None), keyed by (run, source). A source from the store is
    reconciled now, before anything is planned; a source among this apply's runs is filled in
    when it has been planned (`upstream_of`)."""
    from .reconcile import reconcile

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
            if phase in TERMINAL_BAD:
                raise AamError(run.diag(f"initFrom run '{src.name}' is {phase}" + (f" ({reason})" if reason else ""),
                                        init_field(run.spec, name),
                                        hint=f"re-apply run/{src.name} (--force) and this run waits for it"))
            dep = None
            if phase != "Succeeded":
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
    from .executors import executor_for
    from .provenance import annotations, data_digests
    from . import sweep as SW

    docs = documents if documents is not None else load_paths(files)
    res = validate(docs, store or MemoryStore())
    diags = check_record_digests(res, allow_data_change)
    if diags:
        raise AamError(diags)
    result = ApplyResult()
    prepared: dict = {}  # run name -> the data preflight prepared for it

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
            diags = run_preflight(res, [r for r, _ in new_runs], warn=warn, prepared=prepared)
        if not diags:
            for sw in [o for o in res.given if o.kind == "Sweep"]:
                diags += run_preflight(res, [SW.template_run(res, sw)], warn=warn)
        if diags:
            raise AamError(diags)
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
        if output == "json":
            echo(json.dumps(data if len(data) > 1 else data[0], indent=2))
        else:
            echo(dump_documents(data).rstrip("\n"))
    if not dry_run:
        for obj in res.given:
            state, _ = store.put_object(obj.kind, obj.name, obj.manifest, obj.hash)
            if obj.kind != "Run":  # runs are reported below, with their generation
                echo(f"{obj.kind.lower()}/{obj.name} {state}")
    elif store is not None:
        states = {o.key: _dry_state(store, o) for o in res.given}

    # plan each new run once, dependencies first; a real apply reserves the generation first
    python = _python()
    host_bf16 = bool(cpu_bf16_flags())  # precision auto on a CPU of the local executor
    digests: dict[str, dict] = {}  # per Dataset: its files are hashed once, however many runs use it
    planned: dict[str, RunPlan] = {}
    for run, h in new_runs:
        upstream = upstream_of(run, upstreams, planned)
        if dry_run:
            gen = store.next_run_generation(run.name) if store is not None else 1
        elif reuse and run.name in reuse:
            gen = reuse[run.name]
            store.update_run(run.name, gen, run_hash=h, folder="", phase="Pending", reason=None,
                             labels=json.dumps(run.manifest["metadata"].get("labels", {})))
            store.add_event(run.name, gen, "Replanned", "reserved but never submitted; planned again")
        else:
            gen = store.add_run(name=run.name, run_hash=h, stage=run.spec["stage"],
                                executor=run.spec["executor"]["type"], folder="", phase="Pending",
                                depends_on=", ".join(d.label for d in upstream.dependencies) if upstream and
                                upstream.dependencies else None,
                                labels=json.dumps(run.manifest["metadata"].get("labels", {})))
        bundle = res.run_bundle(run)
        ds = bundle["dataset"]
        if ds.name not in digests:
            digests[ds.name] = data_digests(ds.spec)
        provenance = annotations(name=run.name, generation=gen, run_hash=h, dataset_spec=ds.spec,
                                 hardware=bundle["hardware"].spec, seed=run.spec["trainer"]["seed"],
                                 manifest_dir=run.doc.base_dir if run.doc is not None else None,
                                 digests=digests[ds.name])
        try:
            plan = build_plan(res, run, generation=gen, run_hash=h, home=home, upstream=upstream,
                              provenance=provenance, python=python, host_bf16=host_bf16)
        except AamError:
            if not dry_run:
                store.set_phase(run.name, gen, "Failed", "planning failed")
            raise
        planned[run.name] = plan
        stripes = None if hold else _stripes_for(res, run, bundle, prepared, python)
        if dry_run and stripes is not None:
            echo(f"run/{run.name} would wait for {stripes.label}: UniFrac of {stripes.n_samples} samples as "
                 f"{len(stripes.ranges)} partial-stripe jobs and a merge (dry run; {stripes.work})")
        if not dry_run:
            write_plan(store, plan)
            if hold:
                result.held.append(plan)
            else:
                executor = executor_for(plan.executor)
                extra = _submit_stripes(store, plan, stripes, prepared[run.name], executor, echo) \
                    if stripes is not None else None
                submit_plan(store, plan, executor, echo, extra_jobs=extra)
                result.started.append(plan)

    if dry_run:
        for obj in res.given:
            state = states[obj.key] if store is not None else "created"
            if obj.kind == "Run" and obj.name in planned:
                p = planned[obj.name]
                state = f"{state}; would start generation {p.generation} ({p.executor})"
                state += p.after
            echo(f"{obj.kind.lower()}/{obj.name} {state} (dry run)")
        if not output:
            for plan in planned.values():
                for fname in (plan.entry, RF.ACCELERATE_CONFIG):
                    echo(f"--- run/{plan.name} {fname} ({plan.folder / fname})")
                    echo(plan.files[fname].rstrip("\n"))
        return result
    for run in runs:
        if run.name not in planned:
            echo(f"run/{run.name} unchanged" + _unchanged_hint(store, run.name))
            row = store.latest_run(run.name)
            if row is not None:
                result.unchanged.append((run.name, row["generation"]))
    for sw in [o for o in res.given if o.kind == "Sweep"]:
        echo(SW.apply_sweep(store, home, sw))
        result.sweeps.append(sw.name)
    return result


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
    from aam_runtime.data.table import DataError, load

    from .stripes import plan_stripes

    spec = run.spec
    if spec["executor"]["type"] != "slurm" or (spec["executor"]["slurm"].get("unifracPartitions") or 1) <= 1:
        return None
    tr = spec["trainer"]
    ds = bundle["dataset"].spec
    if not needs_distances(spec) or ds.get("distanceMatrix"):
        return None
    if run.name not in prepared:  # preflight was skipped, or did not keep it: read the data as the run will
        targets = [t["name"] for t in spec.get("targets") or []] or \
            [spec.get("target") or (ds["targets"][0]["name"] if ds["targets"] else None)]
        need = [t for t in targets if t] if spec["stage"] == "finetune" else []
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
    from .stripes import submit

    try:
        array, merge = submit(stripes, executor, prepared)
    except (AamError, OSError) as exc:
        store.set_phase(plan.name, plan.generation, "Failed", "UniFrac stripe jobs not submitted")
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
        store.set_phase(plan.name, gen, "Failed", "submission failed")
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
    from .reconcile import reconcile

    row = store.latest_run(name)
    if row is None:
        return ""
    (row, phase, _, _), = reconcile(store, [row])
    if phase not in TERMINAL_BAD:
        return ""
    return (f" (generation {row['generation']} is {phase}: 'aamctl resume {name}' continues it from its last "
            f"checkpoint; 'aamctl apply --force' starts generation {row['generation'] + 1})")
