"""The `staged` command line: one module per command group (main.py wires them)."""
