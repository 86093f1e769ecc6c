"""UniFrac as a SLURM job array of partial stripes plus a merge job, queued before the run.

At 100,000 samples one UniFrac computation is hours on one node, and holds the whole matrix
(40 GB in fp32) in memory. Striped UniFrac splits the work into stripes: `ssu --mode partial
--start S --stop E` computes a range of them and `ssu --mode merge-partial` joins the pieces
(bit-identical to the one-off result: tests/test_slurm.py). With `executor.slurm.unifracPartitions`
above 1, apply writes the run's prepared table into the cache folder, queues one array task per
range and a merge job after them (afterok); the merge converts ssu's HDF5 into the cache's fp32
`.npy` and publishes it under the same key the runtime looks for, so the run (queued afterok on
the merge) finds its matrix ready. Torch-free.
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from aam_runtime.runfolder import atomic_write

from aamctl.planning.launch import shell_join
from aamctl.planning.slurm import cpu_directives

WORK_PREFIX = ".stripes-"


@dataclass
class StripePlan:
    key: str
    work: Path  # in the cache folder: the table, the scripts, the partial outputs, the logs
    n_samples: int
    ranges: list[tuple[int, int]]
    files: dict[str, str] = field(default_factory=dict)  # file name -> content (in work)

    @property
    def label(self) -> str:
        return f"unifrac/{self.key[:8]}"


def stripe_ranges(n_samples: int, partitions: int) -> list[tuple[int, int]]:
    """Striped UniFrac has (n + 1) // 2 stripes; split them into at most `partitions` contiguous
    ranges of near-equal size (as ssu's partial-report does)."""
    stripes = (n_samples + 1) // 2
    p = max(1, min(partitions, stripes))
    bounds = [i * stripes // p for i in range(p + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(p)]


def _directives(run: dict, hw: dict, job: str, log: str, array: str | None = None) -> list[str]:
    sl = run["executor"]["slurm"]
    hs = hw["slurm"]
    d = [f"--job-name={job}", f"--output={log}", f"--error={log}", "--nodes=1", "--ntasks=1",
         *cpu_directives(hw, 1), f"--time={sl.get('timeLimit') or hs['defaultTimeLimit']}",
         "--no-requeue"]
    if array:
        d.append(f"--array={array}")
    if hw.get("memoryPerNode"):
        d.append(f"--mem={hw['memoryPerNode']}")
    for key in ("partition", "account", "qos"):
        value = sl.get(key) or hs.get(key)
        if value:
            d.append(f"--{key}={value}")
    if hs.get("constraint"):
        d.append(f"--constraint={hs['constraint']}")
    return d


def _wrap(hw: dict, work: Path, tree: str, argv: list[str]) -> str:
    """A command line, inside the profile's container when it has one (ssu then comes from it)."""
    container = hw.get("container")
    if not container:
        return shell_join(argv)
    binds = sorted({str(work), str(Path(tree).parent)} | set(container["binds"]))
    return shell_join([container["runtime"], "exec", "--bind", ",".join(binds), container["image"], *argv])


def render(plan: StripePlan, run: dict, hw: dict, tree: str, metric: str, python: str) -> None:
    """The array script (one task per range) and the merge script, into plan.files."""
    from aam_runtime.data.unifrac import STRIPES_MERGED, STRIPES_PARTIALS, STRIPES_TABLE, ssu_command

    w = plan.work
    starts = " ".join(str(a) for a, _ in plan.ranges)
    stops = " ".join(str(b) for _, b in plan.ranges)
    partial = ["ssu", "-i", str(w / STRIPES_TABLE), "-t", str(tree), "-m", f"{metric}_fp32", "--mode", "partial"]
    cmd = _wrap(hw, w, tree, partial) + ' --start "$start" --stop "$stop" -o "$out"'
    env = "export OMP_NUM_THREADS=\"${SLURM_CPUS_PER_TASK:-1}\"" if hw["cpusPerTask"] != "auto" else \
        "export OMP_NUM_THREADS=\"${SLURM_CPUS_ON_NODE:-1}\""  # cpusPerTask auto: a whole node
    head = ["#!/bin/bash", f"# aam: UniFrac ({metric}) of {plan.n_samples} samples, partial stripes "
            "(written by aamctl; do not edit)"]
    plan.files["partial.sbatch"] = "\n".join(
        head + ["#SBATCH " + x for x in _directives(run, hw, f"aam-{plan.label.replace('/', '-')}-partial",
                                                     str(w / "partial-%a.log"), f"0-{len(plan.ranges) - 1}")]
        + ["set -euo pipefail", env, f"cd {shlex.quote(str(w))}",
           f"starts=({starts})", f"stops=({stops})",
           'start="${starts[$SLURM_ARRAY_TASK_ID]}"', 'stop="${stops[$SLURM_ARRAY_TASK_ID]}"',
           'out="partial.$SLURM_ARRAY_TASK_ID.tmp"',
           'echo "[$(date +%H:%M:%S)] stripes $start-$stop on $(hostname)"',
           cmd, 'mv -f "$out" "partial.$SLURM_ARRAY_TASK_ID"',
           'echo "[$(date +%H:%M:%S)] done"', ""])
    merge = ssu_command(w / STRIPES_TABLE, tree, metric, w / STRIPES_MERGED, "--mode", "merge-partial",
                        "--partial-pattern", str(w / STRIPES_PARTIALS))
    publish = [python, "-m", "aam_runtime.data.unifrac", "publish", str(w)]
    plan.files["merge.sbatch"] = "\n".join(
        head[:1] + [f"# aam: merge the {len(plan.ranges)} partial UniFrac results and publish them to the cache"]
        + ["#SBATCH " + x for x in _directives(run, hw, f"aam-{plan.label.replace('/', '-')}-merge",
                                                str(w / "merge.log"))]
        + ["set -euo pipefail", env, f"cd {shlex.quote(str(w))}",
           'echo "[$(date +%H:%M:%S)] merging on $(hostname)"',
           _wrap(hw, w, tree, merge), _wrap(hw, w, tree, ["python3"] + publish[1:]) if hw.get("container")
           else shell_join(publish), 'echo "[$(date +%H:%M:%S)] published"', ""])


def plan_stripes(ds: dict, run: dict, hw: dict, prepared, python: str) -> StripePlan | None:
    """The stripe jobs a SLURM run needs before it starts, or None: one partition, a precomputed
    matrix, or a matrix already in the cache."""
    from aam_runtime.data import unifrac as U

    partitions = run["executor"]["slurm"].get("unifracPartitions") or 1
    if partitions <= 1 or ds.get("distanceMatrix") or not ds.get("tree"):
        return None
    metric = ds["unifrac"]["metric"]
    key = U.cache_key(prepared.sample_ids, prepared.asv_ids, prepared.counts, ds["tree"], metric)
    if U.cached(key):
        return None
    plan = StripePlan(key=key, work=U.cache_dir() / f"{WORK_PREFIX}{key}", n_samples=prepared.n_samples,
                      ranges=stripe_ranges(prepared.n_samples, partitions))
    render(plan, run, hw, U.tree_path(ds["tree"]), metric, python)  # a .qza tree: the Newick inside
    return plan


def write(plan: StripePlan, prepared) -> None:
    """The work folder: the prepared table ssu reads, the sample ids in the runtime's order, the
    key, and the two scripts."""
    from aam_runtime.data.unifrac import STRIPES_IDS, STRIPES_PLAN, STRIPES_TABLE, _write_biom


    plan.work.mkdir(parents=True, exist_ok=True)
    tmp = plan.work / f".{STRIPES_TABLE}.tmp"
    _write_biom(tmp, prepared.sample_ids, prepared.asv_ids, prepared.counts)
    tmp.replace(plan.work / STRIPES_TABLE)
    atomic_write(plan.work / STRIPES_IDS, "\n".join(prepared.sample_ids) + "\n")
    atomic_write(plan.work / STRIPES_PLAN, json.dumps({"key": plan.key, "samples": plan.n_samples,
                                                      "ranges": plan.ranges}) + "\n")
    for name, text in plan.files.items():
        atomic_write(plan.work / name, text)


def submit(plan: StripePlan, executor, prepared) -> tuple[str, str]:
    """Write the folder and queue the array, then the merge after it; (array job, merge job). A
    merge still queued or running for the same key (another run on the same data) is waited for
    instead: nothing is rewritten under jobs that are reading it."""
    jid = plan.work / "merge.jobid"
    if jid.exists():
        old = jid.read_text().strip()
        st = executor.query(old) if old else None
        if st is not None and st.state.split()[0] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return (plan.work / "partial.jobid").read_text().strip() if (plan.work / "partial.jobid").exists() \
                else "", old
    write(plan, prepared)
    array = executor.submit(plan.work, script=plan.work / "partial.sbatch")["job_id"]
    merge = executor.submit(plan.work, dependency=array, script=plan.work / "merge.sbatch")["job_id"]
    (plan.work / "partial.jobid").write_text(array + "\n")
    jid.write_text(merge + "\n")
    return array, merge
