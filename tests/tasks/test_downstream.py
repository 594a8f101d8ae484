"""staged eval --tasks (lm-evaluation-harness, offline) on a byte-GPT and a Llama version, and a gate on a task.

One store for the module: two one-stage byte-GPT pipelines gated on ``task:staged_arith/acc`` and one
one-stage Llama pipeline; lm_eval's import and set-up (~10 s) is paid once per process.
"""

import pytest
from repo import REPO_ROOT

from flows.cli.main import main
from flows.staged import staged_training
from tasks.config import load_config
from tasks.registry import Registry, read_scores

pytestmark = pytest.mark.integration
CONFIGS = REPO_ROOT / "configs"
ONE_STAGE = ["stages=[{n_layers: 2, steps: 6}]", "gate.eval_batches=2", "gate.batch_size=4", "checkpoint.every=0"]
GATED = ONE_STAGE + ["gate.metric=task:staged_arith/acc"]
LLAMA = ONE_STAGE + ["data.max_bytes=200000", "tokenizer.train.vocab_size=300", "model.d_model=32", "model.d_ff=64"]
LLAMA += ["model.context=32", "train.batch_size=4", "gate.enabled=false"]


@pytest.fixture(scope="module")
def store(prefect_harness, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("downstream")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        for extra in (["seed=1"], ["seed=2", "stages.0.steps=12"]):  # versions 1 and 2, each gated on the task
            staged_training(load_config(CONFIGS / "smoke.yaml", GATED + extra), str(workdir))
        staged_training(load_config(CONFIGS / "llama-demo.yaml", LLAMA), str(workdir))
    return workdir


def test_a_gate_on_a_task_picks_the_champion_by_that_score(store):
    registry = Registry.resolve(store)
    client = registry.client()
    v1, v2 = (client.get_model_version("staged-smoke", v) for v in ("1", "2"))
    acc = [read_scores(registry, v.run_id)["staged_arith"]["acc"] for v in (v1, v2)]  # logged by the gate
    assert v2.tags["gate_metric"] == "task:staged_arith/acc" and v1.tags["gate_decision"] == "promoted"
    champion = client.get_registered_model("staged-smoke").aliases["champion"]
    assert str(champion) == ("2" if acc[1] - acc[0] > 0.01 else "1"), (acc, v2.tags["gate_reason"])
    assert v2.tags["gate_decision"] == ("promoted" if acc[1] - acc[0] > 0.01 else "refused")


@pytest.mark.parametrize("uri", ["models:/staged-smoke/1", "models:/staged-llama/1"])
def test_eval_default_tasks_prints_logs_and_cards_the_scores(store, uri, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["eval", uri, "--tasks", "default", "--workdir", str(store)]) == 0
    out = capsys.readouterr().out
    assert "staged_arith" in out and "staged_words" in out and "perplexity" in out
    registry = Registry.resolve(store)
    name, version = uri.removeprefix("models:/").split("/")
    mv = registry.client().get_model_version(name, version)
    scores = read_scores(registry, mv.run_id)  # eval/<task>/<metric> on the version's run
    assert 0 <= scores["staged_arith"]["acc"] <= 1 and scores["staged_words"]["perplexity"] > 1
    assert "## Downstream tasks" in mv.description and "staged_words" in mv.description  # the model card


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tasks", "nope"], "unknown task nope"),
        (["--tasks", "default", "--include", "{tmp}"], "bad.yaml' does not parse"),
    ],
)
def test_a_bad_task_is_one_line_and_exit_2(store, args, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "bad.yaml").write_text("task: bad\ndataset_path: [json\n")
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "models:/staged-smoke/1", "--workdir", str(store), *[a.format(tmp=tmp_path) for a in args]])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and message in lines[0], lines


def test_a_gate_on_an_unknown_task_stops_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(CONFIGS / "smoke.yaml"), "--workdir", str(tmp_path), "--set", "gate.metric=task:nope"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(lines) == 1 and "gate.metric task:nope: unknown task nope" in lines[0]
    assert not (tmp_path / "mlflow.db").exists()
