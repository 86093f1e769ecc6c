"""doctor: check this machine against a HardwareProfile (in a subprocess: it imports torch)."""
from __future__ import annotations

import json
import subprocess
import sys

import click

from aamctl.api.resolve import builtin_documents, normalize
from aamctl.api.schema import fill_defaults
from aamctl.errors import AamError, Diagnostic
from aamctl.ui.context import Context

# The golden model: every layer kind once (nucleotide, sample, encoder and target stacks, attention
# pooling, FiLM counts, the sequence skip, an MLP head), small enough for a file of a few hundred kB.
GOLDEN_MODEL = {"embeddingDim": 32, "ffnMultiplier": 2, "dropout": 0.0, "countEmbedding": "film",
                "sequenceSkip": True, "nucleotide": {"heads": 2, "layers": 1}, "sample": {"heads": 2, "layers": 1},
                "encoderHead": {"heads": 2, "layers": 1},
                "targetHead": {"heads": 2, "layers": 1, "hidden": [16]}}


@click.command()
@click.option("--profile", default=None, help="HardwareProfile to check against (default: the machine only).")
@click.option("--write-golden", "write_golden", default=None, metavar="FILE",
              help="Also run the fixed golden model (forward, losses, one backward per dtype) and save it to FILE.")
@click.option("--golden", "golden", default=None, metavar="FILE",
              help="Also recompute a golden file here and compare per tensor (a shipped name such as 'cpu' works too).")
@click.pass_context
def doctor(ctx, profile, write_golden, golden):
    """Check this machine (or container) against a HardwareProfile: torch, devices, SDPA, bf16, compile;
    with --write-golden / --golden, numerics across platforms."""
    if write_golden and golden:
        raise AamError(Diagnostic("--write-golden and --golden go one at a time", file="aamctl",
                                  hint="write on the reference machine, compare (--golden) on the other"))

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
    args = [sys.executable, "-m", "aam_runtime.doctor", json.dumps(spec or {}), profile or ""]
    if write_golden:
        model = fill_defaults("Model", {"apiVersion": "aam/v1alpha1", "kind": "Model",
                                        "metadata": {"name": "golden"}, "spec": GOLDEN_MODEL})["spec"]
        args += ["--write-golden", write_golden, "--golden-spec", json.dumps(model)]
    elif golden:
        args += ["--golden", golden]
    proc = subprocess.run(args)
    ctx.exit(proc.returncode)


COMMANDS = [doctor]
