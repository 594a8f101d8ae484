"""``staged generate|eval|models list`` against the embedded store, and their one-line errors."""

import pytest

from flows.cli.main import main

pytestmark = pytest.mark.integration


def _run(capsys, *args: str) -> tuple[int, str, str]:
    try:
        code = main(list(args))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_eval_and_list_use_the_registry(gated_runs, capsys, monkeypatch):
    workdir, _ = gated_runs
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLUMNS", "200")  # rich tables on one line each
    w = ["--workdir", str(workdir)]
    code, out, _ = _run(
        capsys, "generate", "models:/staged-smoke@champion", "--prompt", "import ", "--max-bytes", "30", *w
    )
    assert code == 0 and out.startswith("import ") and len(out) >= len("import ") + 20
    assert _run(capsys, "generate", "models:/staged-smoke/6", "--prompt", "import ", "--max-bytes", "30", *w)[1] == out
    code, out, _ = _run(capsys, "eval", "models:/staged-smoke/latest", *w)
    assert code == 0 and "version 6" in out and "bits/byte" in out and "4096" in out
    code, out, _ = _run(capsys, "models", "list", "staged-smoke", *w)
    assert code == 0
    lines = [line for line in out.splitlines() if line.startswith("│")]
    assert len(lines) == 6
    # the last run (the worse config, stages skipped) re-pointed stage-3 at its own version 3
    assert "champion" in lines[5] and "stage-3" in lines[2] and "refused" in lines[2]


CASES = {
    "bad uri": (["eval", "staged-smoke@champion"], "bad model URI 'staged-smoke@champion'"),
    "bad scheme": (["generate", "runs:/abc/model"], "expected models:/NAME/VERSION"),
    "missing model": (["models", "list", "nope"], "no registered model named 'nope'"),
    "missing version": (["eval", "models:/staged-smoke/99"], "model 'staged-smoke' has no version 99"),
    "missing alias": (
        ["generate", "models:/staged-smoke@best"],
        "model 'staged-smoke' has no alias 'best' (aliases: champion",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_uris_missing_versions_and_aliases_give_one_line(gated_runs, capsys, monkeypatch, case):
    workdir, _ = gated_runs
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    args, message = CASES[case]
    code, out, err = _run(capsys, *args, "--workdir", str(workdir))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("staged: error:") and message in lines[0], err


def test_a_workdir_without_a_store_is_an_error_not_a_new_database(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    code, _, err = _run(capsys, "models", "list", "x", "--workdir", str(tmp_path))
    assert code == 2 and "no MLflow store at" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
