"""The words for where a run, a sweep or a trial stands, with what each one means.

They are str-Enums: a member equals its word (`RunPhase.RUNNING == "Running"`), so the values in
SQLite, status.json, records and printed tables stay the words they always were; a member
formats and dumps (JSON, YAML) as its word."""
from __future__ import annotations

import enum

import yaml


class _Word(str, enum.Enum):
    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class RunPhase(_Word):
    PENDING = "Pending"      # planned; not started, or waiting for its initFrom run
    QUEUED = "Queued"        # the local executor waits for its share of the machine
    RUNNING = "Running"
    REQUEUED = "Requeued"    # SLURM put it back in the queue (preemption, time limit)
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    PRUNED = "Pruned"        # a sweep's controller stopped it

    @property
    def is_active(self) -> bool:
        return self in ACTIVE_RUN

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_RUN


class SweepPhase(_Word):
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

    @property
    def is_terminal(self) -> bool:
        return self is not SweepPhase.RUNNING


class TrialState(_Word):
    CREATING = "Creating"    # asked of Optuna; its run is being planned
    RUNNING = "Running"      # its run was submitted
    COMPLETE = "Complete"
    PRUNED = "Pruned"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_TRIAL


# sets of plain words: what a row read from SQLite or a status.json is tested against
ACTIVE_RUN = frozenset({RunPhase.PENDING, RunPhase.QUEUED, RunPhase.RUNNING, RunPhase.REQUEUED})
TERMINAL_RUN = frozenset({RunPhase.SUCCEEDED, RunPhase.FAILED, RunPhase.CANCELLED, RunPhase.PRUNED})
STOPPED_BADLY = frozenset({RunPhase.FAILED, RunPhase.CANCELLED})  # `apply` hints at resume for these
TERMINAL_SWEEP = frozenset({SweepPhase.SUCCEEDED, SweepPhase.FAILED, SweepPhase.CANCELLED})
TERMINAL_TRIAL = frozenset({TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAILED})

yaml.SafeDumper.add_multi_representer(_Word, lambda dumper, word: dumper.represent_str(word.value))
