"""`staged servers`: PostgreSQL, S3, Prefect and MLflow on 127.0.0.1 for local use."""
