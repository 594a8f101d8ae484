"""Prefect tasks and the I/O they need: registry (MLflow), weights on disk, reports."""
