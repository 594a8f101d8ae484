"""A trained stage's registrable directory, written once where the trained model is: in the stage task, or
on rank 0 under torchrun (tasks/parallel/worker.py), into the directory the registry will take as it is.

    trained = write_version(directory, run, vocabulary, spec, corpus)   # a Trained: TrainResult + Version
    register(..., model_dir=directory, hashes=trained.version.hashes)   # tasks/record.py: nothing reloaded

The directory is a Hugging Face model directory (weights, config, tokenizer) with the AdamW moments, and
also an MLflow pyfunc model. Every large file is hashed as it is written, never again; what registration
needs of the model itself (its parameter count, a mixture's per-source report) is measured here too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from models.data import tokenizer as tokenizers
from models.data.corpus import Corpus
from models.data.mixture import MixtureReport, report
from models.data.tokenizer import Vocabulary
from models.families.family import num_params
from models.train.loop import TrainResult, evaluate
from tasks.config import StageSpec
from tasks.driver import StageRun
from tasks.registry import add_pyfunc
from tasks.store import save_model, save_optimizer

EXAMPLE = b"def main():\n    "  # the pyfunc model's input example, in the stage's tokens


class Version(BaseModel):
    """What a written version directory holds, as registration reads it."""

    weights_sha256: str
    optimizer_sha256: str
    hashes: dict[str, str]  # sha256 of each large file by relative path, as written (for the manifest)
    params: int
    mixture: MixtureReport | None = None  # data.sources: shares, cursors and validation loss per source


@dataclass(frozen=True)
class Trained:
    """A stage trained and its version written: everything the task registers and reports."""

    result: TrainResult  # its moments are in the directory, not here
    resumed_from: int | None  # the checkpoint step this attempt started from
    version: Version


def write_version(directory: Path, run: StageRun, vocabulary: Vocabulary, spec: StageSpec, corpus: Corpus) -> Trained:
    """Write the trained model of ``run`` into ``directory`` as a registrable version; measure what registration
    reads of it."""
    model, result = run.model, run.result
    hashes: dict[str, str] = {}
    sha = save_model(model, directory, vocabulary.tokenizer, hashes=hashes)  # a decoder's: a Hugging Face directory
    optimizer_sha = save_optimizer(result.moments, directory, hashes)
    add_pyfunc(directory, spec.model, tokenizers.encode(vocabulary.tokenizer, EXAMPLE).tolist())
    mixture = None
    if corpus.cursors(result.cursor) is not None:  # a mixture: per-source shares, cursors and validation loss
        t = spec.train
        mixture = report(corpus, model, result.cursor, t.eval_batches, t.batch_size, evaluate)
    version = Version(
        weights_sha256=sha, optimizer_sha256=optimizer_sha, hashes=hashes, params=num_params(model), mixture=mixture
    )
    return Trained(dataclasses.replace(result, moments={}), run.resumed_from, version)
