"""The Optuna study of one sweep generation, reached through Optuna's public API only: the
study, and the JournalStorage this module opens itself (whose trial lookups are the storage
interface's own methods)."""
from __future__ import annotations

from pathlib import Path

from aamctl.api.sweepspace import direction, parameters
from aamctl.phases import TrialState
from aamctl.sweeps.folder import JOURNAL


class SweepStudy:
    def __init__(self, folder: Path, name: str, generation: int, spec: dict, max_epochs: int):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = JournalStorage(JournalFileBackend(str(folder / JOURNAL)))
        study_name = f"{name}-g{generation}"
        self.study = optuna.create_study(study_name=study_name, storage=self.storage, direction=direction(spec),
                                         load_if_exists=True)
        self.study_id = self.storage.get_study_id_from_name(study_name)
        self.params = parameters(spec)
        # samplers hold no state in the journal: a restarted controller seeds past the trials so far
        self.study.sampler = _sampler(spec, self.params, seed=spec["algorithm"]["seed"] + len(self.study.trials))
        self.study.pruner = _pruner(spec["earlyStopping"], max_epochs)

    def ask(self, n: int) -> list:
        """n new trials, as frozen trials (number, params)."""
        dists = {p.path: p.distribution() for p in self.params}
        asked = [self.study.ask(fixed_distributions=dists) for _ in range(n)]
        return [self.frozen(t.number) for t in asked]

    def frozen(self, number: int):
        return self.storage.get_trial(self._trial_id(number))

    def running(self) -> list:
        """Trials handed out and not told yet."""
        import optuna

        return self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))

    def report(self, number: int, values: list[tuple[int, float]], pruning: bool) -> tuple[int, float] | None:
        """Report the validations Optuna has not seen; (epoch, value) where the pruner stops the
        trial (decided after each validation in turn, as the trial itself would have), else None."""
        import optuna

        seen = self.frozen(number).intermediate_values
        trial = optuna.trial.Trial(self.study, self._trial_id(number))
        pruned = None
        for epoch, value in values:
            if epoch in seen:
                continue
            trial.report(value, epoch)  # NaN too: a diverged trial is the first to prune
            if pruning and pruned is None and trial.should_prune():
                pruned = (epoch, value)
        return pruned

    def tell(self, number: int, state: str, value) -> None:
        from optuna.trial import TrialState as OptunaState

        ts = {TrialState.COMPLETE: OptunaState.COMPLETE, TrialState.PRUNED: OptunaState.PRUNED,
              TrialState.FAILED: OptunaState.FAIL}[state]
        try:
            self.study.tell(number, value if state == TrialState.COMPLETE else None, state=ts, skip_if_finished=True)
        except RuntimeError as exc:
            # GridSampler calls study.stop() once the grid is used up, which Optuna allows only
            # inside study.optimize; the trial's state is stored before that (a finally block)
            if "Study.stop" not in str(exc):
                raise

    def _trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)


def told_state(frozen) -> str | None:
    """A trial's state as the store words it, once Optuna was told how it ended; else None."""
    if not frozen.state.is_finished():
        return None
    return {"COMPLETE": TrialState.COMPLETE, "PRUNED": TrialState.PRUNED}.get(frozen.state.name, TrialState.FAILED)


def _sampler(spec: dict, params: list, seed: int):
    import optuna

    algo = spec["algorithm"]
    if algo["type"] == "grid":
        return optuna.samplers.GridSampler({p.path: p.grid() for p in params}, seed=seed)
    if algo["type"] == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=algo["startupTrials"])


def _pruner(es: dict, max_epochs: int):
    import optuna

    if es["type"] == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=es["startupTrials"], n_warmup_steps=es["warmupEpochs"])
    if es["type"] == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=es["minEpochs"], max_resource=max_epochs,
                                              reduction_factor=es["reductionFactor"])
    return optuna.pruners.NopPruner()
