"""The training engine: one plain recipe per stage, steps visible top to bottom.

pretrain  : UniFrac pairwise loss over the global batch + masked-nucleotide loss.
finetune  : target head on the (optionally frozen) pretrained encoder.
predict   : predictions.tsv from a finetuned checkpoint on any Dataset.
baseline  : random forest on relative abundances, same split, same metrics.
"""
from __future__ import annotations

import io
import math
import signal
import time
from dataclasses import dataclass, field
import numpy as np
import torch
import torch.nn.functional as F

from . import metrics as M
from .config import RunConfig
from .data import batches as B
from .data import table as T
from .data.split import make_split
from .errors import HardwareMissing
from .data.unifrac import DistanceLookup, compute as compute_unifrac
from .model import AAM, choose_attention_backend, pairwise_unifrac_loss, sharded_unifrac_loss
from .runfolder import SPLIT, RunFolder, atomic_write, checkpoint_name

HIGHER_IS_BETTER = {"r2", "accuracy", "f1", "auroc", "nuc_accuracy"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Preempted(Exception):
    pass


# ---------------------------------------------------------------- data

@dataclass
class Data:
    enc: B.Encoded
    train: np.ndarray
    val: np.ndarray
    lookup: DistanceLookup | None = None
    target_name: str | None = None
    target_type: str | None = None
    norm: dict = field(default_factory=dict)  # mean/std for regression
    classes: list = field(default_factory=list)
    cat_levels: list = field(default_factory=list)  # per categorical column: its levels
    cat_columns: list = field(default_factory=list)


def prepare_data(cfg: RunConfig, folder: RunFolder, stage: str, ckpt_meta: dict | None = None) -> Data:
    ds = cfg.dataset
    target = cfg.target_name()
    ttype = cfg.target_type(target)
    need = [target] if (stage in ("finetune", "baseline") and target) else []
    prepared = T.load(ds, need_targets=need, seed=cfg.seed)
    log(f"data: {prepared.n_samples} samples, {len(prepared.asv_ids)} ASVs; report {prepared.report}")
    max_bp = (ckpt_meta or {}).get("max_bp", ds["maxBp"])
    enc = B.encode(prepared, max_bp, ds["maxAsvsPerSample"], ds["asvSelection"], seed=cfg.seed)
    if enc.non_acgt_bases:
        log(f"warning: {enc.non_acgt_bases} bases other than A/C/G/T became padding (spec.nonACGT: pad)")
    data = Data(enc=enc, train=np.array([], dtype=np.int64), val=np.array([], dtype=np.int64),
                target_name=target, target_type=ttype)
    # categoricals: codes from training levels (0 = unknown)
    cat_cols = ds.get("categoricalColumns", []) if stage in ("finetune", "predict") else []
    cat_cols = [c for c in cat_cols if c != target]
    if stage == "predict" and ckpt_meta is not None:
        cat_cols = ckpt_meta.get("cat_columns", [])
    if stage == "predict":
        data.train = np.array([], dtype=np.int64)
        data.val = np.arange(prepared.n_samples)
    else:
        data.train, data.val = make_split(cfg.dataset, prepared, ttype, target)
        lines = ["sample_id\tsplit"] + [f"{prepared.sample_ids[i]}\ttrain" for i in data.train] + \
                [f"{prepared.sample_ids[i]}\tvalidation" for i in data.val]
        atomic_write(folder.file(SPLIT), "\n".join(lines) + "\n")
    if cat_cols:
        levels = (ckpt_meta or {}).get("cat_levels") or [
            sorted(set(prepared.metadata[c].iloc[data.train])) for c in cat_cols]
        codes = np.zeros((prepared.n_samples, len(cat_cols)), dtype=np.int64)
        for j, (c, lv) in enumerate(zip(cat_cols, levels)):
            lookup = {v: i + 1 for i, v in enumerate(lv)}
            codes[:, j] = [lookup.get(v, 0) for v in prepared.metadata[c]] if c in prepared.metadata else 0
        enc.categoricals = codes
        data.cat_levels = levels
    data.cat_columns = cat_cols
    if target and (stage in ("finetune", "baseline") or (stage == "predict" and target in prepared.metadata)):
        values = prepared.metadata[target]
        if ttype == "classification":
            data.classes = (ckpt_meta or {}).get("classes") or sorted(set(values.iloc[data.train]))
            idx = {c: i for i, c in enumerate(data.classes)}
            enc.targets = np.array([idx.get(v, -1) for v in values], dtype=np.int64)
        else:
            y = values.astype(float).to_numpy(dtype=np.float32) if stage != "predict" else \
                np.array([_to_float(v) for v in values], dtype=np.float32)
            if ckpt_meta and "norm" in ckpt_meta:
                data.norm = ckpt_meta["norm"]
            elif cfg.target_normalize(target) == "zscore":
                tr = y[data.train]
                data.norm = {"mean": float(tr.mean()), "std": float(tr.std() or 1.0)}
            else:
                data.norm = {"mean": 0.0, "std": 1.0}
            enc.targets = ((y - data.norm["mean"]) / data.norm["std"]).astype(np.float32)
    elif stage == "predict" and ckpt_meta is not None:
        data.classes = ckpt_meta.get("classes", [])
        data.norm = ckpt_meta.get("norm", {})
    if stage == "pretrain" and cfg.loss_weight("unifrac") > 0:
        if ds.get("distanceMatrix"):
            path = ds["distanceMatrix"]
        else:
            t0 = time.time()
            path = compute_unifrac(prepared.sample_ids, prepared.asv_ids, prepared.counts, ds["tree"],
                                   ds["unifrac"]["metric"], ds["unifrac"]["backend"])
            log(f"unifrac: {ds['unifrac']['metric']} matrix ready in {time.time() - t0:.1f}s ({path})")
        data.lookup = DistanceLookup(path, prepared.sample_ids)
    return data


def _to_float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# ---------------------------------------------------------------- trainer

def make_accelerator(accelerator: str, precision: str):
    """The Accelerator every stage uses. Heads a stage does not train (the nucleotide head with
    its weight at 0, the count head) get no gradient: without find_unused_parameters DDP would
    wait for them forever and silently skip the gradient all-reduce."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=accelerator == "cpu", mixed_precision=precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


class Trainer:
    def __init__(self, cfg: RunConfig, folder: RunFolder):
        self.cfg = cfg
        self.folder = folder
        self.stage = cfg.stage
        tr = cfg.trainer
        hw = cfg.hardware
        if hw["accelerator"] in ("cuda", "rocm") and not torch.cuda.is_available():
            build = "ROCm" if getattr(torch.version, "hip", None) else ("CUDA" if torch.version.cuda else "CPU-only")
            raise HardwareMissing(f"HardwareProfile '{cfg.spec['hardwareRef']}' expects {hw['accelerator']} devices, but "
                              f"torch {torch.__version__} ({build} build) sees none here; run on a GPU node "
                              "(executor slurm), or use hardwareRef: cpu")
        self.acc = make_accelerator(hw["accelerator"], cfg.precision())
        self.main = self.acc.is_main_process
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.device = self.acc.device
        torch.manual_seed(tr["seed"] + self.rank)
        np.random.seed(tr["seed"])
        if hw["accelerator"] == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.stop_signal = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.stop_signal = signum
        log(f"received signal {signum}: will checkpoint and stop after this step")

    # -- model

    def build(self, data: Data, init_state: dict | None):
        ms = self.cfg.model
        n_out = 0
        if self.stage in ("finetune", "predict"):
            n_out = len(data.classes) if data.target_type == "classification" else 1
        cat_sizes = [len(lv) for lv in data.cat_levels]
        model = AAM(ms, max_bp=data.enc.tokens.shape[1] - 1, n_outputs=n_out, categorical_sizes=cat_sizes,
                    max_asvs=max(1024, self.cfg.dataset["maxAsvsPerSample"]))
        hw = self.cfg.hardware
        requested = ms["attentionBackend"] if ms["attentionBackend"] != "auto" else hw["attentionBackend"]
        model.attention_backend = choose_attention_backend(requested, hw["accelerator"], hw.get("rocmVersion"),
                                                           getattr(torch.version, "hip", None))
        if init_state is not None:
            own = model.state_dict()
            usable = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape
                      and not (self.stage == "finetune" and _is_head_key(k) and not self.cfg.init_is_finetune())}
            missing = [k for k in own if k not in usable]
            model.load_state_dict(usable, strict=False)
            log(f"init: loaded {len(usable)} tensors from {self.cfg.init_checkpoint}; {len(missing)} new")
        if self.cfg.spec.get("freezeBase") and self.stage == "finetune":
            for p in model.base_parameters():
                p.requires_grad_(False)
        return model

    # -- main loop

    def fit(self, data: Data, init_state=None, resume: dict | None = None):
        cfg, tr, acc = self.cfg, self.cfg.trainer, self.acc
        model = self.build(data, init_state if resume is None else None)
        if resume is not None:  # before prepare: FSDP shards (and DDP broadcasts) what is loaded here
            model.load_state_dict(resume["model"])
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": tr["weightDecay"]},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=tr["learningRate"])
        bs, accum = tr["batchSize"], tr["gradientAccumulation"]
        n_batches = len(B.epoch_batches(len(data.train), bs, self.world, tr["seed"], 0))
        if n_batches == 0:
            raise T.DataError(f"{len(data.train)} training samples are fewer than one batch of "
                              f"{bs} x {self.world} processes; lower spec.trainer.batchSize")
        steps_per_epoch = math.ceil(n_batches / accum)
        total = tr["maxSteps"] or steps_per_epoch * tr["epochs"]
        warm = min(tr["warmupSteps"], max(1, int(0.1 * total))) if tr["warmupSteps"] else 0
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(tr["scheduler"], warm, total))
        self.meta = checkpoint_meta(self.cfg, data)
        model, opt = acc.prepare(model, opt)
        self._wrapped = model
        if cfg.compile_enabled():
            model = torch.compile(model, dynamic=True)
        raw = acc.unwrap_model(model)
        metric_name = tr["earlyStopping"]["metric"]
        higher = metric_name in HIGHER_IS_BETTER
        state = {"epoch": 0, "batch": 0, "step": 0, "best": None, "best_step": None, "bad_epochs": 0,
                 "history": []}
        if resume is not None:
            if resume.get("optimizer") is not None:
                opt.load_state_dict(resume["optimizer"])
            else:
                log("resume: the checkpoint has no optimizer state (FSDP); AdamW moments start afresh")
            sched.load_state_dict(resume["scheduler"])
            state.update(resume["state"])
            _set_rng(resume["rng"][self.rank] if self.rank < len(resume["rng"]) else resume["rng"][0])
            self.folder.event("resumed", step=state["step"], epoch=state["epoch"])
            log(f"resumed from step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")
        self.folder.update_status(phase="Running", stage=self.stage, total_steps=total, world_size=self.world,
                                  steps_per_epoch=steps_per_epoch, device=str(self.device),
                                  attention_backend=raw.attention_backend, precision=cfg.precision())
        log(f"train: {len(data.train)} samples, val {len(data.val)}, {steps_per_epoch} steps/epoch, "
            f"{total} steps, world {self.world}, device {self.device}, params {sum(p.numel() for p in raw.parameters()):,}")
        every = tr["logEverySteps"]
        ck_every = tr["checkpoint"]["everySteps"]
        window = {"t": time.time(), "samples": 0}
        running: dict[str, list] = {}
        done = state["step"] >= total
        while not done:
            if not tr["maxSteps"] and state["epoch"] >= tr["epochs"]:
                break
            epoch = state["epoch"]
            if self.cfg.dataset["asvSelection"] == "random":
                rng = np.random.default_rng([tr["seed"], epoch])
                data.enc.sel_idx, data.enc.sel_cnt = T.select_asvs(data.enc.prepared.counts,
                                                                   self.cfg.dataset["maxAsvsPerSample"], "random", rng)
            gbatches = B.epoch_batches(len(data.train), bs, self.world, tr["seed"], epoch)
            model.train()
            for bi in range(state["batch"], len(gbatches)):
                rows = data.train[B.shard(gbatches[bi], self.rank, self.world)]
                batch = B.to_torch(B.collate_numpy(data.enc, rows), self.device)
                gen = torch.Generator().manual_seed(tr["seed"] * 1_000_003 + epoch * 100_003 + bi)
                sync = (bi + 1) % accum == 0 or bi + 1 == len(gbatches)
                ctx = acc.no_sync(model) if not sync and self.world > 1 else _null()
                with ctx:
                    with acc.autocast():
                        losses = self._losses(model, batch, data, gen)
                    acc.backward(losses["loss"] / accum)
                for k, v in losses.items():
                    running.setdefault(k, []).append(float(v.detach()))
                window["samples"] += len(rows) * self.world
                if not sync:
                    continue
                state["batch"] = bi + 1
                if tr["gradientClip"]:
                    acc.clip_grad_norm_(model.parameters(), tr["gradientClip"])
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                state["step"] += 1
                step = state["step"]
                if step % every == 0 or step == total:
                    dt = max(time.time() - window["t"], 1e-9)
                    row = {k: float(np.mean(v)) for k, v in running.items()}
                    row.update(step=step, epoch=epoch, lr=sched.get_last_lr()[0], samples_per_s=window["samples"] / dt)
                    self._log_train(row, total)
                    running.clear()
                    window = {"t": time.time(), "samples": 0}
                if step >= total:
                    done = True
                stop = self._should_stop()
                epoch_end = state["batch"] >= len(gbatches)
                if (step % ck_every == 0 or stop) and not epoch_end:
                    self._checkpoint(raw, opt, sched, state, "last")
                if stop and not epoch_end:
                    raise Preempted()
                if done:
                    break
            epoch_end = state["batch"] >= len(gbatches)
            if epoch_end:
                state["epoch"] += 1
                state["batch"] = 0
            final = done or (not tr["maxSteps"] and state["epoch"] >= tr["epochs"])
            if (epoch_end and state["epoch"] % tr["validateEvery"] == 0) or final:
                vm = self.validate(model, data)
                value = vm.get(metric_name, vm.get("val_loss"))
                improved = state["best"] is None or (value > state["best"] if higher else value < state["best"])
                vm.update(step=state["step"], epoch=state["epoch"], split="validation")
                if improved:
                    state["best"], state["best_step"], state["bad_epochs"] = value, state["step"], 0
                else:
                    state["bad_epochs"] += 1
                self._log_val(vm, metric_name, state)
                state["history"].append(vm)
                if improved:
                    self._checkpoint(raw, opt, sched, state, "best")
                patience = tr["earlyStopping"]["patience"]
                if patience and state["bad_epochs"] >= patience:
                    log(f"early stopping: {metric_name} did not improve for {patience} validations")
                    done = True
            self._checkpoint(raw, opt, sched, state, "last")
            if self._should_stop() and not done:
                raise Preempted()
        return model, state

    def _should_stop(self) -> bool:
        flag = 1.0 if (self.stop_signal is not None or self.folder.preempt_requested()) else 0.0
        if self.world > 1:
            t = torch.tensor([flag], device=self.device)
            t = self.acc.reduce(t, reduction="sum")
            flag = float(t.item())
        return flag > 0

    def _losses(self, model, batch, data: Data, gen) -> dict:
        cfg = self.cfg
        w = cfg.trainer["lossWeights"]
        out: dict = {}
        if self.stage == "pretrain":
            res = model(batch, mask_nucleotides=w["nucleotide"] > 0, generator=gen)
            loss = torch.zeros((), device=self.device)
            if w["unifrac"] > 0 and data.lookup is not None:
                target = torch.from_numpy(data.lookup.sub(self._global_rows(batch["rows"]))).to(self.device)
                surrogate, uf, mae = unifrac_loss_global(res["embedding"], target, self.acc)
                out["unifrac_loss"], out["unifrac_mae"] = uf.detach(), mae
                loss = loss + w["unifrac"] * surrogate
            if w["nucleotide"] > 0 and "nuc_logits" in res and res["nuc_logits"].numel():
                nl = F.cross_entropy(res["nuc_logits"].float(), res["nuc_targets"])
                out["nuc_loss"] = nl
                out["nuc_accuracy"] = (res["nuc_logits"].argmax(-1) == res["nuc_targets"]).float().mean().detach()
                loss = loss + w["nucleotide"] * nl
            if w["count"] > 0:
                cl = F.mse_loss(res["count_pred"][batch["mask"]].float(), batch["log_counts"][batch["mask"]])
                out["count_loss"] = cl
                loss = loss + w["count"] * cl
        else:
            res = model(batch, mask_nucleotides=w["nucleotideWhenFinetuning"] > 0, generator=gen, need_target=True)
            tl = self._target_loss(res["target"], batch["targets"], data)
            out["target_loss"] = tl
            loss = w["target"] * tl
            if w["nucleotideWhenFinetuning"] > 0 and "nuc_logits" in res and res["nuc_logits"].numel():
                nl = F.cross_entropy(res["nuc_logits"].float(), res["nuc_targets"])
                out["nuc_loss"] = nl
                loss = loss + w["nucleotideWhenFinetuning"] * nl
        out["loss"] = loss
        return out

    def _global_rows(self, rows: torch.Tensor) -> np.ndarray:
        """Dataset rows of the whole global batch, in rank order."""
        if self.world > 1:
            rows = self.acc.gather(rows)
        return rows.cpu().numpy()

    def _target_loss(self, pred, y, data: Data):
        if data.target_type == "classification":
            return F.cross_entropy(pred.float(), y)
        p = pred.float().squeeze(-1)
        kind = self.cfg.model["targetHead"]["loss"]
        if kind == "mse":
            return F.mse_loss(p, y)
        if kind == "mae":
            return F.l1_loss(p, y)
        return F.huber_loss(p, y)

    @torch.no_grad()
    def validate(self, model, data: Data) -> dict:
        """Validation over every rank's share; metrics computed on the gathered rows."""
        from accelerate.utils import gather_object

        model.eval()
        bs = self.cfg.trainer["batchSize"]
        mine = data.val[self.rank::self.world]
        w = self.cfg.trainer["lossWeights"]
        rows_out, pred_out, losses = [], [], {}
        gen = torch.Generator().manual_seed(12345)
        for i in range(0, len(mine), bs):
            rows = mine[i:i + bs]
            batch = B.to_torch(B.collate_numpy(data.enc, rows), self.device)
            with self.acc.autocast():
                if self.stage == "pretrain":
                    res = model(batch, mask_nucleotides=w["nucleotide"] > 0, generator=gen)
                    if data.lookup is not None and len(rows) >= 2:
                        target = torch.from_numpy(data.lookup.sub(rows)).to(self.device)
                        uf, mae = pairwise_unifrac_loss(res["embedding"], target)
                        losses.setdefault("unifrac_loss", []).append((float(uf), len(rows)))
                        losses.setdefault("unifrac_mae", []).append((float(mae), len(rows)))
                    if "nuc_logits" in res and res["nuc_logits"].numel():
                        nl = F.cross_entropy(res["nuc_logits"].float(), res["nuc_targets"])
                        acc_ = (res["nuc_logits"].argmax(-1) == res["nuc_targets"]).float().mean()
                        losses.setdefault("nuc_loss", []).append((float(nl), len(rows)))
                        losses.setdefault("nuc_accuracy", []).append((float(acc_), len(rows)))
                else:
                    res = model(batch, need_target=True)
                    tl = self._target_loss(res["target"], batch["targets"], data)
                    losses.setdefault("target_loss", []).append((float(tl), len(rows)))
                    pred_out.append(res["target"].float().cpu().numpy())
            rows_out.append(rows)
        gathered = gather_object([{"rows": rows_out, "pred": pred_out, "losses": losses}])
        model.train()
        all_losses: dict[str, list] = {}
        rows_all, preds_all = [], []
        for g in gathered:
            for k, v in g["losses"].items():
                all_losses.setdefault(k, []).extend(v)
            rows_all.extend(g["rows"])
            preds_all.extend(g["pred"])
        out = {k: float(np.average([a for a, _ in v], weights=[n for _, n in v])) for k, v in all_losses.items()}
        if self.stage == "pretrain":
            out["val_loss"] = w["unifrac"] * out.get("unifrac_loss", 0.0) + w["nucleotide"] * out.get("nuc_loss", 0.0)
        else:
            out["val_loss"] = out.get("target_loss", 0.0)
            rows = np.concatenate(rows_all) if rows_all else np.array([], dtype=np.int64)
            pred = np.concatenate(preds_all) if preds_all else np.zeros((0, 1))
            y = data.enc.targets[rows]
            out.update(target_metrics(pred, y, data))
            self._last_val = (rows, pred, y)
        return out

    # -- outputs

    def _log_train(self, row: dict, total: int):
        if not self.main:
            return
        self.folder.metric(split="train", **row)
        parts = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k not in ("step", "epoch", "lr", "samples_per_s"))
        log(f"step {row['step']}/{total} epoch {row['epoch']} {parts} lr={row['lr']:.2e} "
            f"{row['samples_per_s']:.1f} samples/s")
        self.folder.update_status(epoch=row["epoch"], step=row["step"], throughput=row["samples_per_s"],
                                  last_metrics={k: v for k, v in row.items() if k not in ("step", "epoch")})
        self.cfg.wandb_log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])

    def _log_val(self, vm: dict, metric_name: str, state: dict):
        if not self.main:
            return
        self.folder.metric(**vm)
        parts = " ".join(f"{k}={v:.4f}" for k, v in vm.items() if isinstance(v, float))
        log(f"validation epoch {vm['epoch']} step {vm['step']}: {parts}")
        self.folder.update_status(epoch=vm["epoch"], step=vm["step"], val_metrics=vm,
                                  best_metric={"name": metric_name, "value": state["best"], "step": state["best_step"]})
        self.cfg.wandb_log({f"val/{k}": v for k, v in vm.items() if isinstance(v, (int, float)) and k != "step"},
                           step=vm["step"])

    def _checkpoint(self, raw, opt, sched, state, which: str):
        from accelerate.utils import DistributedType, gather_object

        rngs = gather_object([_get_rng()])
        weights = self.acc.get_state_dict(self._wrapped)  # a collective under FSDP: every rank calls it
        fsdp = self.acc.distributed_type == DistributedType.FSDP
        if not self.main:
            self.acc.wait_for_everyone()
            return
        # Under FSDP each rank holds a shard of the optimizer state; rank 0's alone would be wrong,
        # so an FSDP resume restores weights, schedule and data position and restarts AdamW's moments.
        payload = {"model": weights, "optimizer": None if fsdp else opt.state_dict(),
                   "scheduler": sched.state_dict(), "state": dict(state), "rng": rngs, "meta": self.meta,
                   "format": 1}
        path = self.folder.path / checkpoint_name(which)
        # Serialised in memory, then written by Python: torch.save straight to disk reports a full
        # disk as "unexpected pos" and loses the errno; this way ENOSPC reaches the run's status.
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write(path, buf.getbuffer())
        self.folder.event("checkpointed", which=which, step=state["step"], epoch=state["epoch"])
        self.acc.wait_for_everyone()


def checkpoint_meta(cfg: RunConfig, data: Data) -> dict:
    """What predict needs besides weights: model spec, tokenization, target scaling, classes."""
    return {"stage": cfg.stage, "run": cfg.name, "model_spec": cfg.model, "max_bp": int(data.enc.tokens.shape[1] - 1),
            "max_asvs": max(1024, cfg.dataset["maxAsvsPerSample"]), "target": data.target_name,
            "target_type": data.target_type, "norm": data.norm, "classes": list(data.classes),
            "cat_columns": list(data.cat_columns), "cat_levels": [list(x) for x in data.cat_levels]}


def _is_head_key(k: str) -> bool:
    return k.split(".")[0] in ("tgt", "tgt_pool", "tgt_ln", "cat_embs", "cat_proj", "cat_gate", "out",
                               "out_scale", "out_bias")


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def unifrac_loss_global(emb: torch.Tensor, target: torch.Tensor, acc) -> tuple:
    """(tensor to backpropagate, global UniFrac loss, global MAE) for this rank's embeddings."""
    if acc.num_processes == 1:
        loss, mae = pairwise_unifrac_loss(emb, target)
        return loss, loss, mae
    gathered = acc.gather(emb.detach())
    offset = acc.process_index * emb.shape[0]  # equal shards: training batches drop the last partial one
    return sharded_unifrac_loss(emb, gathered, offset, target, acc.num_processes)


def _lr_lambda(kind: str, warm: int, total: int):
    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def _get_rng() -> dict:
    import random
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng(r: dict) -> None:
    import random
    torch.set_rng_state(r["torch"])
    np.random.set_state(r["numpy"])
    random.setstate(r["python"])
    if r.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(r["cuda"])


def target_metrics(pred: np.ndarray, y: np.ndarray, data: Data) -> dict:
    if data.target_type == "classification":
        ok = y >= 0
        return M.classification(y[ok], pred[ok], len(data.classes))
    p = pred.reshape(-1) * data.norm["std"] + data.norm["mean"]
    t = y * data.norm["std"] + data.norm["mean"]
    ok = np.isfinite(t)
    return M.regression(t[ok], p[ok])
