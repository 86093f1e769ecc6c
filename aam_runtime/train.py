"""The training engine: a fit loop of named steps.

    fit = set up optimisation -> (train an epoch -> validate -> checkpoint)* -> FitResult

What a step's loss is belongs to the stage's objective (objectives.py); the model to model.py,
its optimiser and schedule to optim.py, checkpoints to checkpoints.py, the devices to device.py,
validation to validation.py. stages.py reads the recipes top to bottom.
"""
from __future__ import annotations

import contextlib
import math
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch

from aam_runtime import autobatch
from aam_runtime.checkpoints import checkpoint_meta, load_starting_weights, restore_checkpoint, save_checkpoint
from aam_runtime.config import RunConfig
from aam_runtime.console import log
from aam_runtime.data import batches as B
from aam_runtime.data import table as T
from aam_runtime.data.prepare import Data
from aam_runtime.device import check_hardware, make_accelerator, peak_memory_mb
from aam_runtime.metric_table import improved
from aam_runtime.model import AAM, build_model, sample_positions
from aam_runtime.objectives import OBJECTIVES
from aam_runtime.optim import Schedule, apply_schedule, make_ema, make_optimizer, param_groups
from aam_runtime.outputs import conditional_column, output_bounds
from aam_runtime.profiling import StepProfiler
from aam_runtime.runfolder import RunFolder
from aam_runtime.settings import TrainerSettings
from aam_runtime.trainlog import log_profile, log_train, log_validation
from aam_runtime.validation import Validation, validate, with_best_validation


class Preempted(Exception):
    pass


class Pruned(Exception):
    """A sweep's controller asked this trial to stop (PRUNE flag): it lost, it did not fail."""


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
    best_validation: Validation | None = None  # the validation of the weights in best.pt

    @property
    def history(self) -> list[dict]:
        """Validation metrics, in order (across resumes)."""
        return self.state["history"]


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
        self.settings: TrainerSettings | None = None  # read in fit, once autobatch has decided
        self.stop_signal = None
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, _frame):
        self.stop_signal = signum
        log(f"received signal {signum}: will checkpoint and stop after this step")

    # -- step 1: the model, its starting weights, the optimiser and schedule

    def build_model(self, data: Data, init_state: dict | None, n_out: int) -> AAM:
        """n_out: the target head's outputs (the objective's; 0 when pretraining)."""
        cfg = self.cfg
        cond = conditional_column(cfg.model, data.cat_columns) if n_out else None
        model = build_model(cfg.model, cfg.hardware, max_bp=data.enc.tokens.shape[1] - 1, n_outputs=n_out,
                            categorical_sizes=[len(lv) for lv in data.cat_levels],
                            max_asvs=sample_positions(cfg.dataset["maxAsvsPerSample"]), conditional_column=cond)
        if not getattr(self, "_said_attention", False):  # once a run (autobatch builds trial models too)
            self._said_attention = True
            log(f"attention: {model.attention_why}")
            if model.attention_warning:
                log(f"warning: {model.attention_warning}")
        if n_out and cfg.model["targetHead"].get("outputActivation") == "bounded":
            model.set_bounds(*output_bounds(cfg.model["targetHead"], data))
        if init_state is not None:
            # a new target head starts afresh unless the weights come from a finetune run
            load_starting_weights(model, init_state, fresh_head=self.stage == "finetune" and not cfg.init_is_finetune(),
                                  source=cfg.init_checkpoint)
        if cfg.spec["freezeBase"] and self.stage == "finetune" and not cfg.spec.get("unfreezeBaseAfterEpochs"):
            # frozen throughout: no gradient is computed for the base at all. A freeze *schedule*
            # keeps the base trainable and holds its learning rate at 0 instead (Schedule.hold),
            # so DDP sees the same parameters before and after the unfreeze.
            for p in model.base_parameters():
                p.requires_grad_(False)
        return model

    def setup_optimisation(self, data: Data, init_state: dict | None, resume: dict | None,
                           n_out: int = 0) -> Optimisation:
        s, acc, spec = self.settings, self.acc, self.cfg.spec
        model = self.build_model(data, init_state if resume is None else None, n_out)
        if resume is not None:  # before prepare: FSDP shards (and DDP broadcasts) what is loaded here
            # with trainer.ema a checkpoint's "model" is the average; the raw weights are "train_model"
            model.load_state_dict(resume.get("train_model", resume["model"]))
        opt = make_optimizer(param_groups(model, self.cfg.trainer), self.cfg.trainer)
        n_batches = len(B.epoch_batches(len(data.train), s.batch_size, self.world, s.seed, 0))
        if n_batches == 0:
            raise T.DataError(f"{len(data.train)} training samples are fewer than one batch of "
                              f"{s.batch_size} x {self.world} processes; lower spec.trainer.batchSize")
        steps_per_epoch = math.ceil(n_batches / s.accumulation)
        total = s.total_steps(steps_per_epoch)
        hold = 0
        if self.stage == "finetune" and spec["freezeBase"] and spec.get("unfreezeBaseAfterEpochs"):
            hold = spec["unfreezeBaseAfterEpochs"] * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, [Schedule(self.cfg.trainer, s.warmup(total), total, hold=hold if g["group"] == "base" else 0)
                  for g in opt.param_groups])
        wrapped, opt = acc.prepare(model, opt)
        model = torch.compile(wrapped, dynamic=True) if self.cfg.compile_enabled() else wrapped
        raw = acc.unwrap_model(wrapped)
        return Optimisation(model=model, raw=raw, wrapped=wrapped, optimizer=opt, scheduler=sched, total_steps=total,
                            steps_per_epoch=steps_per_epoch, batches_per_epoch=n_batches,
                            ema=make_ema(raw, s.ema, acc, resume))

    # -- the loop

    def fit(self, data: Data, init_state=None, resume: dict | None = None) -> FitResult:
        cfg = self.cfg
        objective = OBJECTIVES[self.stage](cfg, data)
        rng = torch.get_rng_state()
        autobatch.resolve(self, data, objective.n_outputs)  # batchSize / gradientAccumulation: auto
        torch.set_rng_state(rng)  # the probe's throwaway model does not shift the real one's init
        self.settings = TrainerSettings.read(cfg.trainer)
        o = self.setup_optimisation(data, init_state, resume, objective.n_outputs)
        self.meta = checkpoint_meta(cfg, data, getattr(objective, "parts", None))
        result = FitResult(state={"epoch": 0, "batch": 0, "step": 0, "best": None, "best_step": None,
                                  "bad_epochs": 0, "history": []})
        state = result.state
        if resume is not None:
            restore_checkpoint(o, resume, state, self.rank, self.folder)
        self.folder.update_status(phase="Running", stage=self.stage, total_steps=o.total_steps, world_size=self.world,
                                  steps_per_epoch=o.steps_per_epoch, device=str(self.device),
                                  attention_backend=o.raw.attention_backend, precision=cfg.precision)
        log(f"train: {len(data.train)} samples, val {len(data.val)}, {o.steps_per_epoch} steps/epoch, "
            f"{o.total_steps} steps, world {self.world}, device {self.device}, "
            f"params {sum(p.numel() for p in o.raw.parameters()):,}")
        self.profiler = StepProfiler(self.settings.profile, self.folder, self.stage, self.device, self.main,
                                     cfg.hardware["accelerator"])
        try:
            return with_best_validation(self.acc, self.cfg, o, objective, data, self.folder,
                                        self._fit_loop(o, objective, data, state, result))
        finally:
            log_profile(self.folder, self.profiler.finish(state["step"], o.total_steps))

    def _fit_loop(self, o: Optimisation, objective, data: Data, state: dict, result: FitResult) -> FitResult:
        s = self.settings
        done = state["step"] >= o.total_steps
        while not done and (s.max_steps or state["epoch"] < s.epochs):
            done = self.train_epoch(o, objective, data, state)
            epoch_end = state["batch"] >= o.batches_per_epoch
            if epoch_end:
                state["epoch"] += 1
                state["batch"] = 0
            final = done or (not s.max_steps and state["epoch"] >= s.epochs)
            if (epoch_end and state["epoch"] % s.validate_every == 0) or final:
                done = self._validation_step(o, objective, data, state, result) or done
            self.checkpoint(o, state, "last")
            request = self._stop_request()
            if request == "prune" and not done:
                raise Pruned()
            if request == "preempt" and not done:
                raise Preempted()
        return result

    def _validation_step(self, o: Optimisation, objective, data: Data, state: dict, result: FitResult) -> bool:
        """Validate, keep the best checkpoint, let a plateau schedule cut; True to stop early."""
        metric = self.settings.metric
        v = validate(self.acc, self.cfg, o.evaluated, objective, data)
        result.last_validation = v
        value = v.metrics.get(metric, v.metrics["val_loss"])
        better = improved(metric, value, state["best"])
        vm = dict(v.metrics, step=state["step"], epoch=state["epoch"], split="validation")
        if better:
            state["best"], state["best_step"], state["bad_epochs"] = value, state["step"], 0
        else:
            state["bad_epochs"] += 1
        if any([sched.on_validation(better) for sched in o.scheduler.lr_lambdas]):
            apply_schedule(o)
            log(f"plateau: {metric} stalled; learning rate now {o.scheduler.get_last_lr()[0]:.2e}")
        if self.main:
            log_validation(self.cfg, self.folder, vm, metric, state)
        result.history.append(vm)
        if better:
            self.checkpoint(o, state, "best")
            result.best_validation = v  # the outputs of a finetune are best.pt's
        patience = self.settings.patience
        if patience and state["bad_epochs"] >= patience:
            log(f"early stopping: {metric} did not improve for {patience} validations")
            return True
        return False

    # -- step 2: one epoch (or what is left of it after a resume)

    def train_epoch(self, o: Optimisation, objective, data: Data, state: dict) -> bool:
        """Train from state's batch to the end of the epoch; True when the last step is taken.
        Raises Preempted after a mid-epoch checkpoint when a stop was asked for."""
        s, acc = self.settings, self.acc
        epoch = state["epoch"]
        if self.cfg.dataset["asvSelection"] == "random":
            data.enc.redraw(self.cfg.dataset["maxAsvsPerSample"], [s.seed, epoch])
        gbatches = B.epoch_batches(len(data.train), s.batch_size, self.world, s.seed, epoch)
        window = {"t": time.time(), "samples": 0}
        running: dict[str, list] = {}
        o.model.train()
        for bi in range(state["batch"], len(gbatches)):
            self.profiler.start(state["step"] + 1)
            rows = data.train[B.shard(gbatches[bi], self.rank, self.world)]
            batch = B.to_torch(B.collate_numpy(data.enc, rows), self.device)
            if data.lookup is not None and bi + 1 < len(gbatches):  # the next step's UniFrac block
                data.lookup.prefetch(data.train[gbatches[bi + 1]])
            gen = torch.Generator().manual_seed(s.seed * 1_000_003 + epoch * 100_003 + bi)
            sync = (bi + 1) % s.accumulation == 0 or bi + 1 == len(gbatches)
            with acc.no_sync(o.model) if not sync and self.world > 1 else contextlib.nullcontext():
                with acc.autocast():
                    losses = objective.train_losses(o.model, batch, gen, acc, lambda: self._global_rows(batch["rows"]))
                acc.backward(losses["loss"] / s.accumulation)
            for k, v in losses.items():
                running.setdefault(k, []).append(float(v.detach()))
            window["samples"] += len(rows) * self.world
            if not sync:
                continue
            state["batch"] = bi + 1
            self._optimizer_step(o)
            state["step"] += 1
            step = state["step"]
            log_profile(self.folder, self.profiler.stop(step))
            if step % s.log_every == 0 or step == o.total_steps:
                self._log_window(o, running, window, step, epoch)
            request = self._stop_request()
            if request == "prune":
                raise Pruned()
            stop = request == "preempt"
            epoch_end = state["batch"] >= len(gbatches)
            if (step % s.checkpoint_every == 0 or stop) and not epoch_end:
                self.checkpoint(o, state, "last")
            if stop and not epoch_end:
                raise Preempted()
            if step >= o.total_steps:
                return True
        return False

    def _optimizer_step(self, o: Optimisation) -> None:
        if self.settings.gradient_clip:
            self.acc.clip_grad_norm_(o.model.parameters(), self.settings.gradient_clip)
        o.optimizer.step()
        o.scheduler.step()
        o.optimizer.zero_grad(set_to_none=True)
        if o.ema is not None:
            o.ema.update_parameters(o.raw)

    def _log_window(self, o: Optimisation, running: dict, window: dict, step: int, epoch: int) -> None:
        """The train log line of the steps since the last one; starts the next window."""
        dt = max(time.time() - window["t"], 1e-9)
        row = {k: float(np.mean(v)) for k, v in running.items()}
        row.update(step=step, epoch=epoch, lr=o.scheduler.get_last_lr()[0],
                   samples_per_s=window["samples"] / dt, peak_memory_mb=peak_memory_mb(self.device))
        if self.main:
            log_train(self.cfg, self.folder, self.device, row, o.total_steps)
        running.clear()
        window.update(t=time.time(), samples=0)

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

    # -- step 4: checkpoints

    def checkpoint(self, o: Optimisation, state: dict, which: str):
        save_checkpoint(self.acc, self.folder, o, state, which, self.meta)
