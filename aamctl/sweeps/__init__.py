"""Sweep: a hyperparameter search whose trials are ordinary Runs.

The search space and the choice of trials belong to Optuna (samplers, pruners), whose state is a
journal file in the sweep's folder (no server; appends are locked, so it is safe on a shared file
system). The index that `get`, `describe` and `status` read is SQLite (the `sweeps` and `trials`
tables): reading it needs neither Optuna nor the journal, so a leaderboard of 1,000 trials is fast.

One controller process drives a sweep generation (a flock in the sweep folder keeps it alone):
it reads each running trial's validation metrics from its run folder, reports them to Optuna,
writes the PRUNE flag into a trial the pruner stops, tells Optuna the objective of a finished
trial, and asks for new trials while fewer than `parallelism` run. Trials are planned through
apply (validation, records, generations) and submitted by the controller: one process each on
the local executor, one job array per batch on SLURM. Every step reads its state back from the
journal, the store and the run folders, so a controller that dies is replaced by re-applying
the Sweep and nothing finished runs twice.

    folder.py       a generation's folder: its files, whether a controller holds it
    launch.py       apply's part (find or start the generation and its controller), wait, cancel
    controller.py   the controller's loop: follow trials, start new ones, end the generation
    study.py        the Optuna study, through Optuna's public API only
    array.py        a batch of trials as one SLURM job array
    leaderboard.py  trials best first, from SQLite and the run folders
    plots.py        objective.png, parameters.png, importance.png

The search space and the trials' documents are part of the manifest language: api/sweepspace.py;
the Sweep's rules: api/rules/sweep.py.
"""
