"""Model quality by k-fold cross-validation: the shipped AAM recipe against a random forest and
predicting the mean, on the same folds, ages in years.

For every fold the held-out samples are never seen by fine-tuning: the fold's finetune runs read
a Dataset that holds only the fold's training samples and split them as the recipe says (the
Dataset's spec.split, with each Run's spec.split over it: early stopping and the best checkpoint
use that inner validation split), and the held-out samples are predicted by a predict Run on a
Dataset that holds only them, exactly as a user would predict new samples. Self-supervised
pretraining uses no labels, so one pretraining on every sample serves all folds (a recipe with
several pretraining Runs gets each of them once, and every finetune is cloned onto the one its
initFrom.run names: an ensemble over pretrainings). The random
forest (500 trees on relative abundances, the manifest's `oral-age-baseline`) is trained on the
fold's whole training set.

Everything runs through `aamctl apply` with the manifests in --manifests (default: manifests/),
in a scratch state folder. When the predict Run is an ensemble (`initFrom.runs`), every listed
finetune run is cloned per fold, fine-tuned one after another, and the fold's predict Run
averages them, as the user's would. --repeat R adds 1000 x R to every run's trainer.seed (same
folds): run 0, 1 and 2 for the spread over seeds. --members also predicts the held-out samples
with each ensemble member alone (one predict Run per member) and reports, per number of members,
the MAE of their averages, mean over every subset of that size: what a smaller or larger ensemble
buys, measured on the same runs. Options shorten the recipe for a quick look
(--finetune-epochs, --pretrain-epochs, --samples); the numbers in docs/benchmarks.md say which
were used.

    .venv/bin/python benchmarks/quality.py [--folds 5] [--seed 0] [--repeat 0] [--samples N]
        [--pretrain-epochs E] [--finetune-epochs E] [--only-folds N] [--fold K ...] [--members]
        [--work DIR] [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from aam_runtime.runfolder import ID_HEADER, PREDICTIONS  # noqa: E402
from aamctl.runs.store import StateStore  # noqa: E402

AAMCTL = [sys.executable, "-m", "aamctl"]


def load_manifests(folder: Path) -> dict:
    """{(kind, name): doc} of every manifest file, data paths made absolute."""
    out = {}
    for f in sorted(folder.glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if not d:
                continue
            if d["kind"] == "Dataset":
                s = d["spec"]
                for key in ("table", "tree", "distanceMatrix"):
                    if s.get(key):
                        s[key] = str((f.parent / s[key]).resolve())
                if s.get("metadata"):
                    s["metadata"]["path"] = str((f.parent / s["metadata"]["path"]).resolve())
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


STOPPED = re.compile(r"^run/(\S+) unchanged \(generation \d+ is (?:Failed|Preempted|Cancelled): 'aamctl resume ",
                     re.M)


def apply(home: Path, docs: list[dict], name: str) -> None:
    """apply --wait; in a work folder used again, runs an interrupted invocation left stopped
    (aamctl reports them unchanged and failed) are resumed from their last checkpoint once."""
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    cmd = [*AAMCTL, "--home", str(home), "apply", "-f", str(path), "--wait"]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    stopped = STOPPED.findall(p.stdout)
    if p.returncode != 0 and stopped:
        for run in stopped:
            print(f"  resuming {run} (stopped in an earlier invocation)", flush=True)
            subprocess.run([*AAMCTL, "--home", str(home), "resume", run], check=True, capture_output=True)
        p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    print(f"  applied {name} in {time.time() - t0:.0f}s", flush=True)


def predictions(home: Path, run: str, ids, target: str) -> np.ndarray:
    """The predictions of `target` by a predict Run's newest generation, in the order of `ids`
    (a work folder used again re-applies a changed predict Run as generation 2, 3...)."""
    import pandas as pd

    row = StateStore(home, create=False).latest_run(run)
    out = pd.read_csv(Path(row["folder"]) / PREDICTIONS, sep="\t", dtype={ID_HEADER: str}, comment="#")
    col = "prediction" if "prediction" in out.columns else f"prediction:{target}"  # several targets
    return out.set_index(ID_HEADER).loc[ids, col].to_numpy(dtype=float)


def ensemble_sizes(y: np.ndarray, member_preds: np.ndarray) -> dict:
    """MAE of each member alone, and per ensemble size m the mean, min and max MAE over every
    subset of m members (their predictions averaged, as a predict Run with initFrom.runs does)."""
    mae = lambda p: float(np.abs(p - y).mean())  # noqa: E731
    n = len(member_preds)
    sizes = {}
    for m in range(1, n + 1):
        v = [mae(member_preds[list(c)].mean(axis=0)) for c in itertools.combinations(range(n), m)]
        sizes[m] = {"mean": float(np.mean(v)), "min": min(v), "max": max(v), "subsets": len(v)}
    return {"single": [mae(p) for p in member_preds], "sizes": sizes}


def metrics(y: np.ndarray, p: np.ndarray) -> dict:
    err = p - y
    ss = ((y - y.mean()) ** 2).sum()
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())),
            "r2": float(1 - (err ** 2).sum() / ss) if ss > 0 else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifests", default=str(ROOT / "manifests"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed of the folds (and of the inner splits)")
    ap.add_argument("--samples", type=int, default=None, help="use a seeded subset of this many samples")
    ap.add_argument("--pretrain-epochs", type=int, default=None)
    ap.add_argument("--finetune-epochs", type=int, default=None)
    ap.add_argument("--only-folds", type=int, default=None, help="run the first N folds only")
    ap.add_argument("--fold", type=int, action="append", default=None,
                    help="run fold K only (1-based; repeat for several): the other folds of one CV in "
                         "another invocation")
    ap.add_argument("--repeat", type=int, default=0,
                    help="training repeat: adds 1000 x this to every run's trainer.seed (same folds); "
                         "run 0, 1, 2 for the spread over seeds")
    ap.add_argument("--members", action="store_true",
                    help="also predict with each ensemble member alone and report the MAE per ensemble size "
                         "(mean over every subset of that many members)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    bad = [k for k in args.fold or [] if not 1 <= k <= args.folds]
    if bad:
        ap.error(f"--fold {bad[0]}: the folds are numbered 1 to {args.folds}")

    import biom
    import pandas as pd
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.model_selection import KFold

    docs = load_manifests(Path(args.manifests))
    runs = {n: d for (k, n), d in docs.items() if k == "Run"}
    # every pretraining of the recipe: one, or several when the ensemble's members start from
    # different pretrainings (each finetune names its own in initFrom.run)
    pres = {n: d for n, d in runs.items() if d["spec"]["stage"] == "pretrain"}
    pre = next(iter(pres.values()))
    pred = next(d for d in runs.values() if d["spec"]["stage"] == "predict")
    base = next((d for d in runs.values() if d["spec"]["stage"] == "baseline"), None)
    # the finetune run(s) the predict Run averages (one, or an ensemble under initFrom.runs)
    init = pred["spec"]["initFrom"]
    fines = [runs[n] for n in (init.get("runs") or [init["run"]])]
    fine = fines[0]
    ds = docs[("Dataset", fine["spec"]["datasetRef"])]
    model = docs[("Model", pre["spec"]["modelRef"])]
    target = fine["spec"].get("target") or ds["spec"]["targets"][0]["name"]

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="aam-quality."))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    home.mkdir(exist_ok=True)
    os.environ.setdefault("AAM_CACHE_DIR", str(work / "cache"))

    table = biom.load_table(ds["spec"]["table"])
    md = pd.read_csv(ds["spec"]["metadata"]["path"], sep="\t", dtype=str)
    idcol = ds["spec"]["metadata"].get("sampleIdColumn") or md.columns[0]
    md = md.set_index(idcol)
    ids = np.array([s for s in table.ids() if s in md.index and md.loc[s, target] not in (None, "")])
    rng = np.random.default_rng(args.seed)
    if args.samples and args.samples < len(ids):
        ids = np.sort(rng.choice(ids, args.samples, replace=False))
    table = table.filter(ids, inplace=False)
    ids = np.array(table.ids())
    y_all = md.loc[ids, target].astype(float).to_numpy()
    counts = table.matrix_data.T.tocsr()
    rel = counts.multiply(1.0 / np.maximum(np.asarray(counts.sum(axis=1)), 1e-12)).tocsr()

    # one pretraining on every sample (no labels)
    ds_all = copy.deepcopy(ds)
    ds_all["metadata"]["name"] = "q-all"
    ds_all["spec"].pop("subsample", None)
    ds_all["spec"]["table"] = str(work / "all.biom")
    with biom.util.biom_open(str(work / "all.biom"), "w") as fh:
        table.to_hdf5(fh, "aam quality")
    # the first pretraining keeps the name q-pre, so work folders of one-pretraining recipes stay valid
    pre_name = {n: "q-pre" if i == 0 else f"q-pre{i + 1}" for i, n in enumerate(pres)}
    pre_docs = []
    for n, d in pres.items():
        pdoc = copy.deepcopy(d)
        pdoc["metadata"]["name"] = pre_name[n]
        pdoc["spec"]["datasetRef"] = "q-all"
        pdoc["spec"].setdefault("trainer", {})["seed"] = pdoc["spec"]["trainer"].get("seed", 42) + 1000 * args.repeat
        if args.pretrain_epochs:
            pdoc["spec"]["trainer"]["epochs"] = args.pretrain_epochs
        pre_docs.append(pdoc)
    models = [docs[("Model", m)] for m in dict.fromkeys(d["spec"]["modelRef"] for d in pres.values())]
    print(f"pretraining {', '.join(pres)} on {len(ids)} samples", flush=True)
    t_start = time.time()
    for pdoc in pre_docs:  # one at a time, like the finetunes
        apply(home, [ds_all, *models, pdoc], "pretrain" if pdoc["metadata"]["name"] == "q-pre" else pdoc["metadata"]["name"])
    t_pre = time.time() - t_start

    folds = list(enumerate(KFold(args.folds, shuffle=True, random_state=args.seed).split(ids)))
    if args.only_folds:
        folds = folds[:args.only_folds]
    if args.fold:
        folds = [(k, f) for k, f in folds if k + 1 in args.fold]
    rows = []
    for k, (tr, te) in folds:
        print(f"fold {k + 1} of {args.folds}: {len(tr)} training, {len(te)} held out", flush=True)
        # the fold's training samples only; the recipe's own split (Dataset and Run spec.split) makes
        # the inner validation split for early stopping and the best checkpoint
        ds_k = copy.deepcopy(ds_all)
        ds_k["metadata"]["name"] = f"q-f{k}"
        ds_k["spec"]["table"] = str(work / f"f{k}-train.biom")
        with biom.util.biom_open(str(work / f"f{k}-train.biom"), "w") as fh:
            table.filter(ids[tr], inplace=False).to_hdf5(fh, "aam quality")
        held = copy.deepcopy(ds_all)
        held["metadata"]["name"] = f"q-held{k}"
        held["spec"]["table"] = str(work / f"f{k}-held.biom")
        held["spec"].pop("tree", None)
        with biom.util.biom_open(str(work / f"f{k}-held.biom"), "w") as fh:
            table.filter(ids[te], inplace=False).to_hdf5(fh, "aam quality")
        fts = []
        for j, f in enumerate(fines):
            ft = copy.deepcopy(f)
            ft["metadata"]["name"] = f"q-fine{k}-{j}"
            ft["spec"]["datasetRef"] = f"q-f{k}"
            ft["spec"]["initFrom"] = dict(ft["spec"].get("initFrom") or {}, run=pre_name[f["spec"]["initFrom"]["run"]])
            ft["spec"].setdefault("trainer", {})["seed"] = ft["spec"]["trainer"].get("seed", 42) + 1000 * args.repeat
            if args.finetune_epochs:
                ft["spec"]["trainer"]["epochs"] = args.finetune_epochs
            fts.append(ft)
        pr = copy.deepcopy(pred)
        pr["metadata"]["name"] = f"q-pred{k}"
        pr["spec"]["datasetRef"] = f"q-held{k}"
        names = [ft["metadata"]["name"] for ft in fts]
        pr["spec"]["initFrom"] = {"which": init.get("which", "best"), **({"runs": names} if len(names) > 1 else {"run": names[0]})}
        t0 = time.time()
        # one finetune run at a time: on a small CPU, runs side by side only fight over the cores
        for ft in fts:
            apply(home, [ds_all, *models, *pre_docs, ds_k, ft], ft["metadata"]["name"])
        apply(home, [ds_all, *models, *pre_docs, ds_k, held, *fts, pr], f"fold{k}")
        t_fold = time.time() - t0
        p_aam = predictions(home, f"q-pred{k}", ids[te], target)
        y = y_all[te]
        trees = (base or {}).get("spec", {}).get("baseline", {}).get("trees", 500)
        rf = RandomForestRegressor(n_estimators=trees, max_features="sqrt", n_jobs=-1, random_state=args.seed)
        rf.fit(rel[tr], y_all[tr])
        rows.append({"fold": k, "aam": metrics(y, p_aam), "rf": metrics(y, rf.predict(rel[te])),
                     "mean": metrics(y, np.full(len(te), y_all[tr].mean())), "seconds": round(t_fold, 1)})
        r = rows[-1]
        print(f"  MAE  aam {r['aam']['mae']:.2f}  rf {r['rf']['mae']:.2f}  mean {r['mean']['mae']:.2f}", flush=True)
        if args.members and len(fts) > 1:
            singles = []
            for j, ft in enumerate(fts):
                pm = copy.deepcopy(pr)
                pm["metadata"]["name"] = f"q-pm{k}-{j}"
                pm["spec"]["initFrom"] = {"which": init.get("which", "best"), "run": ft["metadata"]["name"]}
                singles.append(pm)
            apply(home, [ds_all, *models, *pre_docs, ds_k, held, *fts, *singles], f"members{k}")
            member_preds = np.array([predictions(home, pm["metadata"]["name"], ids[te], target) for pm in singles])
            r["members"] = ensemble_sizes(y, member_preds)
            print("  members alone: " + " ".join(f"{v:.2f}" for v in r["members"]["single"]), flush=True)

    print()
    print(f"{len(ids)} samples, {len(rows)} of {args.folds} folds (seed {args.seed}); pretraining {t_pre:.0f}s; "
          f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print("| model | MAE | RMSE | R2 |")
    print("| --- | --- | --- | --- |")
    recipe = os.path.relpath(args.manifests, ROOT) if Path(args.manifests).resolve().is_relative_to(ROOT) else args.manifests
    for key, label in (("aam", f"AAM recipe ({recipe})"), ("rf", "random forest, 500 trees"),
                       ("mean", "predict the training mean")):
        cells = []
        for m in ("mae", "rmse", "r2"):
            v = np.array([r[key][m] for r in rows])
            cells.append(f"{v.mean():.2f} +- {v.std():.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    ratio = np.mean([r["aam"]["mae"] for r in rows]) / np.mean([r["rf"]["mae"] for r in rows])
    print(f"AAM / RF MAE ratio: {ratio:.3f}")
    with_members = [r for r in rows if "members" in r]
    if with_members:
        print()
        print("MAE by ensemble size (mean over every subset of that many members; min-max in brackets)")
        print("| members | " + " | ".join(f"fold {r['fold'] + 1}" for r in with_members) + " | mean |")
        print("| --- " * (len(with_members) + 2) + "|")
        for m in with_members[0]["members"]["sizes"]:
            cells = [r["members"]["sizes"][m] for r in with_members]
            print(f"| {m} | " + " | ".join(f"{c['mean']:.2f} ({c['min']:.2f}-{c['max']:.2f})" for c in cells)
                  + f" | {np.mean([c['mean'] for c in cells]):.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"folds": rows, "ratio": ratio, "pretrain_seconds": t_pre,
                                               "samples": len(ids), "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
