"""A user's mistake is never retried: every one-line user error derives from models.errors.UserError,
and the flow's retry condition (flows.staged.retryable) refuses it, while a failure that may pass next
time (a disk, a network) is still retried."""

import pytest
from prefect import flow, task
from prefect.states import Failed
from repo import REPO_ROOT

from flows.cli.main import main
from flows.staged import retryable
from models.data.bytes import CorpusError, UnreadableFile
from models.data.tokenizer import TokenizerError
from models.errors import UserError
from models.families.llama import UnsupportedHFConfig
from models.families.lookup import UnknownFamily
from models.families.width import WidthError
from models.growth import GrowthError
from models.train.optim import MomentsMismatch
from tasks.config import ConfigError
from tasks.downstream import TaskError
from tasks.downstream.adapter import GenerationUnsupported
from tasks.plan.planner import OutOfRange
from tasks.registry import UseError
from tasks.store import IntegrityError, StorageError, WeightsMismatch
from tasks.store.checkpoint import CheckpointError
from tasks.store.hf_dir import ImportRefused
from tasks.store.tokenizer_store import TokenizerMismatch

SMOKE = str(REPO_ROOT / "configs" / "smoke.yaml")
USER_ERRORS = [
    ConfigError,
    GrowthError,
    CorpusError,
    UnreadableFile,
    TokenizerError,
    TokenizerMismatch,
    IntegrityError,
    WeightsMismatch,
    TaskError,
    GenerationUnsupported,
    UseError,
    WidthError,
    MomentsMismatch,
    UnsupportedHFConfig,
    UnknownFamily,
    ImportRefused,
    OutOfRange,
]


@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda e: e.__name__)
def test_a_user_error_is_not_retried(error):
    assert issubclass(error, UserError)
    assert retryable(None, None, Failed(data=error("one line"))) is False


@pytest.mark.parametrize("error", [OSError, StorageError, CheckpointError, RuntimeError, TimeoutError])
def test_a_failure_that_may_pass_is_retried(error):
    assert not issubclass(error, UserError)
    assert retryable(None, None, Failed(data=error("flaky"))) is True


def test_user_errors_keep_their_standard_base_and_message():
    """Callers that catch ValueError (or FileNotFoundError) still catch them, with the same one line."""
    assert all(issubclass(e, ValueError) for e in USER_ERRORS if e is not UnreadableFile)
    assert issubclass(UnreadableFile, FileNotFoundError)
    assert str(ConfigError("config file 'x' not found")) == "config file 'x' not found"


def test_prefect_runs_a_tokenizer_mismatch_once_and_a_disk_error_again(prefect_harness):
    attempts = {"mismatch": 0, "disk": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retryable)
    def fails(kind: str) -> None:
        attempts[kind] += 1
        raise TokenizerMismatch("stored tokenizer abc… has sha256 def…") if kind == "mismatch" else OSError("disk")

    @flow
    def both() -> None:
        for kind in attempts:
            fails(kind, return_state=True)

    both()
    assert attempts == {"mismatch": 1, "disk": 3}


@pytest.mark.parametrize(
    "error, code", [(GrowthError("stages.1: no optimizer moments"), 2), (OSError("disk full"), 1)], ids=["user", "disk"]
)
def test_a_run_that_failed_on_a_user_error_exits_2(error, code, workdir, monkeypatch, capsys):
    """What ``staged run`` says when the flow fails: a user's mistake is bad input (2), anything else a failure (1)."""
    import flows.cli.run
    import flows.staged

    monkeypatch.setattr(flows.staged, "staged_training", lambda *args, **kwargs: Failed(data=error))
    monkeypatch.setattr(flows.cli.run, "_embedded_defaults", lambda workdir: None)  # no Prefect server is started
    for key, value in flows.cli.run.MLFLOW_RETRY_DEFAULTS.items():  # restored after the test, as set here
        monkeypatch.setenv(key, value)
    with pytest.raises(SystemExit) as exit_:
        main(["run", SMOKE, "--workdir", str(workdir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == code and err == [f"staged: error: run failed: {error}"]
