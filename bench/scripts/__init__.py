"""One-off measurements, each run as ``python -m bench.scripts.<name>`` (its docstring says how)."""
