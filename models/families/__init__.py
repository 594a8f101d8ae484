"""The model families: the interface (family.py), the lookup by ``arch`` (lookup.py), one width driver (width.py), the
byte GPT (gpt.py), the transformers decoders (llama.py), their members (decoders.py) and the
Mixtral MoE that sparse upcycling grows into (mixtral.py)."""
