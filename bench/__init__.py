"""Staged-vs-scratch benchmark: a thin layer over models/ (train, grow, ByteCorpus) that measures
time- and FLOPs-to-target side by side in one process, plus efficiency figures."""
