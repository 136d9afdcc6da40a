"""Experiments: compare models, sweep hyperparameters, tune, plot runs, write reports.

    compare.py   plan_compare: several models on one prepared split
    sweep.py     plan_sweep: a grid or one axis at a time around a base config
    core.py      the shared part: points, runs, resume, execution (core.execute trains a plan)
    tune.py      ctrlab tune: an Optuna search, one trial = one training run
    layout.py    experiment and tune directories on disk and their readers (no torch)
    results.py   mean ± std over seeds, the paired significance test, results.md / results.csv
    plots.py     charts (matplotlib)
    report.py    report.html, self-contained

Modules are imported on use, so ``import ctrlab.experiments`` stays cheap; the results table,
charts and report (layout, results, plots, report) import no torch.
"""
