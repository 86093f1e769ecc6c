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
    import torch

    hip = getattr(torch.version, "hip", None)
    want = spec.get("accelerator")  # None: no profile named, check the machine only
    rows: list[tuple[str, str, str]] = []
    device = check_torch(rows, spec, want, hip)
    check_attention(rows, spec, want, hip, device)
    check_precision_and_compile(rows, spec, hip, device)
    check_network_and_unifrac(rows, spec)
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


def check_torch(rows: list, spec: dict, want: str | None, hip: str | None) -> str:
    """The torch build against the profile's accelerator, and the devices; the device to test on."""
    import torch

    build = f"ROCm {hip}" if hip else (f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only")
    rows.append(("torch", "ok", f"{torch.__version__} ({build})"))
    if want == "rocm" and not hip:
        rows.append(("torch build", "FAIL", "profile wants ROCm but this torch is not a HIP build"))
    elif want == "cuda" and (hip or not torch.version.cuda):
        rows.append(("torch build", "FAIL", "profile wants CUDA but this torch is not a CUDA build"))
    elif want:
        rows.append(("torch build", "ok", f"matches accelerator {want}"))
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if want in ("cuda", "rocm"):
        per_node = spec["devicesPerNode"]
        rows.append(("devices", "ok" if n >= per_node else "FAIL", f"{n} visible, profile expects {per_node} per node"
                     + (f" ({torch.cuda.get_device_name(0)})" if n else "")))
    else:
        rows.append(("devices", "skip", f"CPU profile; {os.cpu_count()} cores, {n} GPUs visible"))
    return "cuda" if n else "cpu"


def check_attention(rows: list, spec: dict, want: str | None, hip: str | None, device: str) -> None:
    """Masked attention: every SDPA kernel must agree with math (ROCm < 6.3 mem_efficient does
    not); and which kernel a run of this profile will use, and why."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from aam_runtime.model import attention_decision

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
            rows.append((f"sdpa {label}", "ok" if diff < tol else "FAIL",
                         f"max |diff| vs math {diff:.2e}" + (" (masked)" if label != "flash" else "")
                         + ("" if diff < tol else "; set attentionBackend: math")))
        except RuntimeError as exc:
            rows.append((f"sdpa {label}", "skip", f"not available here ({str(exc).splitlines()[0][:70]})"))
    backend, why, disagree = attention_decision(spec.get("attentionBackend", "auto"), want or device,
                                                spec.get("rocmVersion"), hip)
    rows.append(("attention", "WARN" if disagree else "ok", why + (f"; {disagree}" if disagree else "")))


def check_precision_and_compile(rows: list, spec: dict, hip: str | None, device: str) -> None:
    import torch

    if device == "cuda":
        rows.append(("bf16", "ok" if torch.cuda.is_bf16_supported() else "WARN",
                     "supported" if torch.cuda.is_bf16_supported() else "not supported: use precision no/fp16"))
    else:
        flags = cpu_bf16_flags()
        if flags:
            rows.append(("bf16", "ok", f"native bf16 ({', '.join(flags)}): precision bf16 (profile cpu-bf16) is "
                                       "faster here"))
        else:
            rows.append(("bf16", "skip", "no native bf16 instructions (avx512_bf16, amx_bf16): bf16 would be "
                                         "emulated and slower; keep precision no"))
    if spec.get("compileAllowed") and not hip:
        try:
            f = torch.compile(torch.nn.Linear(8, 8).to(device))
            f(torch.randn(2, 8, device=device)).sum().backward()
            rows.append(("torch.compile", "ok", "a tiny module compiled and ran"))
        except Exception as exc:  # noqa: BLE001 - report, do not crash
            rows.append(("torch.compile", "FAIL",
                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}; set compileAllowed: false"))
    else:
        rows.append(("torch.compile", "skip", "not allowed by the profile" + (" (never on ROCm)" if hip else "")))


def check_network_and_unifrac(rows: list, spec: dict) -> None:
    """The job's network variables against the profile's, its interface, and a fast UniFrac."""
    from aam_runtime.data.unifrac import available_backends
    from aam_runtime.jobenv import INTERFACE_VARS, job_env

    iface = spec.get("networkInterface")
    wanted = job_env(spec) if spec else {}
    for var in INTERFACE_VARS:
        val = os.environ.get(var)
        expected = wanted.get(var)
        if expected and val != expected:
            rows.append((var, "WARN", f"is {val!r}, profile sets {expected!r} in the job"))
        elif val:
            rows.append((var, "ok", val))
    if iface:
        present = os.path.exists(f"/sys/class/net/{iface}")
        rows.append(("network interface", "ok" if present else "WARN",
                     f"{iface} {'present' if present else 'not on this node'}"))
    backends = [b for b in available_backends() if b != "skbio"]
    rows.append(("UniFrac", "ok" if backends else "WARN",
                 ", ".join(backends) if backends else "only scikit-bio: hundreds of times slower; install unifrac-tools"))


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
