"""Experiments: compare models, sweep hyperparameters, plot runs, write reports.

    compare.py   plan_compare / run_compare: several models on one prepared split
    sweep.py     plan_sweep / run_sweep: a grid or one axis at a time around a base config
    core.py      the shared part: run layout, experiment.json, resume, execution
    results.py   mean ± std over seeds, the paired significance test, results.md / results.csv
    plots.py     charts (matplotlib)
    report.py    report.html, self-contained

Modules are imported on use, so ``import ctrlab.experiments`` stays cheap (no torch, no matplotlib).
"""
