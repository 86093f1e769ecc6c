"""get, status, describe."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import click

from aam_runtime import runfolder as RF

from aamctl.api.resolve import builtin_documents, normalize
from aamctl.errors import AamError, Diagnostic
from aamctl.planning.plan import dump_documents
from aamctl.runs.reconcile import requeue_summary
from aamctl.ui import flags
from aamctl.ui.context import Context, kind_of, observe, observe_one
from aamctl.ui.printers import Table, age, fmt, print_data, rows_as_dicts, run_table, timestamp
from aamctl.ui.selectors import match_labels, parse_selector
from aamctl.ui.sweepviews import describe_sweep, get_sweeps, print_sweeps, sweep_rows


@click.command()
@click.argument("run", required=False)
@flags.output("wide", "yaml", "json")
@flags.selector
@click.option("--all-generations", "-A", is_flag=True, help="Show every generation, not just the latest.")
@click.pass_context
def status(ctx, run, output, selector, all_generations):
    """Runs with phase, progress, loss and best metric (reconciled now)."""
    c = Context(ctx)
    store = c.require_store()
    if run:
        c.find_run(store, run)
    rows = store.runs(run, all_generations=all_generations)
    if selector:
        terms = parse_selector(selector)
        rows = [r for r in rows if match_labels(json.loads(r["labels"] or "{}"), terms)]
    observed = observe(store, rows)
    boards = []
    if not run and not selector:
        boards = sweep_rows(store)
    if output in ("yaml", "json"):
        print_data(rows_as_dicts(observed), output)
        return
    if not observed:
        click.echo("No runs.")
    else:
        run_table(observed, output == "wide").print()
    if boards:
        click.echo("")
        print_sweeps(boards)


SUMMARY_COLUMNS = {
    "Dataset": ["TABLE", "TARGETS", "UNIFRAC"],
    "Model": ["DIM", "LAYERS(nuc/sample/head)", "HEADS"],
    "HardwareProfile": ["ACCELERATOR", "DEVICES", "STRATEGY", "PRECISION"],
}


def _summary(kind: str, s: dict) -> list[str]:
    if kind == "Dataset":
        return [Path(s["table"]).name, ",".join(t["name"] for t in s["targets"]) or "-",
                "matrix" if s.get("distanceMatrix") else ("tree" if s.get("tree") else "-")]
    if kind == "Model":
        return [str(s["embeddingDim"]), f"{s['nucleotide']['layers']}/{s['sample']['layers']}/{s['encoderHead']['layers']}",
                str(s["nucleotide"]["heads"])]
    return [s["accelerator"] + (f" {s['deviceModel']}" if s.get("deviceModel") else ""),
            f"{s['nodes']}x{s['devicesPerNode']}", s["strategy"], s["precision"]]


@click.command()
@click.argument("resource")
@click.argument("name", required=False)
@flags.output("wide", "yaml", "json")
@flags.selector
@click.pass_context
def get(ctx, resource, name, output, selector):
    """List runs, sweeps, datasets, models or hardwareprofiles."""
    kind = kind_of(resource)
    if kind == "Run":
        return ctx.invoke(status, run=name, output=output, selector=selector, all_generations=False)
    if kind == "Sweep":
        return get_sweeps(ctx, name, output)

    store = Context(ctx).store(create=False)
    items = []  # (name, source, generation, applied_at, manifest)
    if store is not None:
        for r in store.list_objects(kind):
            items.append((r["name"], "applied", r["generation"], r["applied_at"], r["manifest"]))
    if kind == "HardwareProfile":
        have = {i[0] for i in items}
        for d in builtin_documents():
            if d.data["metadata"]["name"] not in have:
                obj = normalize(d)
                obj.manifest["metadata"]["annotations"] = {}
                items.append((obj.name, "builtin", 0, None, obj.manifest))
    if name:
        items = [i for i in items if i[0] == name]
        if not items:
            raise AamError(Diagnostic(f"{kind} '{name}' not found", file="aamctl",
                                      hint=f"'aamctl get {resource}' lists them"))
    if selector:
        terms = parse_selector(selector)
        items = [i for i in items if match_labels(i[4]["metadata"].get("labels", {}), terms)]
    items.sort(key=lambda i: i[0])
    if output in ("yaml", "json"):
        data = [i[4] for i in items]
        if output == "yaml":
            click.echo(dump_documents(data), nl=False)
        else:
            print_data(data if len(data) != 1 or not name else data[0], "json")
        return
    if not items:
        click.echo(f"No {resource}.")
        return
    t = Table(["NAME", *SUMMARY_COLUMNS[kind], "SOURCE", "GEN", "AGE"])
    for n, source, gen, applied, m in items:
        t.add_row(n, *_summary(kind, m["spec"]), source, str(gen) if gen else "-", age(applied))
    t.print()


RUN_FILES = (RF.RECORD, RF.ACCELERATE_CONFIG, RF.LOCAL_SCRIPT, RF.SLURM_SCRIPT, RF.LOG, RF.STATUS, RF.METRICS, RF.REQUEUES,
             RF.PREDICTIONS, RF.SPLIT, RF.checkpoint_name("best"), RF.checkpoint_name("last"),
             *(f"{RF.PLOTS}/{p}" for p in (RF.LOSS_PLOT, RF.PRED_PLOT, RF.CONFUSION_PLOT)))


@click.command()
@click.argument("resource")
@click.argument("name")
@flags.generation
@flags.output("yaml", "json")
@click.pass_context
def describe(ctx, resource, name, generation, output):
    """Details of an object; for a run: spec, conditions, events, paths and metrics; for a sweep:
    its leaderboard, best first."""
    import yaml

    kind = kind_of(resource)
    if kind == "Sweep":
        return describe_sweep(ctx, name, output, generation)
    if kind != "Run":
        return ctx.invoke(get, resource=resource, name=name, output="yaml", selector=None)
    c = Context(ctx)
    store = c.require_store()
    row, phase, reason, st = observe_one(store, c.find_run(store, name, generation))
    if output in ("yaml", "json"):
        print_data(rows_as_dicts([(row, phase, reason, st)])[0], output)
        return
    folder = Path(row["folder"])
    out = [f"Name:        {row['name']}", f"Generation:  {row['generation']}", f"Stage:       {row['stage']}",
           f"Phase:       {phase}" + (f" ({reason})" if reason else ""),
           f"Executor:    {row['executor']}" + (f" job {row['job_id']}" if row["job_id"] else
                                                 (f" pid {row['pid']}" if row["pid"] else "")),
           f"Created:     {timestamp(row['created'])}", f"Started:     {timestamp(row['started'] or st.get('started'))}",
           f"Finished:    {timestamp(row['finished'] or st.get('finished'))}",
           f"Run hash:    {row['run_hash']}", f"Folder:      {folder}"]
    if row["depends_on"]:
        out.append(f"Depends on:  {row['depends_on']}")
    requeues = requeue_summary(folder)
    if requeues:
        out.append(f"Requeues:    {requeues}")
    out.append("Paths:")
    out.extend(f"  {f}" for f in RUN_FILES if (folder / f).exists())
    if (folder / RF.TENSORBOARD).is_dir():
        out.append(f"TensorBoard: tensorboard --logdir {shlex.quote(str(folder / RF.TENSORBOARD))}")
    if st:
        out.append("Progress:")
        for k in ("epoch", "step", "total_steps", "throughput", "device", "world_size", "attention_backend", "precision"):
            if st.get(k) is not None:
                out.append(f"  {k}: {fmt(st[k])}")
        if st.get("peak_memory_mb") is not None:
            out.append(f"  peak memory: {st['peak_memory_mb']:.0f} MiB ({st.get('memory_kind', 'rank 0')})")
        if st.get("heartbeat"):
            out.append(f"  heartbeat: {age(st['heartbeat'])} ago")
    metrics = st.get("final_metrics") or st.get("val_metrics")
    if metrics:
        out.append("Metrics:" if st.get("final_metrics") else "Metrics (last validation):")
        out.extend(f"  {k}: {fmt(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))
    if (st.get("best_metric") or {}).get("value") is not None:
        b = st["best_metric"]
        out.append(f"Best:        {b['name']}={fmt(b['value'])} at step {b['step']}")
    out.append("Events:")
    events = [(e["time"], e["event"], e["detail"] or "") for e in store.events(row["name"], row["generation"])]
    for e in RF.read_jsonl(folder / RF.EVENTS):
        detail = ", ".join(f"{k}={v}" for k, v in e.items() if k not in ("time", "event"))
        events.append((e["time"], e["event"].capitalize(), detail))
    for t_, ev, detail in sorted(events, key=lambda x: x[0]):
        out.append(f"  {timestamp(t_)}  {ev:<13} {detail}")
    try:
        docs = [d for d in yaml.safe_load_all((folder / RF.RECORD).read_text()) if d]
        run_doc = next(d for d in docs if d.get("kind") == "Run" and d["metadata"]["name"] == row["name"])
        out.append("Spec:")
        out.extend("  " + line for line in yaml.safe_dump(run_doc["spec"], sort_keys=False).splitlines())
    except (OSError, StopIteration, yaml.YAMLError):
        pass
    click.echo("\n".join(out))


COMMANDS = [get, status, describe]
