"""The run folder: the only place the runtime writes, always by atomic rename.

Layout (runs/<name>/<generation>/):
  record.yaml       resolved manifests + provenance (written by aamctl)
  accelerate.yaml   accelerate launch config (aamctl)
  launch.sh | job.sbatch   what the executor runs (aamctl)
  status.json       phase, progress, metrics, heartbeat (runtime)
  metrics.jsonl     one JSON line per log step and per validation (runtime)
  events.jsonl      started, checkpointed, resumed, finished (runtime)
  log.txt           stdout and stderr of the job (executor)
  exit_code         exit status of the job (executor)
  split.tsv         sample_id and split (runtime)
  checkpoints/      last.pt, best.pt (runtime)
  plots/            PNG figures (runtime)
  predictions.tsv   predict and finetune stages (runtime)
  wandb/            W&B offline run (runtime)
Torch-free: aamctl reads it back.
"""
from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

STATUS = "status.json"
METRICS = "metrics.jsonl"
EVENTS = "events.jsonl"
LOG = "log.txt"
EXIT_CODE = "exit_code"
RECORD = "record.yaml"
PREEMPT_FLAG = "PREEMPT"
EXIT_PREEMPTED = 75  # checkpointed after SIGTERM/SIGUSR1; requeue to continue
EXIT_DATA_ERROR = 3


def atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
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


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._status: dict = read_json(self.path / STATUS) or {}

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.path / "plots"

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
