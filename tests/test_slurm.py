"""SLURM executor: golden renders, quoting, and jobs on a real local cluster (slurmctld + slurmd)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aam_runtime import runfolder as RF
from aamctl.planning.plan import build_plan
from aamctl.errors import AamError
from aamctl.api.parse import parse_text
from aamctl.api.validate import validate

from slurm_cluster import ClusterUnavailable, SlurmCluster
from synth import CPU_PROFILES, make_dataset, pretrain_run

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
from conftest import AAMCTL, aamctl  # noqa: E402
PROFILES = ["cpu", "cuda-a100", "cuda-h100", "cosmos-mi300a"]


def _render(profile: str, nodes: int, name: str = "golden-run", extra_env: str = "",
            trainer: str = "{batchSize: 32}", profile_text: str = "") -> dict:
    """The planned files of a pretraining Run on `profile` (a built-in, or one given in profile_text)."""
    text = (profile_text + "---\n" if profile_text else "") + f"""apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: golden-data}}
spec: {{table: /data/oral/table.biom, tree: /data/oral/tree.nwk, metadata: {{path: /data/oral/metadata.tsv}}}}
---
apiVersion: aam/v1alpha1
kind: Model
metadata: {{name: golden-model}}
spec: {{}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: {name}}}
spec:
  stage: pretrain
  datasetRef: golden-data
  modelRef: golden-model
  hardwareRef: {profile}
  trainer: {trainer}
  executor:
    type: slurm
    slurm: {{nodes: {nodes}, timeLimit: "12:00:00", account: aam-test, partition: gpu}}
"""
    res = validate(parse_text(text, "golden.yaml", Path("/")))
    run = res.get("Run", name)
    plan = build_plan(res, run, generation=1, run_hash="0123456789abcdef", home=Path("/aam-home"), upstream=None,
                      provenance={}, python="/opt/aam/venv/bin/python")
    return plan.files


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("nodes", [1, 4])
def test_golden_renders(profile, nodes):
    files = _render(profile, nodes)
    for fname in (RF.SLURM_SCRIPT, RF.ACCELERATE_CONFIG):
        golden = GOLDEN / f"{profile}-{nodes}node-{fname}"
        if os.environ.get("AAM_UPDATE_GOLDEN"):
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(files[fname])
        assert golden.exists(), f"missing golden file {golden}; run with AAM_UPDATE_GOLDEN=1 and review it"
        assert files[fname] == golden.read_text(), f"{golden.name} changed: review and regenerate"


def test_sbatch_syntax_and_directives():
    files = _render("cosmos-mi300a", 4)
    script = files[RF.SLURM_SCRIPT]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    for d in ("--nodes=4", "--gpus-per-node=4", "--time=12:00:00", "--signal=B:USR1@300", "--requeue",
              "--account=aam-test", "--exclusive"):
        assert f"#SBATCH {d}" in script
    assert "module load rocm/6.3.0" in script and "export NCCL_SOCKET_IFNAME=hsn0" in script
    assert "--num_processes 16" in script and "--machine_rank \"${SLURM_NODEID}\"" in script
    acc = files[RF.ACCELERATE_CONFIG]
    assert "num_processes: 16" in acc and "num_machines: 4" in acc and "mixed_precision: bf16" in acc


def test_rocprof_wraps_each_nodes_launcher(tmp_path):
    """trainer.profile.rocprof on a ROCm profile: the launcher runs under rocprof --stats with one
    output folder per node (the node name expands on the node, inside srun's bash -c)."""
    script = _render("cosmos-mi300a", 2, trainer="{batchSize: 32, profile: {steps: [5, 7], rocprof: true}}")[RF.SLURM_SCRIPT]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    srun = next(line for line in script.splitlines() if line.startswith("srun "))
    words = shlex.split(srun.rstrip(" &"))
    inner = words[words.index("-c") + 1]
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "rocprof").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    (fake / "rocprof").chmod(0o755)
    out = subprocess.run(["bash", "-c", inner.replace("/aam-home", str(tmp_path / "home"))], capture_output=True,
                         text=True, env={"PATH": f"{fake}:/usr/bin:/bin", "SLURMD_NODENAME": "node7", "SLURM_NODEID": "1",
                                         "MAIN_ADDR": "node1"})
    args = out.stdout.split("\n")
    assert out.returncode == 0, out.stderr
    folder = args[args.index("-d") + 1]
    assert folder.endswith("/profile/rocprof-node7") and Path(folder).is_dir()
    assert args[:2] == ["--stats", "-d"] and "accelerate.commands.launch" in args
    assert args[args.index("--machine_rank") + 1] == "1"
    # elsewhere it changes nothing in the job script
    plain = _render("cuda-h100", 2, trainer="{batchSize: 32, profile: {steps: [5, 7], rocprof: true}}")[RF.SLURM_SCRIPT]
    assert "rocprof" not in plain


def test_scratch_staging_is_rendered_on_every_node_and_bound_into_the_container():
    text = """apiVersion: aam/v1alpha1
kind: HardwareProfile
metadata: {name: cosmos-scratch}
spec:
  accelerator: rocm
  devicesPerNode: 4
  strategy: ddp
  rocmVersion: "6.3.0"
  scratch: /scratch/$USER/job_$SLURM_JOB_ID
  container: {image: /images/aam.sif}
"""
    files = _render("cosmos-scratch", 2, profile_text=text)
    script = files[RF.SLURM_SCRIPT]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert 'export AAM_SCRATCH="/scratch/$USER/job_$SLURM_JOB_ID"' in script
    stage_in = next(line for line in script.splitlines() if line.startswith("if ! srun"))
    assert "--nodes=2 --ntasks-per-node=1" in stage_in and "aam_runtime.scratch_copy in /aam-home/runs/golden-run/1" in stage_in
    assert "--bind /aam-home/runs,/data/oral,/scratch /images/aam.sif" in stage_in
    lines = script.splitlines()
    out_at = next(i for i, line in enumerate(lines) if line.endswith("aam_runtime.scratch_copy out' || true"))
    assert lines[out_at - 1] == "rm -f PREEMPT" or "PREEMPT" in lines[out_at - 1]
    assert out_at < next(i for i, line in enumerate(lines) if "scontrol requeue" in line)  # before a requeue
    # without scratch nothing of it is rendered
    assert "AAM_SCRATCH" not in _render("cosmos-mi300a", 2)[RF.SLURM_SCRIPT]


def test_time_limit_over_profile_maximum_is_refused():
    text = """apiVersion: aam/v1alpha1
kind: Dataset
metadata: {name: d}
spec: {table: /x.biom, tree: /x.nwk}
---
apiVersion: aam/v1alpha1
kind: Model
metadata: {name: m}
spec: {}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: r}
spec:
  stage: pretrain
  datasetRef: d
  modelRef: m
  hardwareRef: cosmos-mi300a
  executor: {type: slurm, slurm: {timeLimit: "1-00:00:01", nodes: 5}}
"""
    with pytest.raises(AamError) as info:
        validate(parse_text(text, "r.yaml", Path("/")))
    msgs = info.value.render()
    assert "exceeds the maximum 24:00:00" in msgs and "5 nodes exceed the maximum 4" in msgs


def test_values_reaching_the_shell_are_quoted(tmp_path):
    evil = "$(touch PWNED); `touch PWNED2` 'x' \"y\""
    text = f"""apiVersion: aam/v1alpha1
kind: HardwareProfile
metadata: {{name: evil}}
spec:
  accelerator: cpu
  env: {{EVIL: {json.dumps(evil)}}}
  modules: [gcc/12.2]
---
apiVersion: aam/v1alpha1
kind: Dataset
metadata: {{name: d}}
spec: {{table: /x.biom, tree: /x.nwk}}
---
apiVersion: aam/v1alpha1
kind: Model
metadata: {{name: m}}
spec: {{}}
---
apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: r}}
spec: {{stage: pretrain, datasetRef: d, modelRef: m, hardwareRef: evil, executor: {{type: slurm}}}}
"""
    res = validate(parse_text(text, "r.yaml", tmp_path))
    plan = build_plan(res, res.get("Run", "r"), generation=1, run_hash="h", home=tmp_path / "home", upstream=None,
                      provenance={}, python=sys.executable)
    script = plan.files[RF.SLURM_SCRIPT]
    env_line = next(l for l in script.splitlines() if l.startswith("export EVIL="))
    out = subprocess.run(["bash", "-c", env_line + '; printf %s "$EVIL"'], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout == evil
    assert not list(tmp_path.glob("PWNED*"))
    # a module name or a partition with shell syntax never gets that far: the schema refuses it
    bad = text.replace("modules: [gcc/12.2]", "modules: ['gcc; rm -rf /']")
    with pytest.raises(AamError, match="does not have the expected form"):
        validate(parse_text(bad, "r.yaml", tmp_path))
    # a run folder SLURM directives cannot carry is refused with a clear message, and apply
    # refuses it before it stores anything or reserves a generation
    with pytest.raises(AamError, match="SLURM directives cannot carry"):
        build_plan(res, res.get("Run", "r"), generation=1, run_hash="h", home=tmp_path / "my home", upstream=None,
                   provenance={}, python=sys.executable)
    from aamctl.runs.apply import apply_manifests
    from aamctl.runs.store import StateStore

    (tmp_path / "r.yaml").write_text(text)
    store = StateStore(tmp_path / "my home")
    with pytest.raises(AamError, match="SLURM directives cannot carry"):
        apply_manifests(store, [str(tmp_path / "r.yaml")], home=tmp_path / "my home", preflight=False,
                        echo=lambda *_: None)
    assert store.latest_run("r") is None and store.object_row("Run", "r") is None


# ---------------------------------------------------------------- the real cluster

@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    root = Path("/tmp") / f"aam-slurm-{os.getpid()}"  # short path: slurmd's spool and socket paths
    try:
        cluster = SlurmCluster(root).start()
    except (ClusterUnavailable, subprocess.CalledProcessError) as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the SLURM tests, but the local cluster did not start: {exc}")
        pytest.skip(f"no local SLURM cluster: {exc}")
    with pytest.MonkeyPatch.context() as mp:
        for k, v in cluster.env.items():
            mp.setenv(k, v)
        yield cluster
        cluster.stop()


def _manifest(data, name, epochs=2, hardware="cpu-1", extra_trainer="", slurm_extra=""):
    return (f"{CPU_PROFILES}---\n" + pretrain_run(data, name, epochs, hardware, extra_trainer)
            + f'  executor: {{type: slurm, slurm: {{timeLimit: "00:10:00"{slurm_extra}}}}}\n')


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "home", make_dataset(tmp_path / "data", n_samples=24, n_asvs=30), tmp_path


def _phase(home, name):
    return json.loads(aamctl(home, "status", name, "-o", "json").stdout)[0]


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_run_pending_running_succeeded(slurm, env):
    home, data, tmp = env
    f = tmp / "r.yaml"
    f.write_text(_manifest(data, "slurm-quick"))
    out = aamctl(home, "apply", "-f", str(f)).stdout
    assert "run/slurm-quick created (generation 1, slurm job" in out
    seen = []
    deadline = time.time() + 240
    while time.time() < deadline:
        st = _phase(home, "slurm-quick")
        if not seen or seen[-1] != st["phase"]:
            seen.append(st["phase"])
        if st["phase"] in ("Succeeded", "Failed", "Cancelled"):
            break
        time.sleep(0.3)
    assert seen[-1] == "Succeeded", (seen, st, slurm.logs())
    assert "Running" in seen
    assert st["job_id"]
    logs = aamctl(home, "logs", "slurm-quick").stdout
    assert "job " in logs and "validation epoch" in logs
    assert "Succeeded" in aamctl(home, "describe", "run", "slurm-quick").stdout


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_cancel(slurm, env):
    home, data, tmp = env
    f = tmp / "r.yaml"
    f.write_text(_manifest(data, "slurm-cancel", epochs=1000))
    aamctl(home, "apply", "-f", str(f))
    time.sleep(2)
    assert "cancelled" in aamctl(home, "cancel", "slurm-cancel").stdout
    st = _phase(home, "slurm-cancel")
    assert st["phase"] == "Cancelled"
    job = st["job_id"]
    deadline = time.time() + 60
    while time.time() < deadline:
        q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip()
        if not q:
            break
        time.sleep(0.5)
    assert not q


def _time_limit_signal_then_end(home, name, slurm, timeout):
    """Once the run has trained 3 steps, send its batch shell USR1 (what SLURM sends --signal
    seconds before the time limit); wait for a final phase. Returns (status row, job id)."""
    st = _phase(home, name)
    folder, job = Path(st["folder"]), st["job_id"]
    deadline = time.time() + 180
    s = {}
    while time.time() < deadline:
        s = json.loads((folder / RF.STATUS).read_text()) if (folder / RF.STATUS).exists() else {}
        if s.get("step", 0) >= 3:
            break
        time.sleep(0.2)
    assert s.get("step", 0) >= 3, slurm.logs()
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        st = _phase(home, name)
        if st["phase"] in ("Succeeded", "Failed", "Cancelled"):
            break
        time.sleep(0.5)
    return st, job


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_usr1_checkpoints_requeues_and_finishes(slurm, env):
    home, data, tmp = env
    f = tmp / "r.yaml"
    f.write_text(_manifest(data, "slurm-requeue", epochs=40, extra_trainer=", checkpoint: {everySteps: 100000}"))
    aamctl(home, "apply", "-f", str(f))
    folder = Path(_phase(home, "slurm-requeue")["folder"])
    assert "#SBATCH --signal=B:USR1@300" in (folder / RF.SLURM_SCRIPT).read_text()
    st, job = _time_limit_signal_then_end(home, "slurm-requeue", slurm, 400)
    log = (folder / RF.LOG).read_text()
    assert st["phase"] == "Succeeded", (st, log[-3000:], slurm.logs())
    assert "stop signal" in log and "requeueing" in log and "resumed from step" in log
    events = [json.loads(l)["event"] for l in (folder / RF.EVENTS).read_text().splitlines()]
    assert "preempted" in events and "resumed" in events
    restarts = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in restarts
    # the requeue is recorded with its cause, counted across job ids, and described
    (when, job_id, cause), = [l.split(" ", 2) for l in (folder / RF.REQUEUES).read_text().splitlines()]
    assert job_id == job and cause == "time limit" and "stop signal (time limit)" in log
    assert "Requeues:    1 (time limit 1)" in aamctl(home, "describe", "run", "slurm-requeue").stdout


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_node_local_staging_survives_a_requeue_and_is_removed(slurm, env):
    """HardwareProfile.scratch: the job copies the data to the node's scratch (sha256 checked),
    trains from there, removes the folder before its requeue, stages afresh on the restart, and
    removes it again at the end; checkpoints stay in the run folder."""
    home, data, tmp = env
    scratch = tmp / "scratch"
    scratch.mkdir()
    profile = (f"apiVersion: aam/v1alpha1\nkind: HardwareProfile\nmetadata: {{name: cpu-scratch}}\n"
               f"spec: {{accelerator: cpu, cpusPerTask: 1, env: {{OMP_NUM_THREADS: \"1\"}}, "
               f"scratch: \"{scratch}/job_$SLURM_JOB_ID\"}}\n---\n")
    f = tmp / "r.yaml"
    f.write_text(profile + _manifest(data, "slurm-scratch", epochs=40, hardware="cpu-scratch",
                                     extra_trainer=", checkpoint: {everySteps: 100000}"))
    aamctl(home, "apply", "-f", str(f))
    folder = Path(_phase(home, "slurm-scratch")["folder"])
    st, job = _time_limit_signal_then_end(home, "slurm-scratch", slurm, 400)
    log = (folder / RF.LOG).read_text()
    assert st["phase"] == "Succeeded", (st, log[-3000:], slurm.logs())
    staged = [line for line in log.splitlines() if line.startswith("staged 3 files")]
    assert len(staged) == 2 and all(f"to {scratch}/job_{job} " in line and "sha256 checked" in line for line in staged), log
    assert log.count(f"reading 3 data files from node-local scratch {scratch}/job_{job}") == 2
    assert log.count(f"removed scratch {scratch}/job_{job}") == 2 and "requeueing" in log
    assert list(scratch.iterdir()) == []  # removed at the end
    assert (folder / RF.CHECKPOINTS / "last.pt").exists()  # checkpoints on the shared file system

    # a data file that changed since apply stops the staging with the reason, before training
    copy = tmp / "copy"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(RF.CHECKPOINTS))
    with open(data["metadata"], "a") as fh:
        fh.write("\n")
    p = subprocess.run([sys.executable, "-m", "aam_runtime.scratch_copy", "in", str(copy)], capture_output=True, text=True,
                       env={**os.environ, "AAM_SCRATCH": str(scratch / "job_x")})
    assert p.returncode == 3 and "changed since apply" in p.stderr and "re-apply" in p.stderr, p.stderr
    assert "staging to node-local scratch" in json.loads((copy / RF.STATUS).read_text())["error"]


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_requeue_limit_stops_checkpointed(slurm, env):
    """executor.slurm.maxRequeues: 0: the time-limit signal checkpoints, the job is not requeued,
    and status says why and how to go on."""
    home, data, tmp = env
    f = tmp / "r.yaml"
    f.write_text(_manifest(data, "slurm-limit", epochs=40, extra_trainer=", checkpoint: {everySteps: 100000}",
                           slurm_extra=", maxRequeues: 0"))
    aamctl(home, "apply", "-f", str(f))
    folder = Path(_phase(home, "slurm-limit")["folder"])
    st, job = _time_limit_signal_then_end(home, "slurm-limit", slurm, 300)
    assert st["phase"] == "Failed" and "requeue limit reached" in st["reason"], (st, slurm.logs())
    assert "aamctl resume" in st["reason"] and (folder / RF.CHECKPOINTS / "last.pt").exists()
    assert (folder / RF.REQUEUES).read_text().split()[1:] == [job, "limit"]
    restarts = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=0" in restarts or not restarts  # never requeued (or already forgotten)


def test_transient_slurm_failures_are_retried_with_back_off(tmp_path, monkeypatch):
    """sbatch that cannot reach slurmctld twice, then answers: one job id, three attempts. A
    definite refusal is not retried; a squeue that times out is retried, an sbatch that times out
    is not (it may have queued the job)."""
    import aamctl.runs.executors as E

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    count = tmp_path / "count"
    (bin_dir / "sbatch").write_text(f"""#!/bin/bash
n=$(( $(cat {count} 2>/dev/null || echo 0) + 1 )); echo $n > {count}
if [ $n -le 2 ]; then echo "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)" >&2; exit 1; fi
echo 4242
""")
    (bin_dir / "squeue").write_text("#!/bin/bash\nsleep 5\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(E, "SLURM_RETRY_DELAY", 0.01)
    monkeypatch.setattr(E, "SLURM_RETRIES", 3)
    (tmp_path / RF.SLURM_SCRIPT).write_text("#!/bin/bash\n")
    assert E.SlurmExecutor().submit(tmp_path) == {"job_id": "4242"}
    assert count.read_text().strip() == "3"

    (bin_dir / "sbatch").write_text(f"#!/bin/bash\necho x >> {count}\necho 'sbatch: error: invalid partition specified: gpu' >&2\nexit 1\n")
    count.write_text("")
    with pytest.raises(AamError, match="invalid partition"):
        E.SlurmExecutor().submit(tmp_path)
    assert count.read_text().count("x") == 1

    t0 = time.time()
    with pytest.raises(AamError, match=r"did not answer within 0s \(4 attempts\)"):
        E._run(["squeue", "-h"], timeout=0.2)
    assert time.time() - t0 < 4
    (bin_dir / "sbatch").write_text(f"#!/bin/bash\necho x >> {count}\nsleep 5\n")
    count.write_text("")
    with pytest.raises(AamError, match="did not answer"):
        E._run(["sbatch", "job"], timeout=0.2, retry_timeout=False)
    assert count.read_text().count("x") == 1


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.ddp
def test_slurm_two_task_distributed_job(slurm, env):
    home, data, tmp = env
    f = tmp / "r.yaml"
    f.write_text(_manifest(data, "slurm-ddp", epochs=1, hardware="cpu-2proc"))
    aamctl(home, "apply", "-f", str(f))
    st = _phase(home, "slurm-ddp")
    folder = Path(st["folder"])
    script = (folder / RF.SLURM_SCRIPT).read_text()
    # one launcher task with both processes' cores; accelerate launch starts the two processes
    assert "#SBATCH --ntasks-per-node=1" in script and "#SBATCH --cpus-per-task=2" in script
    assert "accelerate.commands.launch" in script
    aamctl(home, "wait", "slurm-ddp", "--timeout", "300", check=False)
    st = _phase(home, "slurm-ddp")
    # the reason and the log's last lines first: a long message is cut in the middle
    log = (folder / RF.LOG).read_text().splitlines()
    assert st["phase"] == "Succeeded", (st.get("reason"), "\n".join(line[:300] for line in log[-25:]), slurm.logs())
    status = json.loads((folder / RF.STATUS).read_text())
    assert status["world_size"] == 2


@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.ddp
def test_slurm_two_node_job_equals_one_process_and_requeues(slurm, env):
    """2 nodes x 1 process through the sbatch script users get (accelerate launch on each node,
    machine rank from SLURM, rendezvous on the first node's address, gloo): the same losses as one
    process on the same global batch, also across a USR1 checkpoint and requeue of the 2-node job."""
    home, data, tmp = env
    # precision 'no' for both: precision auto is full precision on SLURM but bf16 for the local
    # executor on a CPU with avx512_bf16, and the two round differently (1e-4)
    extra = ", scheduler: constant, lossWeights: {nucleotide: 0}, checkpoint: {everySteps: 100000}, precision: 'no'"
    two = _manifest(data, "two-node", epochs=30, extra_trainer=extra, slurm_extra=", nodes: 2, partition: multinode")
    one = (f"{CPU_PROFILES}---\n" + pretrain_run(data, "one-process", 30, "cpu-1", extra)).replace(
        "batchSize: 4", "batchSize: 8")
    (tmp / "two.yaml").write_text(two)
    (tmp / "one.yaml").write_text(one)
    aamctl(home, "apply", "-f", str(tmp / "two.yaml"))
    folder = Path(_phase(home, "two-node")["folder"])
    script = (folder / RF.SLURM_SCRIPT).read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --partition=multinode" in script
    assert '--machine_rank "${SLURM_NODEID}"' in script and '--main_process_ip "${MAIN_ADDR}"' in script
    st, job = _time_limit_signal_then_end(home, "two-node", slurm, 400)
    log = (folder / RF.LOG).read_text()
    assert st["phase"] == "Succeeded", (st, log[-3000:], slurm.logs())
    # both nodes ran it, twice (the first time stopped by USR1 and checkpointed)
    starts = [l for l in log.splitlines() if "] job " in l and " on " in l]
    assert len(starts) == 2, log[-3000:]
    assert all(set(l.split(" on ")[1].split()[0].split(",")) == {slurm.host, slurm.second} for l in starts), starts
    assert "requeueing" in log and "resumed from step" in log
    info = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    assert "Restarts=1" in info and "NumNodes=2" in info
    status = json.loads((folder / RF.STATUS).read_text())
    assert status["world_size"] == 2
    aamctl(home, "apply", "-f", str(tmp / "one.yaml"), "--wait", "--timeout", "300")

    def train_losses(f):  # by step; a step logged again after the resume counts once (the last)
        rows = {r["step"]: r["unifrac_loss"] for r in map(json.loads, (f / RF.METRICS).read_text().splitlines())
                if r.get("split") == "train"}
        return [rows[k] for k in sorted(rows)]
    a = train_losses(folder)
    b = train_losses(Path(_phase(home, "one-process")["folder"]))
    assert len(a) == len(b) > 20
    assert np.allclose(a, b, rtol=1e-4, atol=1e-5), np.abs(np.array(a) - np.array(b)).max()


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_dependency_afterok(slurm, env):
    home, data, tmp = env
    f = tmp / "r.yaml"
    text = _manifest(data, "slurm-pre", epochs=1) + """---
apiVersion: aam/v1alpha1
kind: Run
metadata: {name: slurm-fine}
spec:
  stage: finetune
  datasetRef: synth
  hardwareRef: cpu-1
  initFrom: {run: slurm-pre}
  trainer: {epochs: 1, batchSize: 4}
  executor: {type: slurm}
"""
    f.write_text(text)
    aamctl(home, "apply", "-f", str(f))
    fine = Path(_phase(home, "slurm-fine")["folder"])
    pre_job = _phase(home, "slurm-pre")["job_id"]
    q = subprocess.run(["scontrol", "-o", "show", "job", _phase(home, "slurm-fine")["job_id"]],
                       capture_output=True, text=True).stdout
    assert f"afterok:{pre_job}" in q
    aamctl(home, "wait", "slurm-pre", "slurm-fine", "--timeout", "300", check=False)
    assert _phase(home, "slurm-fine")["phase"] == "Succeeded", (fine / RF.LOG).read_text()[-2000:]


def test_slurm_commands_missing_is_a_clear_error(env, monkeypatch):
    home, data, tmp = env
    f = tmp / "r.yaml"
    f.write_text(_manifest(data, "no-slurm"))
    monkeypatch.setenv("PATH", "/nonexistent")
    p = subprocess.run([*AAMCTL, "--home", str(home), "apply", "-f", str(f)], capture_output=True, text=True)
    assert p.returncode == 1 and "'sbatch' not found" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_sweep_is_one_job_array_after_its_pretraining(slurm, env):
    """Six trials of a fine-tuning sweep go to SLURM as one job array (%2), queued after the one
    pretraining they all start from; each trial is an ordinary Run with its own array task."""
    home, data, tmp = env
    f = tmp / "s.yaml"
    f.write_text(_manifest(data, "slurm-pre") + """---
apiVersion: aam/v1alpha1
kind: Sweep
metadata: {name: ssw}
spec:
  template:
    stage: finetune
    datasetRef: synth
    initFrom: {run: slurm-pre}
    hardwareRef: cpu-1
    target: age
    trainer: {epochs: 2, batchSize: 4, learningRate: 0.001, warmupSteps: 1, earlyStopping: {patience: null, metric: mae}}
    executor: {type: slurm, slurm: {timeLimit: "00:10:00"}}
  parameters:
    - {path: spec.trainer.learningRate, values: [0.001, 0.002, 0.003]}
    - {path: spec.trainer.seed, values: [1, 2]}
  algorithm: {type: grid}
  objective: {metric: mae}
  maxTrials: 6
  parallelism: 2
""")
    out = aamctl(home, "apply", "-f", str(f), "--wait", timeout=600).stdout
    assert "sweep/ssw Succeeded" in out, (out, slurm.logs())
    runs = {r["name"]: r for r in json.loads(aamctl(home, "status", "-o", "json").stdout)}
    trials = [runs[f"ssw-t{i}"] for i in range(6)]
    assert all(r["phase"] == "Succeeded" for r in trials), [(r["name"], r["phase"], r["reason"]) for r in trials]
    arrays = {r["job_id"].split("_")[0] for r in trials}
    assert len(arrays) == 1, [r["job_id"] for r in trials]  # one array job for the batch
    assert sorted(int(r["job_id"].split("_")[1]) for r in trials) == list(range(6))
    array_id = arrays.pop()
    assert array_id != runs["slurm-pre"]["job_id"]
    b = json.loads(aamctl(home, "describe", "sweep", "ssw", "-o", "json").stdout)
    script = (Path(b["folder"]) / "arrays" / "0.sbatch").read_text()
    assert "#SBATCH --array=0-5%2" in script and "#SBATCH --time=00:10:00" in script
    assert b["counts"]["Complete"] == 6 and b["best"] is not None
    # each trial's log is its own, written by its array task
    assert "validation epoch" in aamctl(home, "logs", "ssw-t3").stdout


@pytest.mark.slow
@pytest.mark.slurm
def test_unifrac_partial_stripes_array_equals_the_one_off_matrix(slurm, env):
    """executor.slurm.unifracPartitions: 4 -> a job array of 4 partial-stripe jobs and a merge
    job, queued before the run; the merged matrix lands in the cache under the runtime's key and
    equals ssu's one-off matrix; the run starts after the merge and finds it there."""

    from aam_runtime.data import table as T
    from aam_runtime.data import unifrac as U
    from synth import dataset_spec

    home, _, tmp = env
    data = make_dataset(tmp / "odd", n_samples=41, n_asvs=60, seed=5)  # odd: the last stripe is a half one
    f = tmp / "r.yaml"
    f.write_text(_manifest(data, "slurm-stripes", epochs=1, slurm_extra=", unifracPartitions: 4"))
    dry = aamctl(home, "apply", "--dry-run", "-f", str(f)).stdout
    assert "would wait for unifrac/" in dry and "4 partial-stripe jobs and a merge" in dry
    out = aamctl(home, "apply", "-f", str(f)).stdout
    assert "as 4 partial-stripe jobs (slurm job" in out, out
    deadline = time.time() + 300
    while time.time() < deadline:
        st = _phase(home, "slurm-stripes")
        if st["phase"] in ("Succeeded", "Failed", "Cancelled"):
            break
        time.sleep(0.5)
    assert st["phase"] == "Succeeded", (st, slurm.logs())
    p = T.load(dataset_spec(data), seed=0)
    key = U.cache_key(p.sample_ids, p.asv_ids, p.counts, str(data["tree"]), "unweighted")
    path = U.cached(key)
    assert path is not None
    work = U.cache_dir() / f".stripes-{key}"
    logs = sorted(x.name for x in work.glob("*.log"))
    assert logs == ["merge.log", "partial-0.log", "partial-1.log", "partial-2.log", "partial-3.log"], logs
    assert "published" in (work / "merge.log").read_text()
    assert not list(work.glob("partial.[0-9]*")), "the partial outputs are removed once merged"
    merged = np.load(path)
    assert merged.dtype == np.float32 and merged.shape == (41, 41)
    one_off = U._ssu(p.sample_ids, p.asv_ids, p.counts, str(data["tree"]), "unweighted")
    assert np.array_equal(merged, one_off.astype(np.float32))
    # the run waited for the merge: its job started after the merge job ended
    events = aamctl(home, "describe", "run", "slurm-stripes").stdout
    assert "UniFracStripes" in events
    # applying again with the matrix cached queues no stripe job
    assert "would wait for unifrac/" not in aamctl(home, "apply", "--force", "--dry-run", "-f", str(f)).stdout
