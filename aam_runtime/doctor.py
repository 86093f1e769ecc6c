"""`aamctl doctor`: does this machine (or container) have what a HardwareProfile expects?

    python -m aam_runtime.doctor '<profile spec as JSON>' [profile-name]
        [--write-golden FILE --golden-spec '<Model spec as JSON>' | --golden FILE]

Prints one line per check (ok / WARN / FAIL / skip) and a verdict; exit 1 when a check fails.
With --write-golden it then saves the golden numerics of this machine (aam_runtime.golden); with
--golden it recomputes a golden file here and fails when a tensor differs past its dtype's tolerance.
"""
from __future__ import annotations

import json
import os
import sys

from aam_runtime.machine import cpu_bf16_flags


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    golden_opts = {}
    for flag in ("--write-golden", "--golden", "--golden-spec"):
        if flag in argv:
            i = argv.index(flag)
            golden_opts[flag] = argv[i + 1]
            del argv[i:i + 2]
    spec = json.loads(argv[0]) if argv and argv[0] else {}
    name = argv[1] if len(argv) > 1 and argv[1] else "(none)"
    rows: list[tuple[str, str, str]] = []

    def add(check, state, detail):
        rows.append((check, state, detail))

    import torch

    from aam_runtime.jobenv import INTERFACE_VARS, job_env

    hip = getattr(torch.version, "hip", None)
    build = f"ROCm {hip}" if hip else (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only")
    add("torch", "ok", f"{torch.__version__} ({build})")
    want = spec.get("accelerator")  # None: no profile named, check the machine only
    if want == "rocm" and not hip:
        add("torch build", "FAIL", "profile wants ROCm but this torch is not a HIP build")
    elif want == "cuda" and (hip or not torch.version.cuda):
        add("torch build", "FAIL", "profile wants CUDA but this torch is not a CUDA build")
    elif want:
        add("torch build", "ok", f"matches accelerator {want}")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if want in ("cuda", "rocm"):
        per_node = spec["devicesPerNode"]
        add("devices", "ok" if n >= per_node else "FAIL", f"{n} visible, profile expects {per_node} per node"
            + (f" ({torch.cuda.get_device_name(0)})" if n else ""))
    else:
        add("devices", "skip", f"CPU profile; {os.cpu_count()} cores, {n} GPUs visible")
    device = "cuda" if n else "cpu"

    # masked attention: every SDPA kernel must agree with math (ROCm < 6.3 mem_efficient does not)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    import torch.nn.functional as F

    g = torch.Generator(device="cpu").manual_seed(0)
    dtype = torch.float16 if device == "cuda" else torch.float32
    q, k, v = (torch.randn(4, 4, 64, 32, generator=g).to(device, dtype) for _ in range(3))
    mask = torch.ones(4, 1, 1, 64, dtype=torch.bool, device=device)
    mask[:, :, :, 40:] = False
    with sdpa_kernel([SDPBackend.MATH]):
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).float()
    for label, kernel in (("mem_efficient", SDPBackend.EFFICIENT_ATTENTION), ("flash", SDPBackend.FLASH_ATTENTION)):
        try:
            with sdpa_kernel([kernel]):
                m = mask if label != "flash" else None  # flash takes no mask
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=m).float()
            if label == "flash":
                with sdpa_kernel([SDPBackend.MATH]):
                    ref2 = F.scaled_dot_product_attention(q, k, v).float()
                diff = (out - ref2).abs().max().item()
            else:
                diff = (out - ref).abs().max().item()
            tol = 2e-2 if dtype == torch.float16 else 1e-4
            add(f"sdpa {label}", "ok" if diff < tol else "FAIL",
                f"max |diff| vs math {diff:.2e}" + (" (masked)" if label != "flash" else "")
                + ("" if diff < tol else "; set attentionBackend: math"))
        except RuntimeError as exc:
            add(f"sdpa {label}", "skip", f"not available here ({str(exc).splitlines()[0][:70]})")

    from aam_runtime.model import attention_decision

    backend, why, disagree = attention_decision(spec.get("attentionBackend", "auto"), want or device,
                                                spec.get("rocmVersion"), hip)
    add("attention", "WARN" if disagree else "ok", why + (f"; {disagree}" if disagree else ""))
    if device == "cuda":
        add("bf16", "ok" if torch.cuda.is_bf16_supported() else "WARN",
            "supported" if torch.cuda.is_bf16_supported() else "not supported: use precision no/fp16")
    else:
        flags = cpu_bf16_flags()
        if flags:
            add("bf16", "ok", f"native bf16 ({', '.join(flags)}): precision bf16 (profile cpu-bf16) is faster here")
        else:
            add("bf16", "skip", "no native bf16 instructions (avx512_bf16, amx_bf16): bf16 would be emulated "
                                "and slower; keep precision no")
    if spec.get("compileAllowed") and not hip:
        try:
            f = torch.compile(torch.nn.Linear(8, 8).to(device))
            f(torch.randn(2, 8, device=device)).sum().backward()
            add("torch.compile", "ok", "a tiny module compiled and ran")
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            add("torch.compile", "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}; set compileAllowed: false")
    else:
        add("torch.compile", "skip", "not allowed by the profile" + (" (never on ROCm)" if hip else ""))
    iface = spec.get("networkInterface")
    wanted = job_env(spec) if spec else {}
    for var in INTERFACE_VARS:
        val = os.environ.get(var)
        expected = wanted.get(var)
        if expected and val != expected:
            add(var, "WARN", f"is {val!r}, profile sets {expected!r} in the job")
        elif val:
            add(var, "ok", val)
    if iface:
        present = os.path.exists(f"/sys/class/net/{iface}")
        add("network interface", "ok" if present else "WARN", f"{iface} {'present' if present else 'not on this node'}")
    from aam_runtime.data.unifrac import available_backends

    backends = [b for b in available_backends() if b != "skbio"]
    add("UniFrac", "ok" if backends else "WARN",
        ", ".join(backends) if backends else "only scikit-bio: hundreds of times slower; install unifrac-tools")

    width = max(len(r[0]) for r in rows)
    print(f"aam doctor, profile {name}")
    for check, state, detail in rows:
        print(f"  {check.ljust(width)}  {state:<4}  {detail}")
    failed = [r for r in rows if r[1] == "FAIL"]
    skipped = [r[0] for r in rows if r[1] == "skip"]
    if golden_opts:
        from aam_runtime.model import choose_attention_backend

        backend = choose_attention_backend(spec.get("attentionBackend", "auto"), want or device, spec.get("rocmVersion"),
                                           hip)
        if not golden_and_verdict(golden_opts, "cpu" if want == "cpu" else device, backend):
            failed.append(("golden numerics", "FAIL", ""))
    print(("verdict: NOT READY (" + ", ".join(r[0] for r in failed) + ")") if failed else "verdict: ready")
    if skipped:
        print("not checked here: " + ", ".join(skipped))
    return 1 if failed else 0


def golden_and_verdict(opts: dict, device: str, backend: str) -> bool:
    """Write or compare golden numerics; prints its lines; False when the comparison fails."""
    from aam_runtime import golden

    if "--write-golden" in opts:
        doc = golden.write(opts["--write-golden"], json.loads(opts["--golden-spec"]), device, backend)
        n = sum(len(r) for r in doc["results"].values())
        print(f"golden numerics: wrote {opts['--write-golden']} ({', '.join(doc['results'])}; {n} tensors; "
              f"{golden.fmt_platform(doc['platform'])})")
        return True
    ok, lines = golden.compare(golden.load(opts["--golden"]), device, backend)
    print(f"golden numerics against {opts['--golden']}: {'ok' if ok else 'DIFFERENT'}")
    for line in lines:
        print("  " + line)
    return ok


if __name__ == "__main__":
    from aam_runtime.golden import GoldenError

    try:
        sys.exit(main())
    except GoldenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        sys.exit(2)
