"""The checks apply makes before anything is written or queued, on the data and the machine:
each Dataset read as its runs will read it (the same loader and split as training), the class
weights and profile window that need the data, a record's data digests, and whether a local run
fits this machine.

aam_runtime.data (numpy, pandas, biom) is imported inside the checks that read data: every verb's
module is imported when aamctl starts, and most verbs read no data."""
from __future__ import annotations

import json

from aam_runtime.localslots import request
from aam_runtime.machine import CPUS_VAR, MachineError, memory_bytes, parse_size, usable_cpus, visible_gpu_ids

from aamctl.api.resolve import Obj, Resolved, effective_model_ref, needs_distances, run_split, run_targets
from aamctl.errors import Diagnostic
from aamctl.planning.plan import processes


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


def check_dataset_paths(res: Resolved) -> list[Diagnostic]:
    """Each given Dataset's files exist and can be read."""
    from aam_runtime.data.preflight import check_dataset_files

    return [ds.diag(str(p), p.field, hint=p.hint) for ds in res.given if ds.kind == "Dataset"
            for p in check_dataset_files(ds.spec)]


def run_preflight(res: Resolved, runs: list[Obj], warn=None, prepared: dict | None = None) -> list[Diagnostic]:
    """Read each Dataset as its runs will (once per distinct use); errors are returned, warnings
    go to warn(). prepared, when given, receives each run's prepared data by run name (the same
    object for runs that read the data alike)."""
    from aam_runtime.data.preflight import check_dataset

    diags, done, warned = [], set(), set()
    kept: dict = {}
    for run in runs:
        ds = res.get("Dataset", run.spec["datasetRef"])
        hw = res.get("HardwareProfile", run.spec["hardwareRef"]).spec
        stage = run.spec["stage"]
        tr = run.spec["trainer"]
        names = run_targets(run.spec, ds.spec)
        # several: every one must be present in the samples kept
        target = tuple(names) if run.spec.get("targets") else (names[0] if names else None)
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
            diags += check_class_weights(res, run, ds, keep["prepared"])
            diags += check_profile_window(run, keep["prepared"].n_samples, procs)
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
    return diags + check_output_columns(res, runs)


def check_output_columns(res: Resolved, runs: list[Obj]) -> list[Diagnostic]:
    """outputs.errors.by names columns of the run's Dataset metadata."""
    from aam_runtime.data.table import DataError, read_metadata

    diags = []
    for run in runs:
        by = ((run.spec.get("outputs") or {}).get("errors") or {}).get("by") or []
        if not by:
            continue
        ds = res.get("Dataset", run.spec["datasetRef"])
        meta = ds.spec.get("metadata")
        if not meta:
            diags.append(run.diag(f"outputs.errors.by names metadata columns, but Dataset '{ds.name}' has no metadata",
                                  ("spec", "outputs", "errors", "by"), hint="add spec.metadata to the Dataset"))
            continue
        try:
            columns = list(read_metadata(meta["path"], meta["sampleIdColumn"]).columns)
        except DataError:
            continue  # the Dataset's own check says why
        for i, column in enumerate(by):
            if column not in columns:
                diags.append(run.diag(f"outputs.errors.by: {meta['path']} has no column '{column}' (columns: "
                                      f"{', '.join(columns[:8])})", ("spec", "outputs", "errors", "by", i)))
    return diags


def check_local_fit(res: Resolved, runs: list[Obj]) -> list[Diagnostic]:
    """Runs of the local executor that ask for more than this machine has (cores, GPUs, memory):
    they could only wait forever in its queue."""
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
                                  hint="apply a HardwareProfile that fits this machine (cpusPerTask: auto takes "
                                       "every core), or use executor type slurm"))
    return diags


def check_profile_window(run: Obj, n_samples: int, procs: int) -> list[Diagnostic]:
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


def check_class_weights(res: Resolved, run: Obj, ds: Obj, prepared) -> list[Diagnostic]:
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
    names = run_targets(run.spec, ds.spec)
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
