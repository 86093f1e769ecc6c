"""Auxiliary losses while fine-tuning: does keeping the UniFrac / nucleotide / count losses (the
reference's `aam train` keeps all three at weight 1) help the target, on the bundled oral data?

For each split seed: one pretraining (the quickstart's tiny model), then fine-tuning runs that
differ only in lossWeights.*WhenFinetuning, all through `aamctl apply` in a scratch state folder.
Reports the best validation MAE (years) of each variant per seed, the mean, and the fine-tuning
time (the auxiliary UniFrac loss reads the distance matrix every step).

    .venv/bin/python benchmarks/aux_losses.py [--seeds 1,2,3] [--samples 600] [--epochs 20] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from aam_runtime.runfolder import STATUS  # noqa: E402
from aamctl.planning.plan import run_folder  # noqa: E402

AAMCTL = [sys.executable, "-m", "aamctl"]
VARIANTS = {
    "none (aam default)": {},
    "unifrac 1": {"unifracWhenFinetuning": 1.0},
    "unifrac 0.1": {"unifracWhenFinetuning": 0.1},
    "all three at 1 (reference)": {"unifracWhenFinetuning": 1.0, "nucleotideWhenFinetuning": 1.0,
                                   "countWhenFinetuning": 1.0},
}


def apply(home: Path, docs: list[dict], name: str) -> float:
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    t0 = time.time()
    p = subprocess.run([*AAMCTL, "--home", str(home), "apply", "-f", str(path), "--wait"], capture_output=True,
                       text=True)
    if p.returncode != 0:
        sys.exit(f"apply {name} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return time.time() - t0


def best_mae(home: Path, name: str) -> float:
    status = json.loads((run_folder(home, name, 1) / STATUS).read_text())
    return float(status["final_metrics"]["best_metric"])  # the run's earlyStopping metric: mae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    docs = [d for d in yaml.safe_load_all((ROOT / "examples" / "quickstart.yaml").read_text()) if d]
    by = {d["kind"]: d for d in docs if d["kind"] in ("Dataset", "Model")}
    runs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Run"}
    home = Path(tempfile.mkdtemp(prefix="aam-aux-"))
    results: dict = {name: [] for name in VARIANTS}
    seconds: dict = {name: [] for name in VARIANTS}
    for seed in [int(s) for s in a.seeds.split(",")]:
        ds = copy.deepcopy(by["Dataset"])
        ds["metadata"] = {"name": f"aux-data-{seed}"}
        ds["spec"]["table"] = str(ROOT / "examples" / ds["spec"]["table"])
        ds["spec"]["tree"] = str(ROOT / "examples" / ds["spec"]["tree"])
        ds["spec"]["metadata"]["path"] = str(ROOT / "examples" / ds["spec"]["metadata"]["path"])
        ds["spec"]["subsample"] = {"samples": a.samples, "seed": seed}
        ds["spec"]["split"] = {"validationFraction": 0.2, "seed": seed}
        pre = copy.deepcopy(runs["quickstart-pretrain"])
        pre["metadata"] = {"name": f"aux-pre-{seed}"}
        pre["spec"]["datasetRef"] = ds["metadata"]["name"]
        pre["spec"]["trainer"]["seed"] = seed
        apply(home, [ds, by["Model"], pre], f"aux-pre-{seed}")
        for k, (variant, weights) in enumerate(VARIANTS.items()):
            ft = copy.deepcopy(runs["quickstart-finetune"])
            name = f"aux-ft-{seed}-{k}"
            ft["metadata"] = {"name": name}
            ft["spec"]["datasetRef"] = ds["metadata"]["name"]
            ft["spec"]["initFrom"] = {"run": pre["metadata"]["name"]}
            ft["spec"]["trainer"].update(epochs=a.epochs, seed=seed, lossWeights=dict(weights))
            seconds[variant].append(apply(home, [ft], name))
            results[variant].append(best_mae(home, name))
            print(f"seed {seed} {variant:28}: best validation MAE {results[variant][-1]:.3f} "
                  f"({seconds[variant][-1]:.0f}s)", flush=True)
    print("\nmean over seeds (best validation MAE, years; fine-tuning wall time):")
    base = statistics.mean(results["none (aam default)"])
    for variant in VARIANTS:
        m = statistics.mean(results[variant])
        print(f"  {variant:28}: {m:.3f} ({m - base:+.3f} vs none), {statistics.mean(seconds[variant]):.0f}s")
    if a.json:
        Path(a.json).write_text(json.dumps({"mae": results, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
