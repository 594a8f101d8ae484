"""Training: the loop (loop.py), its stage plan and policies, the step's tools, AdamW moments, parallelism, speed."""
