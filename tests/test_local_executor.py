"""The local executor shares the machine: runs get their share of cores and GPUs, and the rest
wait as Queued (aam_runtime.localslots), first come first served."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from aam_runtime import runfolder as RF

from synth import make_dataset, synth_manifests

from conftest import aamctl

SLOTS = [sys.executable, "-m", "aam_runtime.localslots"]
# prints the share it was given, then holds it until the file named by its argument appears
HOLD = ("import os, sys, time, pathlib\n"
        "print(os.environ.get('OMP_NUM_THREADS'), os.environ.get('CUDA_VISIBLE_DEVICES'), flush=True)\n"
        "p = pathlib.Path(sys.argv[1])\n"
        "while not p.exists(): time.sleep(0.05)\n")


def _start(tmp: Path, label: str, *args: str, env_extra: dict | None = None) -> tuple[subprocess.Popen, Path]:
    folder = tmp / label
    folder.mkdir()
    env = dict(os.environ, AAM_LOCAL_POLL="0.05", **(env_extra or {}))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    p = subprocess.Popen([*SLOTS, "--slots", str(tmp / "slots"), "--label", f"run/{label}", "--folder", str(folder),
                          *args, "--", sys.executable, "-c", HOLD, str(folder / "release")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return p, folder


def _first_line(p: subprocess.Popen) -> str:
    return p.stdout.readline().strip()


def _wait_for(pred, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_runs_get_their_share_and_the_rest_wait_in_order(tmp_path):
    env = {"AAM_LOCAL_CPUS": "4", "AAM_LOCAL_GPUS": "2"}
    a, fa = _start(tmp_path, "a", "--cpus", "1", "--processes", "2", "--accelerator", "cuda", "--threads", "auto",
                   env_extra=env)
    assert _first_line(a) == "1 0,1"  # 2 processes x 1 core, one thread each, both GPUs
    # the GPUs are taken: b waits (its reason names who holds them), c waits behind b
    b, fb = _start(tmp_path, "b", "--cpus", "1", "--processes", "1", "--accelerator", "cuda", "--threads", "auto",
                   env_extra={**env, "AAM_SUBMITTED_NS": "1"})
    assert _wait_for(lambda: (fb / RF.QUEUED).exists())
    assert (fb / RF.QUEUED).read_text().strip() == "waiting for 1 of the 2 GPUs (in use by run/a)"
    c, fc = _start(tmp_path, "c", "--cpus", "1", "--processes", "1", "--accelerator", "cpu", "--threads", "auto",
                   env_extra={**env, "AAM_SUBMITTED_NS": "2"})
    assert _wait_for(lambda: (fc / RF.QUEUED).exists())
    # c needs no GPU and 2 of 4 cores are free, but b came first: c waits behind it
    assert (fc / RF.QUEUED).read_text().strip() == "queued behind 1 run (run/b)"
    (fa / "release").touch()
    a.wait(10)
    assert _first_line(b) == "1 0"
    assert not (fb / RF.QUEUED).exists()
    assert _first_line(c) == "1 None"  # a CPU run sees no device variable of ours
    for p, f in ((b, fb), (c, fc)):
        (f / "release").touch()
        assert p.wait(10) == 0


def test_a_killed_holder_frees_its_share_and_its_ticket(tmp_path):
    env = {"AAM_LOCAL_CPUS": "2"}
    a, fa = _start(tmp_path, "a", "--cpus", "auto", "--processes", "1", "--threads", "auto", env_extra=env)
    assert _first_line(a) == "2 None"  # auto: every core, threads = cores / processes
    b, fb = _start(tmp_path, "b", "--cpus", "auto", "--processes", "1", "--threads", "auto",
                   env_extra={**env, "AAM_SUBMITTED_NS": "1"})
    assert _wait_for(lambda: (fb / RF.QUEUED).exists())
    assert "waiting for 2 of the 2 CPU cores (in use by run/a)" in (fb / RF.QUEUED).read_text()
    c, fc = _start(tmp_path, "c", "--cpus", "1", "--processes", "1", env_extra={**env, "AAM_SUBMITTED_NS": "2"})
    assert _wait_for(lambda: (fc / RF.QUEUED).exists())
    b.kill()  # a queued run that dies (cancel) leaves a stale ticket: the next comer removes it
    b.wait(10)
    a.kill()  # SIGKILL: the kernel drops its locks; nothing to clean up
    a.wait(10)
    assert _first_line(c) == "None None"  # no --threads: the profile's env decides
    (fc / "release").touch()
    assert c.wait(10) == 0
    assert list((tmp_path / "slots" / "queue").iterdir()) == []


def test_a_run_larger_than_the_machine_fails_at_once(tmp_path):
    p, _ = _start(tmp_path, "big", "--cpus", "3", "--processes", "1", env_extra={"AAM_LOCAL_CPUS": "2"})
    out, err = p.communicate(timeout=20)
    assert p.returncode == 5  # EXIT_NO_HARDWARE
    assert "asks for 3 CPU cores, the local executor has 2: it can never start here" in err


# ---------------------------------------------------------------- through aamctl

def _profile(name: str, cpus, devices: int = 1, accelerator: str = "cpu", env: str = "{}") -> str:
    return (f"apiVersion: aam/v1alpha1\nkind: HardwareProfile\nmetadata: {{name: {name}}}\n"
            f"spec: {{accelerator: {accelerator}, cpusPerTask: {cpus}, devicesPerNode: {devices}, env: {env}}}\n---\n")


def _run(name: str, hardware: str, epochs: int = 1, extra: str = "") -> str:
    return f"""apiVersion: aam/v1alpha1
kind: Run
metadata: {{name: {name}}}
spec:
  stage: pretrain
  datasetRef: synth
  modelRef: micro
  hardwareRef: {hardware}
  trainer: {{epochs: {epochs}, batchSize: 4, learningRate: 0.001, warmupSteps: 1, logEverySteps: 1{extra}}}
---
"""


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AAM_LOCAL_CPUS", "2")
    monkeypatch.setenv("AAM_LOCAL_POLL", "0.2")
    return make_dataset(tmp_path / "data", n_samples=24, n_asvs=30)


def test_a_run_asking_for_more_than_the_machine_is_refused_at_apply(data, tmp_path):
    f = tmp_path / "big.yaml"
    f.write_text(synth_manifests(data) + _profile("wide", 3) + _profile("gpu", 1, accelerator="cuda")
                 + _run("too-wide", "wide") + _run("no-gpu", "gpu"))
    home = tmp_path / "home"
    p = aamctl(home, "apply", "-f", str(f), check=False, env=dict(os.environ, AAM_LOCAL_GPUS="0"))
    assert p.returncode == 1
    assert "run/too-wide asks for 3 CPU cores (3 per process x 1), this machine has 2" in p.stderr
    assert "run/no-gpu asks for 1 cuda GPUs, this machine has 0" in p.stderr
    assert "big.yaml:" in p.stderr and "hardwareRef" in p.stderr
    assert not (home / "runs").exists()  # nothing was started or written
    # a dry run shows the plan all the same, with the same words as a warning
    p = aamctl(home, "apply", "-f", str(f), "--dry-run", env=dict(os.environ, AAM_LOCAL_GPUS="0"))
    assert "warning:" in p.stderr + p.stdout and "could never start it" in p.stderr + p.stdout


def _status(home) -> dict:
    return {s["name"]: s for s in json.loads(aamctl(home, "status", "-o", "json").stdout)}


def _span(folder: Path) -> tuple[float, float]:
    """When a run's own process held its share: its first and last event."""
    events = [json.loads(x) for x in (folder / RF.EVENTS).read_text().splitlines()]
    return events[0]["time"], events[-1]["time"]


@pytest.mark.slow
def test_four_runs_on_two_slots_run_two_at_a_time_and_all_finish(data, tmp_path):
    home = tmp_path / "home"
    f = tmp_path / "four.yaml"
    f.write_text(synth_manifests(data) + _profile("one-core", 1)
                 + "".join(_run(f"r{i}", "one-core", epochs=3, extra=f", seed: {i}") for i in range(4)))
    aamctl(home, "apply", "-f", str(f))
    seen: dict[str, set] = {}
    reasons = set()
    deadline = time.time() + 240
    while time.time() < deadline:
        st = _status(home)
        for name, s in st.items():
            seen.setdefault(name, set()).add(s["phase"])
            if s["phase"] == "Queued":
                reasons.add(s["reason"])
        running = [n for n, s in st.items() if s["phase"] == "Running"]
        assert len(running) <= 2, st
        if all(s["phase"] in ("Succeeded", "Failed") for s in st.values()):
            break
        time.sleep(0.2)
    assert {s["phase"] for s in st.values()} == {"Succeeded"}, st
    assert any("Queued" in p for p in seen.values()), seen
    assert reasons and all(r.startswith(("waiting for 1 of the 2 CPU cores (in use by run/r",
                                         "queued behind")) for r in reasons), reasons
    spans = [_span(home / "runs" / f"r{i}" / "1") for i in range(4)]
    for t, _ in spans:  # at any run's start, at most two runs (itself included) were running
        assert sum(1 for a, b in spans if a <= t <= b) <= 2, spans
    for i in range(4):
        log = (home / "runs" / f"r{i}" / "1" / RF.LOG).read_text()
        assert f"local executor: run/r{i} has 1 CPU cores, 1 threads per process" in log


@pytest.mark.slow
def test_a_queued_run_can_be_cancelled_and_deleted(data, tmp_path):
    home = tmp_path / "home"
    f = tmp_path / "q.yaml"
    # the built-in cpu profile takes every core (cpusPerTask auto): one run at a time
    f.write_text(synth_manifests(data) + _run("long", "cpu", epochs=200) + _run("second", "cpu")
                 + _run("third", "cpu"))
    aamctl(home, "apply", "-f", str(f))
    assert _wait_for(lambda: _status(home)["long"]["phase"] == "Running", 60)
    assert _wait_for(lambda: _status(home)["second"]["phase"] == "Queued"
                     and _status(home)["third"]["phase"] == "Queued", 30)
    st = _status(home)
    assert st["second"]["reason"] == "waiting for 2 of the 2 CPU cores (in use by run/long)"
    assert st["third"]["reason"] == "queued behind 1 run (run/second)"
    table = aamctl(home, "get", "runs").stdout
    assert "Queued" in table
    p = aamctl(home, "cancel", "second")
    assert "run/second cancelled" in p.stdout
    assert _status(home)["second"]["phase"] == "Cancelled"
    # third is now first in the queue, waiting for the cores long holds
    assert _wait_for(lambda: _status(home)["third"]["reason"] ==
                     "waiting for 2 of the 2 CPU cores (in use by run/long)", 20)
    p = aamctl(home, "delete", "run", "third")
    assert "run/third cancelled" in p.stdout and "run/third deleted" in p.stdout
    aamctl(home, "cancel", "long")
    log = (home / "runs" / "long" / "1" / RF.LOG).read_text()
    assert "local executor: run/long has 2 CPU cores, 2 threads per process" in log
    record = yaml.safe_load_all((home / "runs" / "long" / "1" / RF.RECORD).read_text())
    assert next(iter(record))["resolved"]["precision"] in ("no", "bf16")


def test_cancel_waits_for_every_process_of_the_run_and_kills_the_stubborn(tmp_path):
    """The launcher dies at SIGTERM at once, but a process busy in native code handles it only
    later: cancel waits for the whole group, and SIGKILLs what outlives the grace period."""
    from aamctl.runs.executors import LocalExecutor, group_alive, proc_start_time

    script = tmp_path / "launch.sh"
    script.write_text("sh -c 'trap \"\" TERM; sleep 60' &\nwait\n")
    p = subprocess.Popen(["bash", str(script)], start_new_session=True)
    time.sleep(0.3)
    row = {"pid": p.pid, "pid_start": proc_start_time(p.pid), "folder": str(tmp_path)}
    t0 = time.time()
    assert LocalExecutor().cancel(row, grace=1.0) is False  # it needed SIGKILL
    p.wait(5)
    assert not group_alive(p.pid) and time.time() - t0 < 10
    assert (tmp_path / RF.CANCEL_FLAG).exists()


@pytest.mark.slow
def test_a_cancelled_run_says_cancelled_in_its_own_folder(data, tmp_path):
    home = tmp_path / "home"
    f = tmp_path / "c.yaml"
    f.write_text(synth_manifests(data) + _run("victim", "cpu", epochs=200))
    aamctl(home, "apply", "-f", str(f))
    folder = home / "runs" / "victim" / "1"
    assert _wait_for(lambda: (folder / RF.STATUS).exists()
                     and json.loads((folder / RF.STATUS).read_text()).get("step", 0) >= 2, 60)
    p = aamctl(home, "cancel", "victim")
    assert p.stdout.startswith("run/victim cancelled")
    # cancel returned once the processes were gone: the folder already agrees with the store
    st = json.loads((folder / RF.STATUS).read_text())
    assert st["phase"] == "Cancelled", st
    assert _status(home)["victim"]["phase"] == "Cancelled"
    assert int((folder / RF.EXIT_CODE).read_text()) == 143
