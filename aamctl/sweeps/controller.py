"""The controller of one sweep generation: a loop of passes, each of which follows the running
trials (reports their validations, prunes, records how they ended), starts new ones while fewer
than `parallelism` run, and decides whether the generation is over. Every pass starts from what
the journal, the store and the run folders say, so a new controller takes over where one died."""
from __future__ import annotations

import fcntl
import json
import math
import os
import time
from pathlib import Path

from aam_runtime import runfolder as RF

from aamctl.api.resolve import Resolved
from aamctl.api.sweepspace import (as_documents, base_model, grid_size, parameters, stored_template, trial_manifests,
                                   trial_name)
from aamctl.errors import AamError, Diagnostic
from aamctl.phases import TERMINAL_SWEEP, TERMINAL_TRIAL, RunPhase, SweepPhase, TrialState
from aamctl.runs.apply import apply_manifests, submit_plan
from aamctl.runs.executors import LocalExecutor, executor_for, proc_start_time
from aamctl.runs.reconcile import reconcile
from aamctl.sweeps.array import submit_array
from aamctl.sweeps.folder import LOCK, PLOTS
from aamctl.sweeps.leaderboard import counts, objective_value, validations
from aamctl.sweeps.plots import write_plots
from aamctl.sweeps.study import SweepStudy, told_state


class Controller:
    """Drives one sweep generation until its trials are done."""

    def __init__(self, store, home: Path, name: str, poll: float | None = None, echo=None):
        # seconds between passes: trials report once per epoch, so a second is plenty (tests
        # with epochs of a fraction of a second lower it through AAM_SWEEP_POLL)
        poll = poll if poll is not None else float(os.environ.get("AAM_SWEEP_POLL", "1.0"))
        self.store, self.home, self.name, self.poll = store, Path(home), name, poll
        self.echo = echo or (lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True))
        row = store.latest_sweep(name)
        if row is None:
            raise AamError(Diagnostic(f"sweep '{name}' has never been applied", file="aamctl",
                                      hint="aamctl apply -f SWEEP.yaml"))
        self.generation = row["generation"]
        self.folder = Path(row["folder"])
        self.study: SweepStudy | None = None
        self._plotted = -1

    def manifest(self) -> dict:
        m = self.store.get_object("Sweep", self.name)
        if m is None:
            raise AamError(Diagnostic(f"sweep '{self.name}' was deleted", file="aamctl"))
        return m

    def open_study(self, spec: dict) -> SweepStudy:
        epochs = stored_template(self.store, self.manifest())["trainer"]["epochs"]
        self.study = SweepStudy(self.folder, self.name, self.generation, spec, max_epochs=epochs)
        return self.study

    # -- the loop

    def run(self) -> str:
        lock = os.open(self.folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.echo("another controller drives this sweep; exiting")
            return "busy"
        self.store.update_sweep(self.name, self.generation, pid=os.getpid(), pid_start=proc_start_time(os.getpid()))
        self.echo(f"controller of sweep/{self.name} generation {self.generation} started (pid {os.getpid()})")
        try:
            while True:
                phase = self.step()
                if phase in TERMINAL_SWEEP:
                    self.echo(f"sweep/{self.name} {phase}")
                    return phase
                time.sleep(self.poll)
        except AamError as exc:
            self.store.update_sweep(self.name, self.generation, phase=SweepPhase.FAILED,
                                    reason=exc.diagnostics[0].message, finished=time.time())
            self.echo("error: " + exc.render())
            return SweepPhase.FAILED
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)

    def step(self) -> str:
        """One pass: follow running trials, start new ones, decide whether the sweep is done."""
        manifest = self.manifest()
        spec = manifest["spec"]
        row = self.store.latest_sweep(self.name)
        if row["generation"] != self.generation or row["phase"] == SweepPhase.CANCELLED:
            return SweepPhase.CANCELLED  # cancelled, or a new search space took over
        if self.study is None:  # this controller's first pass: take over from the one before
            self.open_study(spec)
            self._finish_creating(manifest)
        self._adopt_orphans(manifest)
        for t in self.store.trials(self.name, self.generation):
            if t["state"] not in TERMINAL_TRIAL:
                self._follow(t, spec)
        limit = spec["maxTrials"]
        if spec["algorithm"]["type"] == "grid":
            limit = min(limit, grid_size(parameters(spec)))
        trials, tally = self._start_more(manifest, row["executor"], limit)
        active = tally[TrialState.RUNNING] + tally[TrialState.CREATING]
        if tally[TrialState.COMPLETE] != self._plotted:
            self._plot(trials, spec)
        if active:
            return SweepPhase.RUNNING
        if tally[TrialState.FAILED] > spec["maxFailedTrials"]:
            reason = f"{tally[TrialState.FAILED]} trials failed (maxFailedTrials {spec['maxFailedTrials']})"
            return self._end(SweepPhase.FAILED, reason)
        if len(trials) >= limit:
            if tally[TrialState.COMPLETE]:
                return self._end(SweepPhase.SUCCEEDED, None)
            return self._end(SweepPhase.FAILED, "no trial completed")
        return SweepPhase.RUNNING

    def _start_more(self, manifest: dict, executor: str, limit: int) -> tuple[list, dict]:
        """Start trials while there is room (none once too many failed); the trials and their counts."""
        spec = manifest["spec"]
        trials = self.store.trials(self.name, self.generation)
        tally = counts(trials)
        if tally[TrialState.FAILED] > spec["maxFailedTrials"]:
            return trials, tally
        active = tally[TrialState.RUNNING] + tally[TrialState.CREATING]
        room = min(spec["parallelism"] - active, limit - len(trials))
        if executor == "slurm" and spec["algorithm"]["type"] != "tpe":
            # trials that do not learn from each other go to SLURM as one job array, which
            # runs `parallelism` of them at once (%P); tpe asks in batches of `parallelism`
            room = limit - len(trials) if not active else 0
        if room <= 0:
            return trials, tally
        self._create(self.study.ask(room), manifest)
        trials = self.store.trials(self.name, self.generation)
        return trials, counts(trials)

    def _end(self, phase: SweepPhase, reason: str | None) -> str:
        self.store.update_sweep(self.name, self.generation, phase=phase, reason=reason, finished=time.time())
        return phase

    # -- trials

    def _adopt_orphans(self, manifest: dict) -> None:
        """Trials Optuna handed out that the store does not know (a controller died in between)."""
        known = {t["number"] for t in self.store.trials(self.name, self.generation)}
        for ft in self.study.running():
            if ft.number not in known:
                self.echo(f"trial {ft.number}: asked before the last controller stopped; starting it now")
                self._create([ft], manifest)

    def _finish_creating(self, manifest: dict) -> None:
        """Trials the controller before this one was creating when it stopped (this one never
        leaves a trial Creating: _create ends each Running or Failed). Each goes on from the step
        it reached, so it neither fails for it nor runs twice:
        - its run was started (a pid or job id is recorded, or its launcher is found alive, or it
          already exited): the trial follows that run;
        - its run was reserved, perhaps written, but never started: it is planned again under the
          same generation and started;
        - no run was reserved: it is created as any new trial.
        One window stays: a SLURM array that sbatch accepted just before the controller died,
        before the job ids were stored, is submitted again (squeue names no owner for it)."""
        again, reuse = [], {}
        for t in self.store.trials(self.name, self.generation):
            if t["state"] != TrialState.CREATING:
                continue
            row = _reserved_run(self.store, self.name, t)
            if row is not None and _was_started(self.store, row):
                self.store.put_trial(self.name, self.generation, t["number"], run_generation=row["generation"],
                                     state=TrialState.RUNNING)
                self.echo(f"trial {t['number']}: run/{row['name']} generation {row['generation']} was started "
                          "before the last controller stopped; following it")
                continue
            frozen = self.study.frozen(t["number"])
            told = told_state(frozen)
            if told is not None:  # _create told Optuna it failed to plan, then stopped
                self._finish(t["number"], told, frozen.value, tell=False)
                continue
            if row is not None:
                reuse[row["name"]] = row["generation"]
            self.echo(f"trial {t['number']}: the last controller stopped while creating it; creating it again"
                      + (f" (run/{row['name']} generation {row['generation']})" if row is not None else ""))
            again.append(frozen)
        if again:
            self._create(again, manifest, reuse=reuse)

    def _create(self, frozen: list, manifest: dict, reuse: dict[str, int] | None = None) -> None:
        """Plan the trials' Runs through apply (held), then submit them: one process each
        (local) or one job array (SLURM). `reuse`: run generations reserved but never started
        (see _finish_creating)."""
        plans = [p for p in (self._plan(ft, manifest, reuse or {}) for ft in frozen) if p is not None]
        if not plans:
            return
        if plans[0][1].executor == "slurm":
            spec = manifest["spec"]
            job = submit_array(self.store, self.folder, self.name, self.generation, [p for _, p in plans],
                               spec["parallelism"])
            self.echo(f"submitted job array {job} ({len(plans)} trials, at most {spec['parallelism']} at once)")
        else:
            ex = executor_for("local")
            for number, plan in plans:
                try:
                    submit_plan(self.store, plan, ex, echo=lambda t: None)
                except AamError as exc:
                    self._finish(number, TrialState.FAILED, None, reason=exc.diagnostics[0].message)
        for number, plan in plans:
            r = self.store.run(plan.name, plan.generation)
            if r is not None and r["phase"] != RunPhase.FAILED:
                self.store.put_trial(self.name, self.generation, number, state=TrialState.RUNNING)

    def _plan(self, ft, manifest: dict, reuse: dict[str, int]):
        """One trial's Run planned and written, not submitted: (number, plan), or None when it
        cannot be planned (the trial fails)."""
        try:
            plan, assignment = plan_trial(self.store, self.home, self.name, self.generation, ft, manifest, reuse)
        except AamError as exc:
            self._finish(ft.number, TrialState.FAILED, None, reason=exc.diagnostics[0].message)
            self.echo(f"trial {ft.number}: could not be planned: {exc.render()}")
            return None
        self.echo(f"trial {ft.number}: run/{plan.name} generation {plan.generation} {json.dumps(assignment)}")
        return ft.number, plan

    def _follow(self, t, spec: dict) -> None:
        """Report a running trial's new validations; prune it, or record how it ended."""
        if t["run_generation"] is None:
            # _finish_creating links or re-creates every such trial before this is called; a trial
            # left with no run here (it could not be planned again) never gets one: fail it
            # rather than wait on it forever
            self._finish(t["number"], TrialState.FAILED, None,
                         reason="never started: the controller creating it stopped first")
            return
        row = self.store.run(t["run_name"], t["run_generation"])
        if row is None:
            self._finish(t["number"], TrialState.FAILED, None, reason="its run is gone from the store")
            return
        (row, phase, reason, status), = reconcile(self.store, [row])
        frozen = self.study.frozen(t["number"])
        told = told_state(frozen)
        if told is not None:  # told by an earlier controller that died before it updated the store
            self._finish(t["number"], told, frozen.value, tell=False)
            return
        folder = Path(row["folder"])
        metric = spec["objective"]["metric"]
        pruning = phase == RunPhase.RUNNING and not (folder / RF.PRUNE_FLAG).exists()
        pruned = self.study.report(t["number"], validations(folder, metric), pruning)
        if pruned is not None:
            epoch, value = pruned
            RF.atomic_write(folder / RF.PRUNE_FLAG, f"pruned by the sweep controller at epoch {epoch}\n")
            self.echo(f"trial {t['number']}: pruned at epoch {epoch} ({metric} {value:.6g})")
        if phase in (RunPhase.RUNNING, RunPhase.PENDING, RunPhase.QUEUED, RunPhase.REQUEUED):
            return
        if phase == RunPhase.SUCCEEDED:
            value = objective_value(folder, metric)
            if value is None or not math.isfinite(value):
                self._finish(t["number"], TrialState.FAILED, None, reason=f"no finite {metric} in its metrics")
            else:
                self._finish(t["number"], TrialState.COMPLETE, value)
        elif phase == RunPhase.PRUNED:
            self._finish(t["number"], TrialState.PRUNED, None)
        else:
            self._finish(t["number"], TrialState.FAILED, None, reason=reason or phase)

    def _finish(self, number: int, state: str, value, reason: str | None = None, tell: bool = True) -> None:
        if tell and self.study is not None:
            self.study.tell(number, state, value)
        self.store.put_trial(self.name, self.generation, number, state=state, value=value, reason=reason,
                             finished=time.time())
        self.echo(f"trial {number}: {state}" + (f" {value:.6g}" if value is not None else "")
                  + (f" ({reason})" if reason else ""))

    def _plot(self, trials, spec: dict) -> None:
        try:
            write_plots(self.folder / PLOTS, trials, spec, self.study.study if self.study else None)
        except Exception as exc:  # plots are a convenience: a sweep never fails for one
            self.echo(f"warning: plots not written ({type(exc).__name__}: {exc})")
        self._plotted = counts(trials)[TrialState.COMPLETE]


def _was_started(store, row) -> bool:
    """Was a reserved trial run handed to its executor (a pid or job id is recorded, it already
    exited, or its local launcher is found alive: then the row learns it)?"""
    if not row["folder"]:
        return False
    folder = Path(row["folder"])
    if row["pid"] or row["job_id"] or (folder / RF.EXIT_CODE).exists():
        return True
    if row["executor"] != "local" or not (folder / RF.LAUNCHER_LOG).exists():
        return False
    found = LocalExecutor().find(folder)
    if found is None:
        return False
    store.update_run(row["name"], row["generation"], **found)
    store.add_event(row["name"], row["generation"], "Submitted", json.dumps(found))
    return True


def plan_trial(store, home: Path, sweep: str, generation: int, ft, manifest: dict, reuse: dict[str, int]):
    """Plan and write one trial's Run (and derived Model) through apply, held (not submitted);
    the trial row records its run. (The plan, the trial's parameter values.)"""
    params = parameters(manifest["spec"])
    template = stored_template(store, manifest)
    model = base_model(Resolved(given=[], objects={}, store=store), template) \
        if any(p.target == "model" for p in params) else None
    assignment = {p.path: p.decode(ft.params[p.path]) for p in params if p.path in ft.params}
    name = trial_name(sweep, ft.number)
    store.put_trial(sweep, generation, ft.number, run_name=name, state=TrialState.CREATING,
                    params=json.dumps(assignment))
    labels = manifest["metadata"].get("labels", {})
    docs = as_documents(trial_manifests(sweep, labels, template, ft.number, assignment, params, model),
                        f"sweep/{sweep} trial {ft.number}")
    result = apply_manifests(store, None, documents=docs, home=home, force=True, preflight=False, hold=True,
                             echo=lambda _t: None, reuse={name: reuse[name]} if name in reuse else None)
    plan = result.held[0]
    store.put_trial(sweep, generation, ft.number, run_generation=plan.generation)
    return plan, assignment


def _reserved_run(store, sweep: str, t):
    """The run row a Creating trial reserved, if it got that far: the linked one, or else the
    newest row of its run name made for this trial after the trial was."""
    if t["run_generation"] is not None:
        return store.run(t["run_name"], t["run_generation"])
    row = store.latest_run(t["run_name"])
    if row is None or row["created"] < t["created"]:
        return None
    try:
        labels = json.loads(row["labels"] or "{}")
    except ValueError:
        return None
    if labels.get("sweep") != sweep or labels.get("trial") != str(t["number"]):
        return None
    return row
