"""The runtime's log lines (stdout of the job, which the job script appends to the run's log)."""
from __future__ import annotations

import time


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)
