"""The training engine: a fit loop of named steps, and one objective per training stage.

    fit = set up optimisation -> (train an epoch -> validate -> checkpoint)* -> FitResult

PretrainObjective: UniFrac distances over the global batch + masked nucleotides (+ counts).
FinetuneObjective: the target (+ masked nucleotides if weighted), metrics on the gathered rows.
stages.py reads the recipes top to bottom; data preparation lives in data/prepare.py, the losses
in losses.py, the network in model.py.
"""
from __future__ import annotations

import contextlib
import io
import math
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch

from aam_runtime import autobatch
from aam_runtime import losses as L
from aam_runtime import metrics as M
from aam_runtime.config import RunConfig
from aam_runtime.data import batches as B
from aam_runtime.data import table as T
from aam_runtime.console import log
from aam_runtime.data.prepare import Data, scale_target, unscale_target
from aam_runtime.errors import HardwareMissing
from aam_runtime.metric_table import improved
from aam_runtime.model import AAM, build_model, is_head_key, param_group, sample_positions
from aam_runtime.profiling import StepProfiler
from aam_runtime.runfolder import RunFolder, atomic_write, checkpoint_name


class Preempted(Exception):
    pass


class Pruned(Exception):
    """A sweep's controller asked this trial to stop (PRUNE flag): it lost, it did not fail."""


# ---------------------------------------------------------------- objectives

def self_supervised_losses(res: dict, batch: dict, data: Data, acc, global_rows, *, unifrac: float,
                           nucleotide: float, count: float) -> tuple[torch.Tensor, dict]:
    """The weighted sum of the self-supervised terms (pairwise UniFrac over the global batch,
    masked nucleotides, log counts) that have a positive weight, and each term for the logs."""
    out: dict = {}
    loss = torch.zeros((), device=batch["tokens"].device)
    if unifrac > 0 and data.lookup is not None:
        dist = torch.from_numpy(data.lookup.sub(global_rows())).to(loss.device)
        surrogate, uf, mae = L.unifrac_global(res["embedding"], dist, acc)
        out["unifrac_loss"], out["unifrac_mae"] = uf.detach(), mae
        loss = loss + unifrac * surrogate
    nuc = L.nucleotide(res) if nucleotide > 0 else None
    if nuc is not None:
        out["nuc_loss"], out["nuc_accuracy"] = nuc
        loss = loss + nucleotide * nuc[0]
    if count > 0:
        out["count_loss"] = L.count(res, batch)
        loss = loss + count * out["count_loss"]
    return loss, out


class PretrainObjective:
    """UniFrac pairwise distances (global batch) + masked-nucleotide + count losses."""

    stage = "pretrain"
    n_outputs = 0  # no target head

    def __init__(self, cfg: RunConfig, data: Data):
        self.w = cfg.trainer["lossWeights"]
        self.data = data

    def train_losses(self, model, batch, gen, acc, global_rows) -> dict:
        w = self.w
        res = model(batch, mask_nucleotides=w["nucleotide"] > 0, generator=gen)
        loss, out = self_supervised_losses(res, batch, self.data, acc, global_rows, unifrac=w["unifrac"],
                                           nucleotide=w["nucleotide"], count=w["count"])
        out["loss"] = loss
        return out

    def validation_batch(self, model, batch, rows, gen) -> tuple[dict, np.ndarray | None]:
        res = model(batch, mask_nucleotides=self.w["nucleotide"] > 0, generator=gen)
        out = {}
        if self.data.lookup is not None and len(rows) >= 2:
            dist = torch.from_numpy(self.data.lookup.sub(rows)).to(res["embedding"].device)
            out["unifrac_loss"], out["unifrac_mae"] = (float(x) for x in L.unifrac(res["embedding"], dist))
        nuc = L.nucleotide(res)
        if nuc is not None:
            out["nuc_loss"], out["nuc_accuracy"] = float(nuc[0]), float(nuc[1])
        return out, None

    def summarize(self, means: dict, rows: np.ndarray, pred: np.ndarray) -> dict:
        return {**means, "val_loss": self.w["unifrac"] * means.get("unifrac_loss", 0.0)
                + self.w["nucleotide"] * means.get("nuc_loss", 0.0)}


@dataclass
class TargetPart:
    """One target of a run with several: its view of the data, loss, weight, and the block of
    head outputs [start, stop) that is its own; `column` is its column of enc.targets."""

    view: Data
    loss: L.TargetLoss
    weight: float
    column: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return self.view.target_name

    def y(self, values):
        """This target's column of a [n, T] target array (numpy or torch), typed for its loss."""
        col = values[:, self.column]
        if self.view.target_type == "classification":
            return col.long() if isinstance(col, torch.Tensor) else col.astype(np.int64)
        return col


def target_parts(cfg: RunConfig, data: Data) -> list[TargetPart]:
    """Run spec.targets: one TargetPart per target, output blocks laid side by side."""
    parts, start = [], 0
    for column, (t, view) in enumerate(zip(cfg.target_list(), data.parts)):
        head = dict(cfg.model["targetHead"], **({"loss": t["loss"]} if t.get("loss") else {}))
        loss = target_loss({"targetHead": head}, view)
        width = loss.n_outputs(len(view.classes))
        parts.append(TargetPart(view, loss, t["weight"], column, start, start + width))
        start += width
    return parts


class FinetuneObjective:
    """The target loss (with several targets, their weighted sum), plus the auxiliary losses
    weighted by lossWeights.*WhenFinetuning: masked nucleotides, pairwise UniFrac over the global
    batch, log counts."""

    stage = "finetune"

    def __init__(self, cfg: RunConfig, data: Data):
        self.w = {k: cfg.loss_weight(k) for k in ("target", "nucleotideWhenFinetuning", "unifracWhenFinetuning",
                                                  "countWhenFinetuning")}
        self.data = data
        self.parts = target_parts(cfg, data) if data.parts else []
        if self.parts:
            self.n_outputs = self.parts[-1].stop
        else:
            self.loss = target_loss(cfg.model, data)
            self.n_outputs = self.loss.n_outputs(len(data.classes))
        self.passes = int(cfg.trainer.get("validationPasses", 1)) if cfg.dataset["asvSelection"] == "random" else 1

    def _target_losses(self, res, batch) -> tuple[torch.Tensor, dict]:
        """The target loss, and with several targets each one's (target_loss:NAME)."""
        if not self.parts:
            return self.loss(res["target"], batch["targets"]), {}
        total, each = 0.0, {}
        for p in self.parts:
            value = p.loss(res["target"][:, p.start:p.stop], p.y(batch["targets"]))
            each[f"target_loss:{p.name}"] = value.detach()
            total = total + p.weight * value
        return total, each

    def train_losses(self, model, batch, gen, acc, global_rows) -> dict:
        w = self.w
        res = model(batch, mask_nucleotides=w["nucleotideWhenFinetuning"] > 0, generator=gen, need_target=True)
        aux, out = self_supervised_losses(res, batch, self.data, acc, global_rows, unifrac=w["unifracWhenFinetuning"],
                                          nucleotide=w["nucleotideWhenFinetuning"], count=w["countWhenFinetuning"])
        out.pop("nuc_accuracy", None)  # fine-tuning logs the nucleotide loss only, as before
        out["target_loss"], each = self._target_losses(res, batch)
        out.update(each)
        out["loss"] = w["target"] * out["target_loss"] + aux
        if "fusion_gate" in res:  # gated / gmu fusion: how much of the categorical signal passes
            out["fusion_gate"] = res["fusion_gate"]
        return out

    def validation_batch(self, model, batch, rows, gen) -> tuple[dict, np.ndarray | None]:
        res = model(batch, need_target=True)
        total, each = self._target_losses(res, batch)
        return {"target_loss": float(total), **{k: float(v) for k, v in each.items()}}, \
            res["target"].float().cpu().numpy()

    def summarize(self, means: dict, rows: np.ndarray, pred: np.ndarray | None) -> dict:
        pred = pred if pred is not None else np.zeros((0, self.n_outputs))
        out = {**means, "val_loss": means.get("target_loss", 0.0)}
        if not self.parts:
            out.update(target_metrics(pred, self.data.enc.targets[rows], self.data, rows))
        for p in self.parts:  # each target's metrics, named metric:target
            m = target_metrics(pred[:, p.start:p.stop], p.y(self.data.enc.targets[rows]), p.view, rows)
            out.update({f"{k}:{p.name}": v for k, v in m.items()})
        return out

    def average(self, outputs: list[np.ndarray]) -> np.ndarray:
        """Outputs of several validation passes -> their mean (per target block with several)."""
        if not self.parts:
            return average_passes(outputs, self.data.target_type)[0]
        return average_blocks(outputs, [(p.start, p.stop, p.view.target_type) for p in self.parts])[0]


OBJECTIVES = {"pretrain": PretrainObjective, "finetune": FinetuneObjective}


# ---------------------------------------------------------------- results of the steps

@dataclass
class Validation:
    metrics: dict
    rows: np.ndarray  # dataset rows, in the order of pred
    pred: np.ndarray | None  # target outputs (finetune), else None


@dataclass
class Optimisation:
    model: torch.nn.Module  # prepared (DDP/FSDP) and maybe compiled: call this one
    raw: AAM  # the plain module
    wrapped: torch.nn.Module  # prepared, not compiled: what get_state_dict takes
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    total_steps: int
    steps_per_epoch: int
    batches_per_epoch: int
    ema: torch.nn.Module | None = None  # trainer.ema: the averaged weights (AveragedModel), else None

    @property
    def evaluated(self) -> torch.nn.Module:
        """The weights validation, the best checkpoint and predictions use: the EMA when on."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class FitResult:
    state: dict  # epoch, batch, step, best, best_step, bad_epochs, history (what a checkpoint keeps)
    last_validation: Validation | None = None  # the final validation, with its predictions

    @property
    def history(self) -> list[dict]:
        """Validation metrics, in order (across resumes)."""
        return self.state["history"]


def make_accelerator(accelerator: str, precision: str):
    """The Accelerator every stage uses. Heads a stage does not train (the nucleotide head with
    its weight at 0, the count head) get no gradient: without find_unused_parameters DDP would
    wait for them forever and silently skip the gradient all-reduce."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    return Accelerator(cpu=accelerator == "cpu", mixed_precision=precision,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def check_hardware(cfg: RunConfig) -> None:
    """The devices and precision the record asks for are here, or HardwareMissing (exit 5)."""
    hw = cfg.hardware
    if hw["accelerator"] in ("cuda", "rocm") and not torch.cuda.is_available():
        build = "ROCm" if getattr(torch.version, "hip", None) else ("CUDA" if torch.version.cuda else "CPU-only")
        raise HardwareMissing(f"HardwareProfile '{cfg.spec['hardwareRef']}' expects {hw['accelerator']} devices, but "
                              f"torch {torch.__version__} ({build} build) sees none here; run on a GPU node "
                              "(executor slurm), or use hardwareRef: cpu")
    if cfg.precision == "bf16" and hw["accelerator"] != "cpu" and not torch.cuda.is_bf16_supported():
        if cfg.spec["trainer"].get("precision", "auto") == "auto" and hw.get("precision", "auto") == "auto":
            # auto was planned as bf16 without seeing the GPU: this one has none, fp16 is what it has
            log(f"precision auto: {torch.cuda.get_device_name(0)} has no bf16; training in fp16 (with loss scaling)")
            cfg.precision = "fp16"
            return
        raise HardwareMissing(f"precision bf16 was planned for HardwareProfile '{cfg.spec['hardwareRef']}', but "
                              f"{torch.cuda.get_device_name(0)} has no bf16; set precision: fp16 (or no) in the "
                              "profile or in spec.trainer.precision")


# ---------------------------------------------------------------- the fit loop

class Trainer:
    def __init__(self, cfg: RunConfig, folder: RunFolder):
        self.cfg = cfg
        self.folder = folder
        self.stage = cfg.stage
        check_hardware(cfg)
        self.acc = make_accelerator(cfg.hardware["accelerator"], cfg.precision)
        self.main = self.acc.is_main_process
        self.world = self.acc.num_processes
        self.rank = self.acc.process_index
        self.device = self.acc.device
        seed = cfg.trainer["seed"]
        torch.manual_seed(seed + self.rank)
        np.random.seed(seed)
        if cfg.hardware["accelerator"] == "cpu":
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.stop_signal = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.stop_signal = signum
        log(f"received signal {signum}: will checkpoint and stop after this step")

    # -- step 1: the model, its starting weights, the optimiser and schedule

    def build_model(self, data: Data, init_state: dict | None, n_out: int) -> AAM:
        """n_out: the target head's outputs (the objective's; 0 when pretraining)."""
        cond = conditional_column(self.cfg.model, data.cat_columns) if n_out else None
        model = build_model(self.cfg.model, self.cfg.hardware, max_bp=data.enc.tokens.shape[1] - 1, n_outputs=n_out,
                            categorical_sizes=[len(lv) for lv in data.cat_levels],
                            max_asvs=sample_positions(self.cfg.dataset["maxAsvsPerSample"]), conditional_column=cond)
        if not getattr(self, "_said_attention", False):  # once a run (autobatch builds trial models too)
            self._said_attention = True
            log(f"attention: {model.attention_why}")
            if model.attention_warning:
                log(f"warning: {model.attention_warning}")
        if n_out and self.cfg.model["targetHead"].get("outputActivation") == "bounded":
            model.set_bounds(*output_bounds(self.cfg.model["targetHead"], data))
        if init_state is not None:
            # a new target head starts afresh unless the weights come from a finetune run
            fresh_head = self.stage == "finetune" and not self.cfg.init_is_finetune()
            own = model.state_dict()
            usable = {k: v for k, v in init_state.items() if k in own and own[k].shape == v.shape
                      and not (fresh_head and is_head_key(k))}
            model.load_state_dict(usable, strict=False)
            log(f"init: loaded {len(usable)} tensors from {self.cfg.init_checkpoint}; {len(own) - len(usable)} new")
        if self.cfg.spec["freezeBase"] and self.stage == "finetune" and not self.cfg.spec.get("unfreezeBaseAfterEpochs"):
            # frozen throughout: no gradient is computed for the base at all. A freeze *schedule*
            # keeps the base trainable and holds its learning rate at 0 instead (Schedule.hold),
            # so DDP sees the same parameters before and after the unfreeze.
            for p in model.base_parameters():
                p.requires_grad_(False)
        return model

    def setup_optimisation(self, data: Data, init_state: dict | None, resume: dict | None,
                           n_out: int = 0) -> Optimisation:
        tr, acc = self.cfg.trainer, self.acc
        model = self.build_model(data, init_state if resume is None else None, n_out)
        if resume is not None:  # before prepare: FSDP shards (and DDP broadcasts) what is loaded here
            # with trainer.ema a checkpoint's "model" is the average; the raw weights are "train_model"
            model.load_state_dict(resume.get("train_model", resume["model"]))
        groups = param_groups(model, tr)
        opt = make_optimizer(groups, tr)
        bs, accum = tr["batchSize"], tr["gradientAccumulation"]
        n_batches = len(B.epoch_batches(len(data.train), bs, self.world, tr["seed"], 0))
        if n_batches == 0:
            raise T.DataError(f"{len(data.train)} training samples are fewer than one batch of "
                              f"{bs} x {self.world} processes; lower spec.trainer.batchSize")
        steps_per_epoch = math.ceil(n_batches / accum)
        total = tr["maxSteps"] or steps_per_epoch * tr["epochs"]
        warm = min(tr["warmupSteps"], max(1, int(0.1 * total))) if tr["warmupSteps"] else 0
        hold = 0
        if self.stage == "finetune" and self.cfg.spec["freezeBase"] and self.cfg.spec.get("unfreezeBaseAfterEpochs"):
            hold = self.cfg.spec["unfreezeBaseAfterEpochs"] * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, [Schedule(tr, warm, total, hold=hold if g["group"] == "base" else 0) for g in opt.param_groups])
        wrapped, opt = acc.prepare(model, opt)
        model = torch.compile(wrapped, dynamic=True) if self.cfg.compile_enabled() else wrapped
        raw = acc.unwrap_model(wrapped)
        ema = self.make_ema(raw, resume)
        return Optimisation(model=model, raw=raw, wrapped=wrapped, optimizer=opt,
                            scheduler=sched, total_steps=total, steps_per_epoch=steps_per_epoch,
                            batches_per_epoch=n_batches, ema=ema)

    def make_ema(self, raw: AAM, resume: dict | None) -> torch.nn.Module | None:
        """trainer.ema: an AveragedModel of the plain module (every rank keeps the same copy: DDP
        ranks hold the same weights after each step), restored from a resumed checkpoint."""
        spec = self.cfg.trainer.get("ema")
        if spec is None:
            return None
        from accelerate.utils import DistributedType
        from torch.optim.swa_utils import AveragedModel

        if self.acc.distributed_type == DistributedType.FSDP:
            raise T.DataError("trainer.ema cannot average weights sharded by FSDP; use strategy ddp (or none), "
                              "or set trainer.ema: null")
        ema = AveragedModel(raw, multi_avg_fn=ema_update(spec["decay"]), use_buffers=True)
        if resume is not None and "ema_steps" in resume:
            ema.module.load_state_dict(resume["model"])
            ema.n_averaged.fill_(int(resume["ema_steps"]))
        log(f"ema: averaging the weights with decay {spec['decay']:g} (ramped up over the first steps)")
        return ema

    def restore(self, o: Optimisation, resume: dict, state: dict) -> None:
        if resume.get("optimizer") is not None:
            o.optimizer.load_state_dict(resume["optimizer"])
        else:
            log("resume: the checkpoint has no optimizer state (FSDP); AdamW moments start afresh")
        o.scheduler.load_state_dict(resume["scheduler"])
        state.update(resume["state"])
        _set_rng(resume["rng"][self.rank] if self.rank < len(resume["rng"]) else resume["rng"][0])
        self.folder.event("resumed", step=state["step"], epoch=state["epoch"])
        log(f"resumed from step {state['step']} (epoch {state['epoch']}, batch {state['batch']})")

    # -- the loop

    def fit(self, data: Data, init_state=None, resume: dict | None = None) -> FitResult:
        cfg, tr = self.cfg, self.cfg.trainer
        objective = OBJECTIVES[self.stage](cfg, data)
        rng = torch.get_rng_state()
        autobatch.resolve(self, data, objective.n_outputs)  # batchSize / gradientAccumulation: auto
        torch.set_rng_state(rng)  # the probe's throwaway model does not shift the real one's init
        o = self.setup_optimisation(data, init_state, resume, objective.n_outputs)
        self.meta = checkpoint_meta(cfg, data, getattr(objective, "parts", None))
        result = FitResult(state={"epoch": 0, "batch": 0, "step": 0, "best": None, "best_step": None,
                                  "bad_epochs": 0, "history": []})
        state = result.state
        if resume is not None:
            self.restore(o, resume, state)
        self.folder.update_status(phase="Running", stage=self.stage, total_steps=o.total_steps, world_size=self.world,
                                  steps_per_epoch=o.steps_per_epoch, device=str(self.device),
                                  attention_backend=o.raw.attention_backend, precision=cfg.precision)
        log(f"train: {len(data.train)} samples, val {len(data.val)}, {o.steps_per_epoch} steps/epoch, "
            f"{o.total_steps} steps, world {self.world}, device {self.device}, "
            f"params {sum(p.numel() for p in o.raw.parameters()):,}")
        self.profiler = StepProfiler(tr.get("profile"), self.folder, self.stage, self.device, self.main,
                                     cfg.hardware["accelerator"])
        try:
            return self._fit_loop(o, objective, data, state, result)
        finally:
            self._finish_profile(state["step"], o.total_steps)

    def _finish_profile(self, step: int, total_steps: int) -> None:
        """Write a window the run ended inside; say when the window was never reached."""
        prof = self.profiler
        if prof.active:  # (stop() never raises: a write error is a warning)
            self._profiled(prof.stop(step, force=True))
        elif prof.spec is not None and not prof.done:
            log(f"warning: trainer.profile.steps {prof.spec['steps']} never ran: this stage took "
                f"{total_steps} optimizer steps (resumed at or past the window, or it is beyond the end)")

    def _profiled(self, info: dict | None) -> None:
        if info:
            self.folder.event("profiled", **info)
            log(f"profile of steps {info['steps'][0]}..{info['steps'][1]} written: {info['trace']}, {info['top']}")

    def _fit_loop(self, o: Optimisation, objective, data: Data, state: dict, result: FitResult) -> FitResult:
        tr = self.cfg.trainer
        metric = tr["earlyStopping"]["metric"]
        done = state["step"] >= o.total_steps
        while not done and (tr["maxSteps"] or state["epoch"] < tr["epochs"]):
            done = self.train_epoch(o, objective, data, state)
            epoch_end = state["batch"] >= o.batches_per_epoch
            if epoch_end:
                state["epoch"] += 1
                state["batch"] = 0
            final = done or (not tr["maxSteps"] and state["epoch"] >= tr["epochs"])
            if (epoch_end and state["epoch"] % tr["validateEvery"] == 0) or final:
                v = self.validate(o.evaluated, objective, data)
                result.last_validation = v
                value = v.metrics.get(metric, v.metrics["val_loss"])
                better = improved(metric, value, state["best"])
                vm = dict(v.metrics, step=state["step"], epoch=state["epoch"], split="validation")
                if better:
                    state["best"], state["best_step"], state["bad_epochs"] = value, state["step"], 0
                else:
                    state["bad_epochs"] += 1
                cuts = [s.on_validation(better) for s in o.scheduler.lr_lambdas]
                if any(cuts):
                    self._apply_schedule(o)
                    log(f"plateau: {metric} stalled; learning rate now {o.scheduler.get_last_lr()[0]:.2e}")
                self._log_val(vm, metric, state)
                result.history.append(vm)
                if better:
                    self.checkpoint(o, state, "best")
                patience = tr["earlyStopping"]["patience"]
                if patience and state["bad_epochs"] >= patience:
                    log(f"early stopping: {metric} did not improve for {patience} validations")
                    done = True
            self.checkpoint(o, state, "last")
            request = self._stop_request()
            if request == "prune" and not done:
                raise Pruned()
            if request == "preempt" and not done:
                raise Preempted()
        return result

    # -- step 2: one epoch (or what is left of it after a resume)

    def train_epoch(self, o: Optimisation, objective, data: Data, state: dict) -> bool:
        """Train from state's batch to the end of the epoch; True when the last step is taken.
        Raises Preempted after a mid-epoch checkpoint when a stop was asked for."""
        tr, acc = self.cfg.trainer, self.acc
        epoch, accum = state["epoch"], tr["gradientAccumulation"]
        if self.cfg.dataset["asvSelection"] == "random":
            data.enc.redraw(self.cfg.dataset["maxAsvsPerSample"], [tr["seed"], epoch])
        gbatches = B.epoch_batches(len(data.train), tr["batchSize"], self.world, tr["seed"], epoch)
        window = {"t": time.time(), "samples": 0}
        running: dict[str, list] = {}
        o.model.train()
        for bi in range(state["batch"], len(gbatches)):
            self.profiler.start(state["step"] + 1)
            rows = data.train[B.shard(gbatches[bi], self.rank, self.world)]
            batch = B.to_torch(B.collate_numpy(data.enc, rows), self.device)
            if data.lookup is not None and bi + 1 < len(gbatches):  # the next step's UniFrac block
                data.lookup.prefetch(data.train[gbatches[bi + 1]])
            gen = torch.Generator().manual_seed(tr["seed"] * 1_000_003 + epoch * 100_003 + bi)
            sync = (bi + 1) % accum == 0 or bi + 1 == len(gbatches)
            with acc.no_sync(o.model) if not sync and self.world > 1 else contextlib.nullcontext():
                with acc.autocast():
                    losses = objective.train_losses(o.model, batch, gen, acc, lambda: self._global_rows(batch["rows"]))
                acc.backward(losses["loss"] / accum)
            for k, v in losses.items():
                running.setdefault(k, []).append(float(v.detach()))
            window["samples"] += len(rows) * self.world
            if not sync:
                continue
            state["batch"] = bi + 1
            if tr["gradientClip"]:
                acc.clip_grad_norm_(o.model.parameters(), tr["gradientClip"])
            o.optimizer.step()
            o.scheduler.step()
            o.optimizer.zero_grad(set_to_none=True)
            if o.ema is not None:
                o.ema.update_parameters(o.raw)
            state["step"] += 1
            step = state["step"]
            self._profiled(self.profiler.stop(step))
            if step % tr["logEverySteps"] == 0 or step == o.total_steps:
                dt = max(time.time() - window["t"], 1e-9)
                row = {k: float(np.mean(v)) for k, v in running.items()}
                row.update(step=step, epoch=epoch, lr=o.scheduler.get_last_lr()[0],
                           samples_per_s=window["samples"] / dt, peak_memory_mb=peak_memory_mb(self.device))
                self._log_train(row, o.total_steps)
                running.clear()
                window = {"t": time.time(), "samples": 0}
            request = self._stop_request()
            if request == "prune":
                raise Pruned()
            stop = request == "preempt"
            epoch_end = state["batch"] >= len(gbatches)
            if (step % tr["checkpoint"]["everySteps"] == 0 or stop) and not epoch_end:
                self.checkpoint(o, state, "last")
            if stop and not epoch_end:
                raise Preempted()
            if step >= o.total_steps:
                return True
        return False

    # -- step 3: validation over every rank's share, metrics on the gathered rows

    @torch.no_grad()
    def validate(self, model, objective, data: Data) -> Validation:
        """Every rank's share of the validation split, metrics on the gathered rows. With several
        passes (random ASV selection), each pass draws other ASVs and the outputs are averaged."""
        from accelerate.utils import gather_object

        passes = getattr(objective, "passes", 1)
        saved = (data.enc.sel_idx, data.enc.sel_cnt)
        model.eval()
        rows_out, pred_out, parts = [], [], {}
        for p in range(passes):
            if passes > 1:
                data.enc.redraw(self.cfg.dataset["maxAsvsPerSample"], B.pass_key(self.cfg.seed, p))
            rows_out, preds = self._validate_pass(model, objective, data, parts)
            pred_out.append(preds)
        data.enc.sel_idx, data.enc.sel_cnt = saved
        gathered = gather_object([{"rows": rows_out, "pred": pred_out, "parts": parts}])
        model.train()
        merged: dict[str, list] = {}
        rows_all, preds_all = [], []
        for g in gathered:
            for k, v in g["parts"].items():
                merged.setdefault(k, []).extend(v)
            rows_all.extend(g["rows"])
            if g["pred"][0]:  # this rank had rows and the stage predicts a target
                preds_all.append(objective.average([np.concatenate(pp) for pp in g["pred"]]))
        means = {k: float(np.average([a for a, _ in v], weights=[n for _, n in v])) for k, v in merged.items()}
        rows = np.concatenate(rows_all) if rows_all else np.array([], dtype=np.int64)
        pred = np.concatenate(preds_all) if preds_all else None
        return Validation(metrics=objective.summarize(means, rows, pred), rows=rows, pred=pred)

    def _validate_pass(self, model, objective, data: Data, parts: dict) -> tuple[list, list]:
        bs = self.cfg.trainer["batchSize"]
        mine = data.val[self.rank::self.world]
        rows_out, pred_out = [], []
        gen = torch.Generator().manual_seed(12345)
        for i in range(0, len(mine), bs):
            rows = mine[i:i + bs]
            batch = B.to_torch(B.collate_numpy(data.enc, rows), self.device)
            with self.acc.autocast():
                values, pred = objective.validation_batch(model, batch, rows, gen)
            for k, v in values.items():
                parts.setdefault(k, []).append((v, len(rows)))
            if pred is not None:
                pred_out.append(pred)
            rows_out.append(rows)
        return rows_out, pred_out

    @staticmethod
    def _apply_schedule(o: Optimisation) -> None:
        """Set every group's rate from its schedule at the current step (after a plateau cut)."""
        sched = o.scheduler
        step = sched.last_epoch
        for group, base_lr, f in zip(o.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas):
            group["lr"] = base_lr * f(step)
        sched._last_lr = [g["lr"] for g in o.optimizer.param_groups]

    def _stop_request(self) -> str | None:
        """'prune' (a sweep's PRUNE flag), 'preempt' (a signal or the PREEMPT flag) or None, agreed
        by every rank (the flags are files; one rank may see one before the others)."""
        flags = [1.0 if (self.stop_signal is not None or self.folder.preempt_requested()) else 0.0,
                 1.0 if self.folder.prune_requested() else 0.0]
        if self.world > 1:
            t = self.acc.reduce(torch.tensor(flags, device=self.device), reduction="sum")
            flags = t.tolist()
        if flags[1] > 0:
            return "prune"
        return "preempt" if flags[0] > 0 else None

    def _global_rows(self, rows: torch.Tensor) -> np.ndarray:
        """Dataset rows of the whole global batch, in rank order."""
        if self.world > 1:
            rows = self.acc.gather(rows)
        return rows.cpu().numpy()

    # -- outputs

    def _log_train(self, row: dict, total: int):
        if not self.main:
            return
        self.folder.metric(split="train", **row)
        parts = " ".join(f"{k}={v:.4f}" for k, v in row.items()
                         if k not in ("step", "epoch", "lr", "samples_per_s", "peak_memory_mb"))
        log(f"step {row['step']}/{total} epoch {row['epoch']} {parts} lr={row['lr']:.2e} "
            f"{row['samples_per_s']:.1f} samples/s peak {row['peak_memory_mb']:.0f} MiB")
        self.folder.update_status(epoch=row["epoch"], step=row["step"], throughput=row["samples_per_s"],
                                  peak_memory_mb=row["peak_memory_mb"], memory_kind=memory_kind(self.device),
                                  last_metrics={k: v for k, v in row.items() if k not in ("step", "epoch")})
        self.cfg.tracking_log({f"train/{k}": v for k, v in row.items() if k != "step"}, step=row["step"])

    def _log_val(self, vm: dict, metric_name: str, state: dict):
        if not self.main:
            return
        self.folder.metric(**vm)
        parts = " ".join(f"{k}={v:.4f}" for k, v in vm.items() if isinstance(v, float))
        log(f"validation epoch {vm['epoch']} step {vm['step']}: {parts}")
        self.folder.update_status(epoch=vm["epoch"], step=vm["step"], val_metrics=vm,
                                  best_metric={"name": metric_name, "value": state["best"], "step": state["best_step"]})
        self.cfg.tracking_log({f"val/{k}": v for k, v in vm.items() if isinstance(v, (int, float)) and k != "step"},
                           step=vm["step"])

    # -- step 4: checkpoints

    def checkpoint(self, o: Optimisation, state: dict, which: str):
        from accelerate.utils import DistributedType, gather_object

        rngs = gather_object([_get_rng()])
        weights = self.acc.get_state_dict(o.wrapped)  # a collective under FSDP: every rank calls it
        fsdp = self.acc.distributed_type == DistributedType.FSDP
        if not self.main:
            self.acc.wait_for_everyone()
            return
        # Under FSDP each rank holds a shard of the optimizer state; rank 0's alone would be wrong,
        # so an FSDP resume restores weights, schedule and data position and restarts AdamW's moments.
        payload = {"model": weights, "optimizer": None if fsdp else o.optimizer.state_dict(),
                   "scheduler": o.scheduler.state_dict(),
                   "state": dict(state), "rng": rngs,
                   "meta": self.meta, "format": 1}
        if o.ema is not None:
            # "model" is what every reader of a checkpoint uses (predict, initFrom): the average;
            # the raw weights go on training after a resume
            payload.update(model=o.ema.module.state_dict(), train_model=weights, ema_steps=int(o.ema.n_averaged))
        # Serialised in memory, then written by Python: torch.save straight to disk reports a full
        # disk as "unexpected pos" and loses the errno; this way ENOSPC reaches the run's status.
        buf = io.BytesIO()
        torch.save(payload, buf)
        atomic_write(self.folder.path / checkpoint_name(which), buf.getbuffer())
        self.folder.event("checkpointed", which=which, step=state["step"], epoch=state["epoch"])
        self.acc.wait_for_everyone()


def target_loss(model_spec: dict, data: Data) -> L.TargetLoss:
    """The target loss of a finetune run (class weights from its training split); also sets
    data.quantiles, which the metrics and the predictions file read."""
    head = model_spec["targetHead"]
    weights = None
    if data.target_type == "classification":
        try:
            weights = L.class_weights(head.get("classWeights"), data.classes, data.enc.targets[data.train])
        except ValueError as exc:
            raise T.DataError(f"model targetHead.classWeights: {exc}") from None
    loss = L.TargetLoss(head, data.target_type, weights)
    data.quantiles = list(loss.quantiles)
    return loss


def conditional_column(model_spec: dict, cat_columns: list[str]) -> int | None:
    """Index of targetHead.conditionalScale's column among the run's categorical columns."""
    col = model_spec["targetHead"].get("conditionalScale")
    if not col:
        return None
    if col not in cat_columns:
        raise T.DataError(f"model targetHead.conditionalScale: '{col}' is not one of the run's categorical columns "
                        f"({', '.join(cat_columns) or 'none'}); add it to the Dataset's categoricalColumns")
    return cat_columns.index(col)


def output_bounds(head: dict, data: Data) -> tuple[float, float]:
    """outputActivation bounded: [min, max] on the model's scale, each end given (original units)
    or taken from the training targets."""
    b = head.get("bounds") or {}
    y = data.enc.targets[data.train]
    y = y[np.isfinite(y)]
    lo = float(scale_target(np.array([b["min"]]), data.norm)[0]) if b.get("min") is not None else float(y.min())
    hi = float(scale_target(np.array([b["max"]]), data.norm)[0]) if b.get("max") is not None else float(y.max())
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        raise T.DataError(f"model targetHead.bounds: the range [{lo:g}, {hi:g}] on the model's scale is empty "
                        "(bounds.min must lie below bounds.max and below the training maximum)")
    return lo, hi


def memory_kind(device: torch.device) -> str:
    """What peak_memory_mb measures: the accelerator's allocator on CUDA/ROCm, else the process."""
    return "device max allocated" if device.type == "cuda" else "process peak RSS"


def peak_memory_mb(device: torch.device) -> float:
    """The run's peak memory so far in MiB (this process; rank 0's in a distributed run): the
    device's max allocated tensors on CUDA/ROCm (torch.cuda covers both), else the peak resident
    set of the process (ru_maxrss, KiB on Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def checkpoint_meta(cfg: RunConfig, data: Data, parts: list[TargetPart] | None = None) -> dict:
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


def param_groups(model: AAM, tr: dict) -> list[dict]:
    """Trainable parameters by group (base, head, categorical), each split into decayed weights
    and undecayed biases/norms, with the group's peak rate (trainer.learningRates or learningRate)."""
    rates = tr.get("learningRates") or {}
    by: dict[str, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        by.setdefault(param_group(name), []).append(p)
    out = []
    for group in ("base", "head", "categorical"):
        params = by.get(group, [])
        if not params:
            continue
        lr = rates.get(group) or tr["learningRate"]
        for decay in (True, False):
            ps = [p for p in params if (p.ndim >= 2) == decay]
            if ps:
                out.append({"params": ps, "weight_decay": tr["weightDecay"] if decay else 0.0, "lr": lr,
                            "group": group})
    return out


def make_optimizer(groups: list[dict], tr: dict) -> torch.optim.Optimizer:
    o = tr.get("optimizer") or {}
    kind = o.get("type", "adamw")
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=tr["learningRate"], momentum=o.get("momentum", 0.9),
                               nesterov=bool(o.get("nesterov")) and o.get("momentum", 0.9) > 0)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=tr["learningRate"])
    return torch.optim.AdamW(groups, lr=tr["learningRate"])


class Schedule:
    """The learning-rate factor of one parameter group at an optimizer step (LambdaLR calls it).

    A callable object rather than a closure: LambdaLR's state_dict saves its attributes, so the
    plateau factor survives a resume. `hold`: the factor is 0 for the first `hold` steps (a
    frozen base in a freeze schedule)."""

    def __init__(self, tr: dict, warm: int, total: int, hold: int = 0):
        self.kind = tr["scheduler"]
        self.warm = 0 if self.kind == "onecycle" else warm
        self.total = max(1, total)
        self.hold = hold
        self.restarts = dict(tr.get("cosineRestarts") or {})
        self.one_cycle = dict(tr.get("oneCycle") or {})
        self.plateau = dict(tr.get("plateau") or {})
        self.factor = 1.0  # plateau: multiplied by plateau.factor at each cut
        self.bad = 0

    def __call__(self, step: int) -> float:
        if step < self.hold:
            return 0.0
        if self.warm and step < self.warm:
            return (step + 1) / self.warm
        t = step - self.warm
        span = max(1, self.total - self.warm)
        if self.kind == "constant":
            return 1.0
        if self.kind == "plateau":
            return self.factor
        if self.kind == "linear":
            return max(0.0, 1.0 - min(1.0, t / span))
        if self.kind == "cosine_restarts":
            period, mult = self.restarts.get("periodSteps", 1000), self.restarts.get("multiplier", 1)
            while t >= period:
                t -= period
                period *= mult
            low = self.restarts.get("minFactor", 0.0)
            return low + (1 - low) * 0.5 * (1.0 + math.cos(math.pi * t / period))
        if self.kind == "onecycle":
            c = self.one_cycle
            start = 1.0 / c.get("startDivisor", 25.0)
            end = start / c.get("endDivisor", 1e4)
            rise = max(1, int(c.get("peakFraction", 0.3) * self.total))
            if step < rise:
                return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * step / rise))
            frac = min(1.0, (step - rise) / max(1, self.total - rise))
            return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * frac))
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t / span)))

    def on_validation(self, better: bool) -> bool:
        """plateau: count a validation; cut the factor after patience bad ones. True on a cut."""
        if self.kind != "plateau":
            return False
        if better:
            self.bad = 0
            return False
        self.bad += 1
        if self.bad <= self.plateau.get("patience", 2):
            return False
        self.bad = 0
        self.factor = max(self.plateau.get("minFactor", 1e-3), self.factor * self.plateau.get("factor", 0.5))
        return True


def ema_update(decay: float):
    """AveragedModel's multi_avg_fn for trainer.ema: ema <- ema + (1 - d) (current - ema), with
    d = min(decay, (1 + n) / (10 + n)) after n averaged steps (the usual warm-up: a fixed decay
    of 0.999 would still hold 13% of the starting weights after 2,000 steps)."""

    @torch.no_grad()
    def update(ema_params: list, current: list, n_averaged: torch.Tensor) -> None:
        n = int(n_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, current, 1 - d)
        else:  # integer buffers are counters: take the current value
            for e, c in zip(ema_params, current):
                e.copy_(c)

    return update


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


def average_passes(preds: list[np.ndarray], target_type: str | None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) over passes of [n, k] outputs: regression outputs directly; class logits as
    the log of the mean probability (std of the probabilities)."""
    stack = np.stack(preds)  # [passes, n, k]
    if target_type == "classification":
        z = stack - stack.max(-1, keepdims=True)
        prob = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        return np.log(np.clip(prob.mean(0), 1e-12, 1.0)), prob.std(0)
    return stack.mean(0), stack.std(0)


def average_blocks(outputs: list[np.ndarray], blocks: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """average_passes for a head with several targets: each (start, stop, target_type) block of
    the outputs averaged as its kind of target, side by side again."""
    done = [average_passes([o[:, a:b] for o in outputs], kind) for a, b, kind in blocks]
    return np.concatenate([m for m, _ in done], axis=1), np.concatenate([sd for _, sd in done], axis=1)


def target_metrics(pred: np.ndarray, y: np.ndarray, data: Data, rows: np.ndarray) -> dict:
    """Regression metrics on the original scale, or classification metrics; rows without a
    truth (NaN value, unknown class) are left out."""
    if data.target_type == "classification":
        ok = y >= 0
        return M.classification(y[ok], pred[ok], len(data.classes))
    pred = pred.reshape(len(y), -1)
    groups = data.target_groups(rows)
    t = unscale_target(y, data.norm, groups)
    ok = np.isfinite(t)
    q = data.quantiles
    p = unscale_target(pred[:, point_column(q)], data.norm, groups)
    out = M.regression(t[ok], p[ok])
    if len(q) > 1 and ok.any():  # share of truths inside the outer quantiles, against its nominal share
        lo, hi = unscale_target(pred[:, 0], data.norm, groups), unscale_target(pred[:, -1], data.norm, groups)
        out["coverage"] = float(((t >= lo) & (t <= hi))[ok].mean())
        out["coverage_nominal"] = round(q[-1] - q[0], 6)
    return out


def point_column(quantiles: list) -> int:
    """The output column that is the point prediction: the quantile nearest 0.5, or the only one."""
    if not quantiles:
        return 0
    return min(range(len(quantiles)), key=lambda i: abs(quantiles[i] - 0.5))
