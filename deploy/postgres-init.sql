-- Runs once, on an empty data directory: the Prefect database is POSTGRES_DB, MLflow gets its own.
CREATE DATABASE mlflow;
