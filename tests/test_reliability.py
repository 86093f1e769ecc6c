"""Faults a user meets on a real cluster, on the real thing: a full disk (a small tmpfs), a
read-only state folder (a read-only mount), damaged SQLite files, --home on a file."""
from __future__ import annotations

import errno
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import aamctl
from synth import make_dataset, pretrain_run

pytestmark = pytest.mark.slow


def run_manifest(data: dict, name: str, epochs: int = 2, extra: str = "") -> str:
    return pretrain_run(data, name, epochs, trainer_extra=", seed: 1" + extra)


@pytest.fixture()
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("AAM_CACHE_DIR", str(tmp_path / "cache"))
    data = make_dataset(tmp_path / "data", n_samples=24, n_asvs=30)
    return data, tmp_path


@pytest.fixture()
def small_fs(tmp_path):
    """A real 16 MiB tmpfs, unmounted afterwards. Mounting needs root (the tests run as root in
    CI); where it is impossible the test says so and skips."""
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip() or 'not root'}): the full-disk and read-only "
                    "cases need a real small file system")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(folder: Path) -> Path:
    """Write zeros until the file system is full; returns the filler file. Each call writes a
    new file; a file system already so full that the file cannot even be created counts as full
    (tmpfs answers ENOSPC to open() once its last pages are gone)."""
    n = len(list(folder.glob("filler*")))
    filler = folder / f"filler{n}"
    for chunk in (65536, 4096, 1):
        try:
            with open(filler, "ab") as f:
                while True:
                    f.write(b"\0" * chunk)
                    f.flush()
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
    return filler


def wait_for(pred, timeout=180, every=0.3):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out")


def run_folder(home: Path, name: str, gen: int = 1) -> Path:
    return home / "runs" / name / str(gen)


def test_full_disk_during_training_is_reported_and_leaves_no_debris(env, small_fs):
    data, tmp = env
    home = small_fs / "home"
    (tmp / "first.yaml").write_text(run_manifest(data, "first", epochs=1))
    aamctl(home, "apply", "-f", str(tmp / "first.yaml"), "--wait", timeout=300)
    record_before = (run_folder(home, "first") / "record.yaml").read_text()

    (tmp / "long.yaml").write_text(run_manifest(data, "long", epochs=400, extra=", checkpoint: {everySteps: 1}"))
    aamctl(home, "apply", "-f", str(tmp / "long.yaml"))
    folder = run_folder(home, "long")
    wait_for(lambda: (json.loads((folder / "status.json").read_text()).get("step") or 0) >= 2
             if (folder / "status.json").exists() else False)
    fill(small_fs)

    wait_for(lambda: (folder / "exit_code").exists() or "Failed" in aamctl(home, "status", "long").stdout)
    status = aamctl(home, "status", "long", "-o", "wide")
    assert "Failed" in status.stdout and "no space left on device at" in status.stdout, status.stdout
    assert str(folder) in status.stdout
    describe = aamctl(home, "describe", "run", "long").stdout
    assert "no space left on device at" in describe
    if (folder / "exit_code").exists():
        assert (folder / "exit_code").read_text().strip() == "6"
    st = json.loads((folder / "status.json").read_text())
    assert st["phase"] == "Failed" and "no space left on device" in st["error"]
    # no temporary checkpoint or status files, no reserve left behind
    debris = [p.name for p in folder.rglob(".*")]
    assert debris == [], debris

    # the store on the same full disk: a clear error naming the database, nothing lost
    fill(small_fs)
    (tmp / "other.yaml").write_text(run_manifest(data, "other"))
    p = aamctl(home, "apply", "-f", str(tmp / "other.yaml"), check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "no space left on device" in p.stderr and str(home / "state.db") in p.stderr, p.stderr
    assert "internal error" not in p.stderr
    runs = aamctl(home, "get", "runs").stdout
    assert "first" in runs and "Succeeded" in runs
    assert (run_folder(home, "first") / "record.yaml").read_text() == record_before

    # space again: everything works and nothing recorded earlier was lost
    for f in small_fs.glob("filler*"):
        f.unlink()
    aamctl(home, "apply", "-f", str(tmp / "other.yaml"))
    names = {r["name"]: r["phase"] for r in json.loads(aamctl(home, "get", "runs", "-o", "json").stdout)}
    assert names["first"] == "Succeeded" and names["long"] == "Failed" and "other" in names
    aamctl(home, "cancel", "other")


def test_read_only_state_folder(env, small_fs):
    data, tmp = env
    home = small_fs / "home"
    (tmp / "run.yaml").write_text(run_manifest(data, "ro-run", epochs=1))
    aamctl(home, "apply", "-f", str(tmp / "run.yaml"))
    # let it finish without asking aamctl, so the next status has a phase change to record
    wait_for(lambda: (run_folder(home, "ro-run") / "exit_code").exists())
    p = subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr

    st = aamctl(home, "status")
    assert "ro-run" in st.stdout and "Succeeded" in st.stdout
    assert "were not saved" in st.stderr and "read-only" in st.stderr, st.stderr
    assert "datasets" not in aamctl(home, "get", "datasets").stderr
    (tmp / "other.yaml").write_text(run_manifest(data, "other"))
    p = aamctl(home, "apply", "-f", str(tmp / "other.yaml"), check=False)
    assert p.returncode == 1 and "read-only" in p.stderr and str(home) in p.stderr, p.stderr
    assert "internal error" not in p.stderr


def _state_with_a_run(env, home: Path) -> Path:
    data, tmp = env
    f = tmp / "run.yaml"
    f.write_text(run_manifest(data, "kept", epochs=1))
    aamctl(home, "apply", "-f", str(f), "--wait", timeout=300)
    return f


@pytest.mark.parametrize("damage", ["garbage-header", "truncated", "empty-pages"])
def test_damaged_database_names_path_and_rebuilds_from_run_folders(env, tmp_path, damage):
    home = tmp_path / "home"
    manifest = _state_with_a_run(env, home)
    db = home / "state.db"
    raw = db.read_bytes()
    if damage == "garbage-header":
        db.write_bytes(b"this is not sqlite at all" + raw[25:])
    elif damage == "truncated":
        db.write_bytes(raw[: len(raw) // 3])
    else:
        db.write_bytes(raw[:100] + b"\xff" * (len(raw) - 100))
    for args in (["status"], ["get", "runs"], ["get", "models"], ["describe", "run", "kept"],
                 ["apply", "-f", str(manifest)]):
        p = aamctl(home, *args, check=False)
        assert p.returncode == 1, (args, p.returncode, p.stdout, p.stderr)
        assert str(db) in p.stderr and "damaged" in p.stderr and "rebuild-state" in p.stderr, (args, p.stderr)
        assert "internal error" not in p.stderr
    # the hint works: move it aside, rebuild from the run folders
    shutil.move(db, str(db) + ".broken")
    out = aamctl(home, "rebuild-state").stdout
    assert "run/kept generation 1: Succeeded" in out
    runs = json.loads(aamctl(home, "get", "runs", "-o", "json").stdout)
    assert [(r["name"], r["generation"], r["phase"]) for r in runs] == [("kept", 1, "Succeeded")]
    assert "kept" in aamctl(home, "describe", "run", "kept").stdout
    assert "micro" in aamctl(home, "get", "models").stdout
    # the rebuilt state knows the run's hash: re-applying the same manifest changes nothing
    assert "run/kept unchanged" in aamctl(home, "apply", "-f", str(manifest)).stdout


def test_rebuild_refuses_to_overwrite_a_database(env, tmp_path):
    home = tmp_path / "home"
    _state_with_a_run(env, home)
    p = aamctl(home, "rebuild-state", check=False)
    assert p.returncode == 1 and "exists already" in p.stderr


def test_new_generation_never_overwrites_a_run_folder_on_disk(env, tmp_path):
    """A state moved aside and re-applied must not write into run folders that exist."""
    home = tmp_path / "home"
    manifest = _state_with_a_run(env, home)
    record = (run_folder(home, "kept") / "record.yaml").read_text()
    (home / "state.db").rename(home / "old.db")
    out = aamctl(home, "apply", "-f", str(manifest)).stdout
    assert "generation 2" in out
    assert (run_folder(home, "kept") / "record.yaml").read_text() == record
    aamctl(home, "cancel", "kept")


def test_home_on_a_file(tmp_path):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    for args in (["get", "models"], ["status"], ["get", "runs"], ["apply", "-f", "-"]):
        p = aamctl(f, *args, check=False, input="")
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert str(f) in p.stderr and "is a file" in p.stderr, (args, p.stderr)
        assert "No models" not in p.stdout


def test_damaged_status_json_is_warned_about_and_recovered_from_events_and_metrics(env, tmp_path):
    home = tmp_path / "home"
    _state_with_a_run(env, home)
    folder = run_folder(home, "kept")
    good = json.loads((folder / "status.json").read_text())
    (folder / "status.json").write_text('{"phase": "Succ')  # cut mid-write by a crashed node
    st = aamctl(home, "status", "kept", "-o", "wide")
    line = st.stdout.splitlines()[1].split()
    assert line[3] == "Succeeded" and float(line[5]) > 0, st.stdout  # phase and last loss, recovered
    assert f"warning: {folder / 'status.json'} is damaged" in st.stderr, st.stderr
    desc = aamctl(home, "describe", "run", "kept")
    assert "is damaged" in desc.stderr and "Metrics:" in desc.stdout and "val_loss" in desc.stdout
    rec = aamctl(home, "export", "run", "kept")
    assert "is damaged" in rec.stderr
    import yaml
    run = next(d for d in yaml.safe_load_all(rec.stdout) if d and d["kind"] == "Run")
    ann = run["metadata"]["annotations"]
    assert ann["aam/started"] and ann["aam/finished"] and "val_loss" in json.loads(ann["aam/final-metrics"])
    assert "status.json is damaged" in ann["aam/record-notes"]
    assert json.loads(ann["aam/final-metrics"])["val_loss"] == pytest.approx(good["final_metrics"]["val_loss"])
    # nothing recoverable at all: the record says what it lacks
    (folder / "events.jsonl").write_text("")
    (folder / "metrics.jsonl").write_text("")
    rec = aamctl(home, "export", "run", "kept").stdout
    run = next(d for d in yaml.safe_load_all(rec) if d and d["kind"] == "Run")
    assert "not recoverable: started, finished, final_metrics" in run["metadata"]["annotations"]["aam/record-notes"]


def test_unchanged_manifest_over_a_cancelled_run_says_how_to_go_on(env, tmp_path):
    data, tmp = env
    home = tmp_path / "home"
    f = tmp / "c.yaml"
    f.write_text(run_manifest(data, "stopped", epochs=400))
    aamctl(home, "apply", "-f", str(f))
    aamctl(home, "cancel", "stopped")
    out = aamctl(home, "apply", "-f", str(f)).stdout
    assert "run/stopped unchanged (generation 1 is Cancelled: 'aamctl resume stopped' continues it" in out
    assert "'aamctl apply --force' starts generation 2" in out


@pytest.mark.parametrize("launcher_rc, runtime_rc, recorded", [
    (1, 75, 75),   # torchrun's 1 for a checkpointed stop: the job records the runtime's 75
    (1, 76, 76),   # a pruned sweep trial stays pruned
    (1, 0, 1),     # rank 0 finished but another rank failed: a failure
    (0, 0, 0),
    (1, None, 1),  # killed before the runtime wrote anything
    (1, "x", 1),   # a damaged file is ignored
])
def test_local_job_records_the_runtimes_own_exit_code_behind_a_launcher(tmp_path, launcher_rc, runtime_rc, recorded):
    """`accelerate launch` (torchrun) exits 1 whatever its workers returned; the local job script
    takes rank 0's code from the run folder instead, and a stale one from an earlier start is
    removed before launching."""
    from types import SimpleNamespace

    from aam_runtime.runfolder import EXIT_CODE, RUNTIME_EXIT
    from aamctl.planning.plan import render_local_script

    (tmp_path / RUNTIME_EXIT).write_text("75\n")  # left by an earlier, preempted start
    write = "" if runtime_rc is None else f"echo {runtime_rc} > {RUNTIME_EXIT}; "
    plan = SimpleNamespace(folder=tmp_path, name="r", generation=1, dependencies=[],
                           command=["bash", "-c", f"{write}exit {launcher_rc}"])
    script = tmp_path / "launch.sh"
    script.write_text(render_local_script(plan, {"env": {}}, "python3"))
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert p.returncode == recorded
    assert (tmp_path / EXIT_CODE).read_text().strip() == str(recorded)
