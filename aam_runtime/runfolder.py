"""The run folder: the only place the runtime writes, always by atomic rename.

Layout (runs/<name>/<generation>/), each name defined once below:
  record.yaml       resolved manifests + provenance (written by aamctl)
  accelerate.yaml   accelerate launch config (aamctl)
  launch.sh | job.sbatch   what the executor runs (aamctl)
  status.json       phase, progress, metrics, heartbeat (runtime)
  metrics.jsonl     one JSON line per log step and per validation (runtime)
  events.jsonl      started, checkpointed, resumed, finished (runtime)
  log.txt           stdout and stderr of the job (executor)
  exit_code         exit status of the job (executor)
  waiting, queued   present while a local job waits for its initFrom run / its share of the
                    machine (queued holds the reason; aam_runtime.localslots)
  runtime_exit      the runtime's own exit status (rank 0): what the job reports when a
                    multi-process launcher (torchrun exits 1 for any failed worker) hides it
  split.tsv         sample-id and split (runtime; QIIME 2 metadata)
  checkpoints/      last.pt, best.pt (runtime)
  plots/            PNG figures (runtime)
  predictions.tsv   predict and finetune stages (runtime; QIIME 2 metadata)
  embeddings.tsv, embedding-distances.tsv, errors.tsv, errors-by-*.tsv
                    what the Run's spec.outputs asks for (runtime; aam_runtime.insight)
  wandb/            W&B offline run (runtime)
Torch-free: aamctl reads it back.
"""
from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import time
from pathlib import Path

# -- file names (nothing else in aam spells them)
RECORD = "record.yaml"
# the record's main Run carries what aamctl decided for the runtime under this top-level key
RESOLVED_KEY = "resolved"
ACCELERATE_CONFIG = "accelerate.yaml"
LOCAL_SCRIPT = "launch.sh"
SLURM_SCRIPT = "job.sbatch"
STATUS = "status.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
LOG = "log.txt"
LAUNCHER_LOG = "launcher.out"
EXIT_CODE = "exit_code"
RUNTIME_EXIT = "runtime_exit"
PID = "pid"
WAITING = "waiting"  # present while a local job waits for its initFrom run
QUEUED = "queued"  # present while a local job waits for its share of the machine; holds the reason
PREEMPT_FLAG = "PREEMPT"
REQUEUES = "requeues"  # one line per automatic SLURM requeue: "<unix time> <job id> <cause>" (cause 'limit': refused)
CANCEL_FLAG = "CANCEL"  # written by aamctl cancel before scancel: the job script must not requeue
PRUNE_FLAG = "PRUNE"  # written by a sweep's controller: the trial stops at its next step, as Pruned
SPLIT = "split.tsv"
# the id column of split.tsv and predictions.tsv: a header QIIME 2 metadata accepts, so both files
# go into qiime metadata tabulate and --m-metadata-file as they are
ID_HEADER = "sample-id"
# predictions.tsv's second line declares each column's type as QIIME 2 metadata does (class names
# that look like numbers stay categorical); pandas: read_csv(path, sep="\t", comment="#")
Q2_TYPES = "#q2:types"


# what a Run's spec.outputs asks for (aam_runtime.insight writes them)
EMBEDDINGS = "embeddings.tsv"
EMBEDDING_DISTANCES = "embedding-distances.tsv"
ERRORS = "errors.tsv"
PCOA_PLOT = "embedding_pcoa.png"
UNIFRAC_PLOT = "embedding_vs_unifrac.png"
RESIDUAL_PLOT = "residuals.png"


def errors_by_name(column: str) -> str:
    return f"errors-by-{column}.tsv"


def q2_types_row(header: list[str], categorical: set[str]) -> str:
    return "\t".join([Q2_TYPES] + ["categorical" if c in categorical else "numeric" for c in header[1:]])
PREDICTIONS = "predictions.tsv"
CHECKPOINTS = "checkpoints"
PLOTS = "plots"
TENSORBOARD = "tensorboard"  # logging.tensorboard: event files, one folder per generation
LOSS_PLOT = "loss.png"
PRED_PLOT = "pred_vs_true.png"
CONFUSION_PLOT = "confusion.png"
PROFILE_DIR = "profile"  # trainer.profile: <stage>-trace.json, <stage>-top.txt, rocprof-<node>/
AUTOBATCH = "autobatch.json"  # batchSize/gradientAccumulation auto: the choice, kept for resumes
RESERVE = ".space-reserve"  # freed on ENOSPC so the failure itself can still be written down
LOW_SPACE = 64 * 1024  # below this many free bytes, a write that failed is taken for a full disk


def target_plot(plot: str, target: str) -> str:
    """A target's own plot in a run with several targets: pred_vs_true.png -> pred_vs_true_age.png
    (characters a file name should not carry become '_')."""
    stem, dot, ext = plot.rpartition(".")
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in target)
    return f"{stem}_{safe}{dot}{ext}"


def checkpoint_name(which: str) -> str:
    """checkpoints/last.pt or checkpoints/best.pt, relative to the run folder."""
    return f"{CHECKPOINTS}/{which}.pt"


# -- exit codes of a job (the runtime's, or the job script's)
EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected error; the log has the traceback
EXIT_USAGE = 2
EXIT_DATA_ERROR = 3  # the data (or the record) cannot be used: status.json says why
EXIT_DEPENDENCY_FAILED = 4  # the initFrom run did not succeed; this one never started
EXIT_NO_HARDWARE = 5  # the HardwareProfile asks for devices this machine does not have
EXIT_NO_SPACE = 6  # a write to the run folder failed: no space left (or another I/O error)
EXIT_PREEMPTED = 75  # checkpointed after SIGTERM/SIGUSR1; requeue (or aamctl resume) to continue
EXIT_PRUNED = 76  # a sweep's pruner stopped this trial (it lost); not a failure
EXIT_CANCELLED = 143  # written by aamctl cancel for a local run (128 + SIGTERM)
EXIT_MEANINGS = {
    EXIT_DATA_ERROR: "bad data",
    EXIT_DEPENDENCY_FAILED: "its initFrom run did not succeed",
    EXIT_NO_HARDWARE: "the devices the HardwareProfile asks for are not on this machine",
    EXIT_NO_SPACE: "no space left on device (or another write error) in the run folder",
    EXIT_PREEMPTED: "stopped by a signal after checkpointing; 'aamctl resume RUN' continues it",
    EXIT_PRUNED: "pruned by its sweep (worse than the other trials at the same epoch)",
}


STORAGE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG}


def storage_cause(exc: BaseException | None) -> OSError | None:
    """The OSError behind exc (itself, or along its cause/context chain) when it is about storage:
    no space, quota, read-only file system, I/O error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def describe_storage_error(exc: OSError, where: Path) -> str:
    """'no space left on device at PATH' (or the OS's words for the other storage errors)."""
    path = exc.filename or where
    what = "no space left on device" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else (exc.strerror or str(exc)).lower()
    free = free_bytes(Path(path))
    return f"{what} at {path}" + (f" ({free // 1024} KiB free)" if free is not None else "")


def free_bytes(path: Path) -> int | None:
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def atomic_write(path: Path, data: str | bytes | memoryview) -> None:
    """Write a whole file or nothing: a temporary file beside it, renamed over it; the temporary
    file is removed when anything fails (a full disk leaves no debris)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w" if isinstance(data, str) else "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def append_line(path: Path, obj: dict) -> None:
    """Append one JSON line (a single write call, so concurrent readers see whole lines)."""
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=_jsonable) + "\n")


def _jsonable(o):
    try:
        import numpy as np
        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    return str(o)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        pass  # a line being written right now
    except OSError:
        pass
    return out


STATUS_PROBLEM = "status_problem"  # key set on a status rebuilt because status.json was unreadable


def read_status(folder: Path) -> dict:
    """status.json of a run folder ({} before the runtime wrote one). When the file is damaged,
    what events.jsonl and metrics.jsonl say instead, with STATUS_PROBLEM naming the damage."""
    path = Path(folder) / STATUS
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        return _recovered(folder, f"{path} cannot be read ({exc.strerror})")
    try:
        status = json.loads(text)
    except ValueError as exc:
        return _recovered(folder, f"{path} is damaged ({exc})")
    if not isinstance(status, dict):
        return _recovered(folder, f"{path} is damaged (not a JSON object)")
    return status


def _recovered(folder: Path, problem: str) -> dict:
    folder = Path(folder)
    st: dict = {}
    events = read_jsonl(folder / EVENTS)
    metrics = read_jsonl(folder / METRICS)
    started = [e for e in events if e.get("event") == "started"]
    finished = [e for e in events if e.get("event") == "finished"]
    if started:
        st["started"] = started[0].get("time")
        st["stage"] = started[-1].get("stage")
    if finished and (not started or finished[-1].get("time", 0) >= started[-1].get("time", 0)):
        st["finished"] = finished[-1].get("time")
        st["phase"] = finished[-1].get("phase")
        if finished[-1].get("error"):
            st["error"] = str(finished[-1]["error"]).splitlines()[0]
    train = [m for m in metrics if m.get("split") == "train"]
    if train:
        st["step"], st["epoch"] = train[-1].get("step"), train[-1].get("epoch")
        st["last_metrics"] = {k: v for k, v in train[-1].items() if k not in ("step", "epoch", "split", "time")}
    val = [m for m in metrics if m.get("split") in ("validation", "predict")]
    if val:
        st["val_metrics"] = val[-1]
        if st.get("phase") == "Succeeded":
            st["final_metrics"] = {k: v for k, v in val[-1].items() if k not in ("split", "time")}
    missing = [k for k in ("started", "finished", "final_metrics") if k not in st]
    st[STATUS_PROBLEM] = problem + f"; shown from {EVENTS} and {METRICS}" + (
        f" (not recoverable: {', '.join(missing)})" if missing else "")
    return st


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._status: dict = read_json(self.path / STATUS) or {}

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    def status(self) -> dict:
        return dict(self._status)

    def update_status(self, **fields) -> None:
        self._status.update(fields)
        now = time.time()
        self._status["heartbeat"] = now
        self._status["heartbeat_iso"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        self._status.setdefault("host", socket.gethostname())
        atomic_write(self.path / STATUS, json.dumps(self._status, indent=2, default=_jsonable) + "\n")

    def metric(self, **fields) -> None:
        fields.setdefault("time", time.time())
        append_line(self.path / METRICS, fields)

    def event(self, kind: str, **fields) -> None:
        append_line(self.path / EVENTS, {"time": time.time(), "event": kind, **fields})

    def preempt_requested(self) -> bool:
        return (self.path / PREEMPT_FLAG).exists()

    def prune_requested(self) -> bool:
        return (self.path / PRUNE_FLAG).exists()

    # A few hundred KiB set aside at start: when the disk fills, freeing them lets the runtime
    # still write down why it stopped (status.json, the exit code) instead of vanishing silently.
    def reserve_space(self, nbytes: int = 256 * 1024) -> None:
        try:
            with open(self.path / RESERVE, "wb") as f:
                f.write(b"\0" * nbytes)
        except OSError:
            self.release_reserve()

    def release_reserve(self) -> None:
        try:
            os.unlink(self.path / RESERVE)
        except OSError:
            pass
