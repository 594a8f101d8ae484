"""What the tasks return to the flow (and the flow to its caller): plain, serialisable values."""

from __future__ import annotations

from pydantic import BaseModel

from tasks.registry import ModelRef

Curve = list[tuple[int, float]]  # (global step, loss)


class StageResult(BaseModel):
    ref: ModelRef
    params: int
    steps: int
    val_loss_init: float
    val_loss: float
    seconds: float
    skipped: bool  # found already registered: nothing was trained
    train_curve: Curve
    val_curve: Curve
    resumed_from: int | None = None  # the checkpoint step this attempt started from
    tokens: int = 0  # trained on in this stage
    tokens_per_s: float | None = None  # training throughput of the attempt that finished the stage
    train_seconds: float = 0.0  # of ``seconds``, inside the training loop and outside its hooks (this attempt)
    phase_seconds: dict[str, float] = {}  # of ``seconds``: loading the parent, training, registering (this attempt)
    processes: int = 1  # nproc x nnodes that trained it (a GPU each on a GPU pool)
    gpu_seconds: float = 0.0  # processes x wall seconds of this attempt up to registration (0: skipped)


class Figures(BaseModel):
    """A version's held-out metrics and its fixed generation sample."""

    val_loss: float  # nats per token (per byte for the byte vocabulary)
    bpb: float  # bits per byte of the text the tokens stand for
    tokens: int  # tokens predicted
    sample: str
    bpt: float | None = None  # bits per token
    bytes: int | None = None  # bytes of text those tokens stand for

    scores: dict[str, dict[str, float]] = {}  # gate.metric task:<name>: the downstream scores (lm_eval)

    def metric(self, name: str) -> float:
        """The gate's figure, lower is better: a downstream score (``task:<name>[/<metric>]``) negated."""
        if not name.startswith("task:"):
            return getattr(self, name)
        task, _, metric = name.removeprefix("task:").partition("/")
        row = self.scores[task]
        return -row[metric or next(iter(row))]


class GateResult(BaseModel):
    name: str
    version: str
    decision: str  # promoted | refused | kept (the candidate already is the champion)
    metric: str
    margin: float
    candidate: Figures
    champion_before: str | None  # version that held the alias when the gate ran
    champion: Figures | None
    reason: str
