"""A stage under torchrun: launched from the stage task (launch.py), one worker per rank (worker.py).

The door of this room: import these names from ``tasks.parallel``.
"""

from tasks.parallel.launch import TorchrunFailed, launch

__all__ = ["TorchrunFailed", "launch"]
