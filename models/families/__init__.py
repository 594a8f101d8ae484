"""The model families: the interface (family.py), the lookup by ``arch`` (lookup.py), one module per family."""
