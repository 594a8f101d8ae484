"""Deployment files (compose, work pools, prefect.yaml) and, in local/, the one-machine server tooling."""
