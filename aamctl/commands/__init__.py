"""aamctl's verbs, one module per group:

manifests: validate, explain, version, apply,     watch: wait, logs
           convert
inspect:   get, status, describe                  lifecycle: cancel, resume, delete
records:   export, diff, rebuild-state            doctor: doctor
sweeps:    (get/describe/export/cancel sweep go through the verbs above) sweep-controller
"""
from __future__ import annotations


def register(group) -> None:
    from aamctl.commands import doctor, inspect, lifecycle, manifests, records, sweeps, watch

    for module in (manifests, inspect, watch, lifecycle, records, doctor, sweeps):
        for command in module.COMMANDS:
            group.add_command(command)
