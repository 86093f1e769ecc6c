"""doctor: check this machine against a HardwareProfile (in a subprocess: it imports torch)."""
from __future__ import annotations

import json
import subprocess
import sys

import click

from ..context import Context
from ..errors import AamError, Diagnostic


@click.command()
@click.option("--profile", default=None, help="HardwareProfile to check against (default: the machine only).")
@click.pass_context
def doctor(ctx, profile):
    """Check this machine (or container) against a HardwareProfile: torch, devices, SDPA, bf16, compile."""
    from ..resolve import builtin_documents, normalize

    spec = None
    if profile:
        store = Context(ctx).store(create=False)
        m = store.get_object("HardwareProfile", profile) if store else None
        if m is None:
            m = next((normalize(d).manifest for d in builtin_documents()
                      if d.data["metadata"]["name"] == profile), None)
        if m is None:
            raise AamError(Diagnostic(f"HardwareProfile '{profile}' not found", file="aamctl",
                                      hint="'aamctl get hardwareprofiles' lists them"))
        spec = m["spec"]
    proc = subprocess.run([sys.executable, "-m", "aam_runtime.doctor", json.dumps(spec or {}), profile or ""])
    ctx.exit(proc.returncode)


COMMANDS = [doctor]
