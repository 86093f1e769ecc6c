"""The prepared GPU check: everything aam needs to know from a machine with one NVIDIA GPU, in
one command, into one folder, cheap parts first (a cut-off still returns the early results).

    python3 benchmarks/gpu_check.py --out DIR [--budget-s 540]     # on the GPU machine
    python3 benchmarks/gpu_check.py --out DIR --dry                # CPU, tiny sizes (CI runs this)

On a GPU node with no network, run it through benchmarks/gpu_check.sh, which installs the wheels
and the UniFrac cache that benchmarks/gpu_prepare.sh put under .gpucheck/ on a networked machine.

Parts, in order, each under its own time budget (seconds on an H100, measured at small sizes on
CPU and scaled; the whole must end within 9 minutes):
  1. env         python, torch, CUDA, the GPU                                          (10)
  2. doctor      `aamctl doctor` against a one-GPU CUDA profile, and the golden
                 numerics of this GPU against the CPU golden file                      (60)
  3. throughput  benchmarks/train_throughput.py at the reference sizes (maxAsvsPerSample
                 1024, maxBp 150): fp32 and bf16, each SDPA kernel, compile, batch 8 and 32,
                 samples/s and MFU against the data-sheet peak                        (200)
  4. recipe      the shipped recipe (manifests/) on the GPU through `aamctl apply --wait`:
                 one pretraining and one fine-tune at full length, validation MAE       (240)
Distributed runs (DDP, FSDP) need two GPUs: on a one-GPU machine they are not run (CPU DDP is
tested in CI; accelerate runs no FSDP on CPU, so FSDP has never run: docs/hardware.md).

Writes DIR/summary.md (the table it prints), DIR/results.json, and one log per part.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
AAMCTL = [sys.executable, "-m", "aamctl.cli"]
PROFILE = "gpu-check"
BUDGETS = {"env": 10, "doctor": 60, "throughput": 200, "recipe": 240}


class Check:
    def __init__(self, out: Path, dry: bool, budget: float):
        self.out, self.dry = out, dry
        self.deadline = time.time() + budget
        self.rows: list[tuple[str, str, str]] = []  # part, state, detail
        self.results: dict = {"dry": dry, "parts": {}}
        self.home = out / "home"
        self.env = dict(os.environ, PYTHONUNBUFFERED="1", WANDB_MODE="disabled",
                        AAM_CACHE_DIR=os.environ.get("AAM_CACHE_DIR") or str(out / "cache"))

    def left(self, part: str) -> float:
        return max(0.0, min(BUDGETS[part], self.deadline - time.time()))

    def sh(self, part: str, cmd: list[str], timeout: float, log_name: str | None = None) -> subprocess.CompletedProcess:
        """Run one command of a part; its output is appended to the part's log."""
        log = self.out / f"{log_name or part}.log"
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(1.0, timeout), env=self.env,
                               cwd=str(ROOT))
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            p = subprocess.CompletedProcess(cmd, 124, out, f"timed out after {timeout:.0f}s")
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}  # {time.time() - t0:.1f}s, exit {p.returncode}\n{p.stdout}{p.stderr}\n")
        return p

    def row(self, part: str, state: str, detail: str) -> None:
        self.rows.append((part, state, detail))
        print(f"[{time.strftime('%H:%M:%S')}] {part:<11} {state:<4} {detail}", flush=True)

    def save(self) -> None:
        self.results["rows"] = [{"part": p, "state": s, "detail": d} for p, s, d in self.rows]
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2))
        lines = ["| part | state | detail |", "| --- | --- | --- |"] + \
            [f"| {p} | {s} | {d.replace('|', '/')} |" for p, s, d in self.rows]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")


def part_env(c: Check) -> None:
    code = ("import json, platform, torch\n"
            "d = {'python': platform.python_version(), 'torch': torch.__version__, 'cuda': torch.version.cuda,\n"
            "     'hip': getattr(torch.version, 'hip', None), 'gpus': torch.cuda.device_count()}\n"
            "if d['gpus']:\n"
            "    d['gpu'] = torch.cuda.get_device_name(0)\n"
            "    d['bf16'] = torch.cuda.is_bf16_supported()\n"
            "    d['memory_gib'] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)\n"
            "print(json.dumps(d))\n")
    p = c.sh("env", [sys.executable, "-c", code], c.left("env") + 20)
    if p.returncode != 0:
        c.row("env", "FAIL", (p.stderr.strip().splitlines() or ["?"])[-1][:120])
        return
    info = json.loads(p.stdout.strip().splitlines()[-1])
    c.results["parts"]["env"] = info
    where = f"{info.get('gpu')} ({info.get('memory_gib')} GiB, bf16 {info.get('bf16')})" if info["gpus"] else "no GPU"
    c.row("env", "ok" if info["gpus"] or c.dry else "FAIL",
          f"python {info['python']}, torch {info['torch']} (CUDA {info['cuda']}), {where}")


def write_profile(c: Check) -> Path:
    spec = {"accelerator": "cpu", "cpusPerTask": "auto", "precision": "no"} if c.dry else \
        {"accelerator": "cuda", "deviceModel": "one-gpu", "devicesPerNode": 1, "cpusPerTask": "auto",
         "precision": "bf16", "attentionBackend": "auto", "compileAllowed": True, "strategy": "none"}
    f = c.out / "profile.yaml"
    f.write_text(yaml.safe_dump({"apiVersion": "aam/v1alpha1", "kind": "HardwareProfile",
                                 "metadata": {"name": PROFILE}, "spec": spec}, sort_keys=False))
    return f


def part_doctor(c: Check, profile: Path) -> None:
    p = c.sh("doctor", [*AAMCTL, "--home", str(c.home), "apply", "-f", str(profile)], 30)
    if p.returncode != 0:
        c.row("doctor", "FAIL", "profile not applied: " + (p.stderr.strip().splitlines() or ["?"])[-1][:100])
        return
    p = c.sh("doctor", [*AAMCTL, "--home", str(c.home), "doctor", "--profile", PROFILE, "--golden", "cpu"],
             c.left("doctor"))
    lines = p.stdout.splitlines()
    verdict = next((x for x in lines if x.startswith("verdict")), "verdict: ?")
    attention = " ".join(next((x for x in lines if x.strip().startswith("attention")), "").split())
    golden = next((x for x in lines if x.startswith("golden numerics")), "golden: not compared")
    c.results["parts"]["doctor"] = {"exit": p.returncode, "stdout": p.stdout}
    c.row("doctor", "ok" if p.returncode == 0 else "FAIL", f"{verdict}; {golden}; {attention}"[:240])


def throughput_configs(dry: bool) -> list[dict]:
    if dry:
        return [{"precision": "no", "attention": "auto", "compile": False, "batches": [2]}]
    return [
        {"precision": "no", "attention": "auto", "compile": False, "batches": [8, 32]},
        {"precision": "bf16", "attention": "auto", "compile": False, "batches": [8, 32]},
        {"precision": "bf16", "attention": "math", "compile": False, "batches": [32]},
        {"precision": "bf16", "attention": "mem_efficient", "compile": False, "batches": [32]},
        {"precision": "bf16", "attention": "flash", "compile": False, "batches": [32]},  # expected: no mask support
        {"precision": "bf16", "attention": "auto", "compile": True, "batches": [32]},
    ]


def part_throughput(c: Check) -> None:
    out = []
    device = "cpu" if c.dry else "cuda"
    steps = 1 if c.dry else 6
    for cfg in throughput_configs(c.dry):
        for batch in cfg["batches"]:
            left = c.left("throughput") - sum(r.get("wall_s", 0) for r in out)
            label = f"{cfg['precision']}/{cfg['attention']}{'/compile' if cfg['compile'] else ''}/b{batch}"
            if left < 5:
                c.row("throughput", "skip", f"{label}: out of time")
                continue
            cmd = [sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--one", f"{batch}:1",
                   "--steps", str(steps), "--device", device, "--precision", cfg["precision"],
                   "--attention", cfg["attention"]] + (["--compile"] if cfg["compile"] else [])
            t0 = time.time()
            p = c.sh("throughput", cmd, left)
            wall = time.time() - t0
            if p.returncode != 0:
                why = (p.stderr.strip().splitlines() or ["?"])[-1][:120]
                out.append({"config": label, "error": why, "wall_s": wall})
                c.row("throughput", "skip" if cfg["attention"] == "flash" else "FAIL", f"{label}: {why}")
                continue
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r.update(config=label, wall_s=wall)
            out.append(r)
            c.row("throughput", "ok", f"{label}: {r['samples_per_s']:.1f} samples/s, MFU {100 * r['mfu']:.1f}% "
                                      f"of {r['peak_tflops']:.3g} TFLOP/s, peak "
                                      + (f"GPU {r['gpu_peak_mib']:.0f} MiB" if r.get("gpu_peak_mib") else
                                         f"RSS {r['peak_rss_mib']} MiB"))
    c.results["parts"]["throughput"] = out


def recipe_manifests(c: Check) -> Path:
    """manifests/ pretrain + the first fine-tune, on the check's profile (dry: two steps each)."""
    dst = c.out / "recipe"
    dst.mkdir(exist_ok=True)
    keep = {"oral-pretrain", "oral-age-finetune"}
    docs = []
    for f in ("pretrain.yaml", "finetune.yaml"):
        for d in yaml.safe_load_all((ROOT / "manifests" / f).read_text()):
            if not isinstance(d, dict):
                continue
            spec = d.get("spec") or {}
            if d["kind"] == "Dataset":
                for key in ("table", "tree"):
                    spec[key] = str((ROOT / "manifests" / spec[key]).resolve())
                spec["metadata"]["path"] = str((ROOT / "manifests" / spec["metadata"]["path"]).resolve())
            if d["kind"] == "Run":
                if d["metadata"]["name"] not in keep:
                    continue
                spec["hardwareRef"] = PROFILE
                spec["logging"] = {"wandb": {"mode": "disabled"}}
                if c.dry:
                    spec["trainer"]["maxSteps"] = 2
                    spec["trainer"]["epochs"] = 1
            docs.append(d)
    (dst / "recipe.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return dst / "recipe.yaml"


def part_recipe(c: Check, profile: Path) -> None:
    f = recipe_manifests(c)
    t0 = time.time()
    p = c.sh("recipe", [*AAMCTL, "--home", str(c.home), "apply", "-f", str(profile), "-f", str(f), "--wait"],
             c.left("recipe"))
    wall = time.time() - t0
    res = {"exit": p.returncode, "wall_s": round(wall, 1)}
    for run in ("oral-pretrain", "oral-age-finetune"):
        folder = c.home / "runs" / run / "1"
        try:
            st = json.loads((folder / "status.json").read_text())
        except (OSError, ValueError):
            st = {}
        span = (st.get("finished") or time.time()) - st["started"] if st.get("started") else None
        res[run] = {"phase": st.get("phase"), "step": st.get("step"), "best_metric": st.get("best_metric"),
                    "val_metrics": st.get("val_metrics"), "throughput": st.get("throughput"),
                    "peak_memory_mb": st.get("peak_memory_mb"), "span_s": span}
    c.results["parts"]["recipe"] = res
    fine = res["oral-age-finetune"]
    best = fine.get("best_metric") or {}
    mae = best.get("value") if str(best.get("name", "")).startswith("mae") else \
        (fine.get("val_metrics") or {}).get("mae:age")
    state = "ok" if p.returncode == 0 else ("skip" if p.returncode == 124 else "FAIL")
    c.row("recipe", state, f"pretrain {res['oral-pretrain']['phase']}, finetune {fine['phase']} in {wall:.0f}s"
                           + (f"; validation MAE {mae:.2f} years" if isinstance(mae, (int, float)) else "")
                           + ("" if p.returncode == 0 else f"; exit {p.returncode}"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--dry", action="store_true", help="CPU, tiny sizes: the plumbing only (CI)")
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--parts", default="env,doctor,throughput,recipe")
    a = ap.parse_args()
    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out / "home", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    c = Check(out, a.dry, a.budget_s)
    parts = a.parts.split(",")
    profile = write_profile(c)
    t0 = time.time()
    for name, fn in (("env", lambda: part_env(c)), ("doctor", lambda: part_doctor(c, profile)),
                     ("throughput", lambda: part_throughput(c)), ("recipe", lambda: part_recipe(c, profile))):
        if name not in parts:
            continue
        if c.left(name) < 3:
            c.row(name, "skip", "out of time")
            continue
        try:
            fn()
        except Exception as exc:  # one broken part must not hide the others' results
            c.row(name, "FAIL", f"{type(exc).__name__}: {exc}"[:200])
        c.save()
    c.row("distributed", "skip", "DDP and FSDP need two GPUs: not run here (CPU DDP is tested in CI; FSDP has never run)")
    c.results["wall_s"] = round(time.time() - t0, 1)
    c.save()
    print()
    print((out / "summary.md").read_text())
    print(f"gpu check: {c.results['wall_s']:.0f}s; results in {out}")
    return 1 if any(s == "FAIL" for _, s, _ in c.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
