"""A registered version as an lm-evaluation-harness model: any family, through models/families/family.py.

    lm = StagedLM(model, tokenizer)           # what tasks.registry.load_version returns
    lm_eval.simple_evaluate(model=lm, tasks=[...])

One adapter for every family (the byte GPT has no transformers class, so HFLM cannot load it; a Llama
version goes the same way, so both are scored by the same code): ``loglikelihood`` (multiple-choice and
loglikelihood tasks) and ``loglikelihood_rolling`` (perplexity tasks) score the continuation's tokens
under ``family.logits``, the context cut to the model's window from the left. Generation tasks are refused.
"""

from __future__ import annotations

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tokenizers import Tokenizer
from torch import nn

from models.data import tokenizer as tokenizers
from models.errors import UserError
from models.families.lookup import family_of


class GenerationUnsupported(UserError, ValueError):
    """A task that generates text: not scored by this adapter (one line, for the CLI)."""


@register_model("staged")
class StagedLM(LM):
    def __init__(self, model: nn.Module, tokenizer: Tokenizer):
        super().__init__()
        self.model, self.tok, self.family = model.eval(), tokenizer, family_of(model)
        self.window = model.cfg.context

    def _ids(self, text: str) -> list[int]:
        return tokenizers.encode(self.tok, text.encode("utf-8")).tolist()

    @torch.no_grad()
    def _score(self, context: list[int], continuation: list[int]) -> tuple[float, bool]:
        """Sum of log p(continuation | context) and whether every token is the greedy one."""
        if not context:  # nothing to condition the first token on: it is context (no BOS in these vocabularies)
            context, continuation = continuation[:1], continuation[1:]
        ids = (context + continuation)[-(self.window + 1) :]
        x = torch.tensor([ids[:-1]])
        logp = torch.log_softmax(self.family.logits(self.model, x).float()[0], dim=-1)
        n = min(len(continuation), len(ids) - 1)  # a continuation longer than the window: its last tokens
        targets = torch.tensor(ids[-n:]) if n else torch.tensor([], dtype=torch.long)
        rows = logp[-n:] if n else logp[:0]
        total = rows.gather(1, targets[:, None]).sum().item()
        return total, bool((rows.argmax(-1) == targets).all()) if n else True

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return [self._score(self._ids(ctx), self._ids(cont)) for ctx, cont in (r.args for r in requests)]

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for (text,) in (r.args[:1] for r in requests):
            ids, total = self._ids(text), 0.0
            for start in range(0, len(ids), self.window):  # disjoint windows, each conditioned on the one before
                total += self._score(ids[max(0, start - self.window) : start], ids[start : start + self.window])[0]
            out.append(total)
        return out

    def generate_until(self, requests) -> list[str]:
        raise GenerationUnsupported("generation tasks (generate_until) are not supported: pick likelihood tasks")
