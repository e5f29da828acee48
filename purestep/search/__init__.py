"""Hyperparameter search with Optuna over the functional core (`cli -> search -> core`).

space      the default search space and TOML overrides (no optuna, no torch)
objective  one trial: train on the fit split, score on the validation split
study      study definition, samplers, pruners, the tutorial's baseline trial
storage    storage URLs (sqlite, postgresql, mysql, journal) with one-line errors
runner     ask-and-tell: N finished trials in total, interrupts never leave a trial RUNNING
tune       the whole run: prepare, run here or in worker processes, best.json, final re-train
report     top trials, importances and plots of a study

Importing `purestep` does not import this package (nor optuna).
"""
