"""The equal-compute studies: every arm at scratch's FLOPs, held-out seeds, the savings law."""
