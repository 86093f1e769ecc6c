"""Watching runs until they end (apply --wait, wait).

On a terminal: one live tqdm bar per run (step, epoch, loss, samples/s, ETA). Elsewhere (logs,
CI, pipes): a line when a run changes phase, when it passes another 10% of its steps, or at
most once a minute while it moves; never a line per step.
"""
from __future__ import annotations

import sys
import time

import click

from aamctl.errors import AamError, Diagnostic
from aamctl.phases import TERMINAL_RUN, RunPhase
from aamctl.runs.reconcile import reconcile
from aamctl.ui.printers import last_loss

LINE_EVERY_S = 60.0
POLL_S = 1.0


class LineReporter:
    """Decides which observations deserve a line (no terminal)."""

    def __init__(self, every_s: float = LINE_EVERY_S):
        self.every_s = every_s
        self.last: dict[str, tuple] = {}  # name -> (phase, reason, tenth, step, time)

    def lines(self, name: str, phase: str, reason: str | None, status: dict, now: float) -> list[str]:
        step, total = status.get("step") or 0, status.get("total_steps") or 0
        tenth = int(10 * step / total) if total else 0
        prev = self.last.get(name)
        due = (prev is None or (phase, reason) != prev[:2] or tenth > prev[2]
               or (step != prev[3] and now - prev[4] >= self.every_s))
        if not due:
            return []
        self.last[name] = (phase, reason, tenth, step, now)
        text = f"run/{name} {phase}"
        if total:
            text += f" step {step}/{total} ({100.0 * step / total:.0f}%)"
            loss = last_loss(status)
            if loss is not None:
                text += f" loss {loss:.4g}"
        return [text + (f" ({reason})" if reason else "")]


class BarReporter:
    """One tqdm bar per run, redrawn in place."""

    def __init__(self, names: list[str]):
        from tqdm import tqdm

        width = max(len(n) for n in names) + 4
        self.bars = {n: tqdm(total=None, desc=f"run/{n}".ljust(width), position=i, leave=True, unit="step",
                             dynamic_ncols=True, bar_format="{desc} {percentage:3.0f}%|{bar}| {n}/{total} "
                             "[{elapsed}<{remaining}] {postfix}")
                     for i, n in enumerate(names)}

    def update(self, name: str, phase: str, reason: str | None, status: dict) -> None:
        bar = self.bars[name]
        total = status.get("total_steps")
        if total and bar.total != total:
            bar.total = total
        step = status.get("step") or 0
        if step != bar.n:
            bar.update(step - bar.n)
        post = [phase]
        if status.get("epoch") is not None:
            post.append(f"epoch {status['epoch']}")
        loss = last_loss(status)
        if loss is not None:
            post.append(f"loss {loss:.4g}")
        if status.get("throughput"):
            post.append(f"{status['throughput']:.1f} samples/s")
        if reason:
            post.append(reason)
        bar.set_postfix_str(", ".join(post), refresh=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def wait_for(store, runs: list[tuple[str, int]], timeout: float | None, tty: bool | None = None) -> bool:
    """Block until every (name, generation) ends; True when all succeeded."""
    tty = sys.stdout.isatty() if tty is None else tty
    bars = BarReporter([n for n, _ in runs]) if tty else None
    lines = LineReporter()
    start = time.time()
    try:
        while True:
            rows = [store.run(n, g) for n, g in runs]
            observed = reconcile(store, [r for r in rows if r is not None])
            for row, phase, reason, status in observed:
                if bars is not None:
                    bars.update(row["name"], phase, reason, status)
                else:
                    for line in lines.lines(row["name"], phase, reason, status, time.time()):
                        click.echo(line)
            if all(phase in TERMINAL_RUN for _, phase, _, _ in observed):
                if bars is not None:
                    bars.close()
                    bars = None
                    for row, phase, reason, _ in observed:
                        click.echo(f"run/{row['name']} {phase}" + (f" ({reason})" if reason else ""))
                return all(p == RunPhase.SUCCEEDED for _, p, _, _ in observed)
            if timeout is not None and time.time() - start > timeout:
                raise AamError(Diagnostic(f"runs still active after {timeout:.0f}s", file="aamctl",
                                          hint="'aamctl status' shows them; 'aamctl wait' waits again"))
            time.sleep(POLL_S)
    finally:
        if bars is not None:
            bars.close()
