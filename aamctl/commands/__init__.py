"""aamctl's verbs, one module per group:

manifests: validate, explain, version, apply,     watch: wait, logs
           convert
inspect:   get, status, describe                  lifecycle: cancel, resume, delete
records:   export, diff, rebuild-state            doctor: doctor
sweeps:    (get/describe/export/cancel sweep go through the verbs above) sweep-controller

A verb's module is imported when the verb runs (or when --help lists them all), so each command
starts with only the layers it uses; VERBS says where each one lives (tests/test_cli keeps it
and the modules' COMMANDS lists the same).
"""
from __future__ import annotations

import importlib

VERBS = {
    "validate": "manifests", "explain": "manifests", "version": "manifests", "apply": "manifests",
    "convert": "manifests", "get": "inspect", "status": "inspect", "describe": "inspect", "wait": "watch",
    "logs": "watch", "cancel": "lifecycle", "resume": "lifecycle", "delete": "lifecycle", "export": "records",
    "diff": "records", "rebuild-state": "records", "doctor": "doctor", "sweep-controller": "sweeps",
}


def load(name: str):
    """The click command of verb `name`, or None for a word that is no verb."""
    module = VERBS.get(name)
    if module is None:
        return None
    commands = importlib.import_module(f"aamctl.commands.{module}").COMMANDS
    return next(c for c in commands if c.name == name)
