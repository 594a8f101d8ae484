"""What the pipeline itself costs: efficiency ratios, orchestration overhead, registration against its floor."""
