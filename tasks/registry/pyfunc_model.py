"""MLflow models-from-code entry point: the pyfunc flavour of a staged model version.

MLflow copies this file into the version's ``model/`` directory and executes it on
``mlflow.pyfunc.load_model``; it sits next to ``model.safetensors`` (or its shards and index) and
its config, which it reads from its own directory. No Python object is pickled, at logging or at
loading: the weights are safetensors, the config JSON, and the code is this file plus the version's copy of
the ``models`` package (which asks the model's family how to build and run it; a decoder's is transformers').

Input: token ids, int64 of shape (batch, T) with T <= the model's context (bytes for the byte GPT).
Output: float32 logits of shape (batch, T, vocab): exactly what the model returns.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch

from models.families.lookup import family_of, load_dir

HERE = Path(__file__).resolve().parent  # MLflow loads this file from the model directory itself


class StagedGPT(mlflow.pyfunc.PythonModel):
    """Logits for token ids, from the weights and config beside this file."""

    _skip_type_hint_validation = True  # the signature is explicit (tasks/registry/pyfunc.py); no type-hint wrapping

    def load_context(self, context) -> None:
        self.model = load_dir(HERE)  # one file or shards, as its family saved them
        self.family = family_of(self.model)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        ids = torch.as_tensor(np.asarray(model_input, dtype=np.int64))
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        with torch.no_grad():
            return self.family.logits(self.model, ids).float().numpy()


mlflow.models.set_model(StagedGPT())
