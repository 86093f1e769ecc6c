"""What a checkpoint holds and how it is written and read back: the weights (the average under
trainer.ema, the raw ones beside them), optimizer and schedule state, the loop's position, every
rank's random state, and what predict needs besides weights (checkpoint_meta)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from aam_runtime.bundle import DESCRIPTION, BundleError, is_bundle, read_bundle
from aam_runtime.config import RunConfig
from aam_runtime.console import log
from aam_runtime.data.prepare import Data
from aam_runtime.data.table import DataError
from aam_runtime.model import is_head_key, sample_positions
from aam_runtime.runfolder import RunFolder, atomic_write, checkpoint_name


def checkpoint_meta(cfg: RunConfig, data: Data, parts: list | None = None) -> dict:
    """What predict needs besides weights: model spec, tokenization, target scaling, classes
    (with several targets, one entry per target with its output block)."""
    meta = {"stage": cfg.stage, "run": cfg.name, "model_spec": cfg.model, "max_bp": int(data.enc.tokens.shape[1] - 1),
            "max_asvs": sample_positions(cfg.dataset["maxAsvsPerSample"]), "target": data.target_name,
            "target_type": data.target_type, "norm": data.norm, "classes": list(data.classes),
            "cat_columns": list(data.cat_columns), "cat_levels": [list(x) for x in data.cat_levels]}
    if parts:
        meta["targets"] = [{"name": p.name, "type": p.view.target_type, "norm": p.view.norm,
                            "classes": list(p.view.classes), "loss": p.loss.kind, "quantiles": list(p.loss.quantiles),
                            "weight": p.weight, "start": p.start, "stop": p.stop} for p in parts]
        meta["n_outputs"] = parts[-1].stop
    return meta


def get_rng() -> dict:
    """This process's random states, as tensors and plain values only (a checkpoint must load
    with torch.load(weights_only=True))."""
    import random

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng(r: dict) -> None:
    import random

    torch.set_rng_state(r["torch"])
    n = r["numpy"]
    if isinstance(n, dict):
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    else:  # a checkpoint written before the states were plain values
        np.random.set_state(n)
    random.setstate(r["python"])
    if r.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(r["cuda"])


def load_checkpoint(path: str | Path, state_runs: Path | None) -> dict:
    """A checkpoint's contents, unpickling nothing but tensors and plain data (torch's
    weights_only loader): a file someone else made can run code when a full unpickle reads it.
    A model bundle (a folder: bundle.py) is read through safetensors and JSON. A checkpoint from
    the run folders of this state (state_runs: <home>/runs) that the safe loader
    cannot read was written before aam saved only plain values; that one alone is read in full."""
    import pickle

    p = Path(path)
    if not p.exists():
        raise DataError(f"checkpoint not found: {p} (did the run it comes from succeed?)")
    if is_bundle(p):  # aamctl export run --bundle: safetensors and JSON
        try:
            return read_bundle(p)
        except BundleError as exc:
            raise DataError(str(exc)) from None
    if p.is_dir():
        raise DataError(f"{p} is a folder but not a model bundle (no {DESCRIPTION}); name a checkpoint file or a "
                        "folder written by aamctl export run NAME --bundle")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if state_runs is not None and p.resolve().is_relative_to(state_runs.resolve()):
            return _load_own(p)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p}: refused: this checkpoint holds more than tensors and plain data, and loading it "
                        f"could run code from the file ({first[:160]}); aam reads such a file only from its own run "
                        "folders. Start from a checkpoint aam wrote (initFrom.run in this state, or a copy of "
                        "a run's checkpoints/best.pt)") from None
    except Exception as exc:
        raise DataError(f"{p}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None


def _load_own(p: Path) -> dict:
    try:
        return torch.load(p, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise DataError(f"{p}: cannot read checkpoint ({type(exc).__name__}: {exc})") from None


def save_checkpoint(acc, folder: RunFolder, o, state: dict, which: str, meta: dict) -> None:
    """Write checkpoint `which` (last, best) of a fit (`o`: its Optimisation). Every rank calls
    it: gathering the random states and, under FSDP, the weights are collectives."""
    from accelerate.utils import DistributedType, gather_object

    rngs = gather_object([get_rng()])
    weights = acc.get_state_dict(o.wrapped)
    fsdp = acc.distributed_type == DistributedType.FSDP
    if not acc.is_main_process:
        acc.wait_for_everyone()
        return
    # Under FSDP each rank holds a shard of the optimizer state; rank 0's alone would be wrong,
    # so an FSDP resume restores weights, schedule and data position and restarts AdamW's moments.
    payload = {"model": weights, "optimizer": None if fsdp else o.optimizer.state_dict(),
               "scheduler": o.scheduler.state_dict(), "state": dict(state), "rng": rngs, "meta": meta, "format": 1}
    if o.ema is not None:
        # "model" is what every reader of a checkpoint uses (predict, initFrom): the average;
        # the raw weights go on training after a resume
        payload.update(model=o.ema.module.state_dict(), train_model=weights, ema_steps=int(o.ema.n_averaged))
    # Serialised in memory, then written by Python: torch.save straight to disk reports a full
    # disk as "unexpected pos" and loses the errno; this way ENOSPC reaches the run's status.
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(folder.path / checkpoint_name(which), buf.getbuffer())
    folder.event("checkpointed", which=which, step=state["step"], epoch=state["epoch"])
    acc.wait_for_everyone()


def restore_checkpoint(o, resume: dict, state: dict, rank: int, folder: RunFolder) -> None:
    """Load a resumed checkpoint's optimizer and schedule state, the loop's position and this
    rank's random state."""
    if resume.get("optimizer") is not None:
        o.optimizer.load_state_dict(resume["optimizer"])
    else:
        log("resume: the checkpoint has no optimizer state (FSDP); AdamW moments start afresh")
    o.scheduler.load_state_dict(resume["scheduler"])
    state.update(resume["state"])
    set_rng(resume["rng"][rank] if rank < len(resume["rng"]) else resume["rng"][0])
    folder.event("resumed", step=state["step"], epoch=state["epoch"])
    log(f"resumed from step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")


def load_starting_weights(model, init_state: dict, fresh_head: bool, source: str) -> None:
    """initFrom: load the tensors of the starting checkpoint that fit this model by name and
    shape; with fresh_head the target head starts afresh (weights from a pretrain run)."""
    own = model.state_dict()
    usable = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape
              and not (fresh_head and is_head_key(k))}
    model.load_state_dict(usable, strict=False)
    log(f"init: loaded {len(usable)} tensors from {source}; {len(own) - len(usable)} new")
