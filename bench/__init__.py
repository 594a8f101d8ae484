"""Staged-vs-scratch benchmark: every arm trained through the stage driver (tasks/driver.py), tuned alike with
Optuna on tuning seeds, reported on held-out seeds at several budgets, plus efficiency and orchestration figures."""
