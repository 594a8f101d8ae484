"""Writes the shipped downstream tasks' documents (``tasks/downstream/data/*.jsonl``), deterministically:

    python -m tasks.downstream.make_data

``staged_arith`` (multiple choice): "12 + 7 =" with four seeded answers, one right. ``staged_words``
(loglikelihood): sentences of this project's own docs/architecture.md, the last word to predict. Both are
this project's text, free to redistribute; 20 documents each, so that ``--tasks default`` takes seconds.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent.parent
N = 20


def arith(rng: random.Random) -> list[dict]:
    docs = []
    for _ in range(N):
        a, b = rng.randint(1, 49), rng.randint(1, 49)
        wrong = rng.sample(sorted({a + b + d for d in (-10, -2, -1, 1, 2, 10)} - {a + b}), 3)
        choices = [a + b, *wrong]
        rng.shuffle(choices)
        docs.append({"question": f"{a} + {b} =", "choices": [str(c) for c in choices], "label": choices.index(a + b)})
    return docs


def words() -> list[dict]:
    text = re.sub(r"[`*|]", "", (ROOT / "docs" / "architecture.md").read_text())
    sentences = [s.strip() for s in re.split(r"(?<=[.:])\s+", text.replace("\n", " "))]
    picked = [s.rstrip(".:") for s in sentences if 8 <= len(s.split()) <= 30 and s.rstrip(".:")[-1:].isalpha()]
    return [{"context": " ".join(s.split()[:-1]), "target": " " + s.split()[-1]} for s in picked[:N]]


def main() -> None:
    for name, docs in (("staged_arith", arith(random.Random(0))), ("staged_words", words())):
        (DATA / f"{name}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
        print(f"{name}: {len(docs)} documents")


if __name__ == "__main__":
    main()
