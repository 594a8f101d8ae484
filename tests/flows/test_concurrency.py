"""Nothing runs twice: `staged run` processes racing against one Postgres-backed MLflow server (the session's
`staged servers`, with credentials), for real.

- 4 processes of the same config at once (sharing one checkpoint directory): all finish, exactly one version
  per stage, all report the same versions, one gate promotes and the others find it already champion.
- 4 processes of different configs at once, with the MLflow password in the tracking URI: every version is
  there, one gate promotes (margin 100: no later one can beat it), and the password appears in no output, no
  Prefect row (artifacts, logs), no MLflow row (tags, params, descriptions) and no artifact file.
- two gates waiting on the lease at the same moment: one promotion.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from repo import REPO_ROOT

pytestmark = pytest.mark.integration
ROOT = REPO_ROOT
SMOKE = str(ROOT / "configs" / "smoke.yaml")
SHORT = ["stages.0.steps=6", "stages.1.steps=4", "stages.2.steps=2", "checkpoint.every=2", "retry.retries=0"]


def _env(servers, home: Path, password_in_uri: bool = False) -> dict[str, str]:
    env = {**os.environ, **servers.client_env(), "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(home)}
    if password_in_uri:  # the credentials only in the URI: what the redaction must keep out of everything
        user, password = env.pop("MLFLOW_TRACKING_USERNAME"), env.pop("MLFLOW_TRACKING_PASSWORD")
        env["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"].replace("http://", f"http://{user}:{password}@")
    return env


def _race(
    servers, tmp_path: Path, name: str, overrides: list[list[str]], **env_kw
) -> list[subprocess.CompletedProcess]:
    """Start one `staged run` per override list at the same moment; wait for all."""
    procs = []
    for i, extra in enumerate(overrides):
        work = tmp_path / f"{name}-{i}"
        sets = [a for o in [f"registry.model_name={name}", *SHORT, *extra] for a in ("--set", o)]
        argv = [sys.executable, "-m", "flows.cli.main", "run", SMOKE, "--workdir", str(work / "w"), *sets]
        out = open(tmp_path / f"{name}-{i}.log", "w+")
        env = _env(servers, work / "prefect-home", **env_kw)
        procs.append((subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True), out))
    done = []
    for proc, out in procs:
        code = proc.wait(timeout=900)
        out.seek(0)
        done.append(subprocess.CompletedProcess(proc.args, code, out.read(), ""))
    return done


def _versions_printed(stdout: str) -> list[str]:
    """The `version` column (the last) of the summary table `staged run` prints: its rows are the lines after the
    header's rule that start with a stage number."""
    lines = stdout.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip() and set(line.strip()) == {"─"})
    rows = [line.split() for line in lines[rule + 1 :]]
    rows = rows[: next((i for i, r in enumerate(rows) if not (r and r[0].isdigit())), len(rows))]
    return [r[-1] for r in rows]


def _gate_decisions(servers, model: str) -> list[str]:
    """The title of every gate report (Prefect markdown artifact ``<model>-gate``) ever published."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tests.deployed import api

    found = api(
        servers,
        lambda c: c.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{model}-gate"]))),
    )
    return [a.data.splitlines()[0].removeprefix("# Gate: ").replace("`", "") for a in found]


def _gate_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("gate: "))


def test_four_runs_of_one_config_at_once_register_each_stage_once(local_servers, tmp_path):
    from mlflow import MlflowClient

    shared = tmp_path / "shared-checkpoints"  # the racers also write the same checkpoint names
    runs = _race(local_servers, tmp_path, "race-same", [[f"storage.uri={shared}"]] * 4)
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:]
    printed = [_versions_printed(r.stdout) for r in runs]
    assert all(p == printed[0] for p in printed) and len(set(printed[0])) == 3, printed
    client = MlflowClient(tracking_uri=local_servers.urls["mlflow"])
    versions = client.search_model_versions("name = 'race-same'")
    # losers deleted their own versions: the numbers left have gaps where they were (MLflow never reuses one)
    assert sorted(int(v.version) for v in versions) == sorted(int(v) for v in printed[0])
    assert sorted(v.tags["stage"] for v in versions) == ["1", "2", "3"]
    last = printed[0][-1]
    assert str(client.get_registered_model("race-same").aliases["champion"]) == last
    # each gate's own decision, as it published it: one promotion, three found it already the champion
    decisions = sorted(_gate_decisions(local_servers, "race-same"))
    assert decisions == [f"models:/race-same/{last} KEPT"] * 3 + [f"models:/race-same/{last} PROMOTED"]
    exp = client.get_experiment_by_name("race-same").experiment_id
    stage_runs = [r for r in client.search_runs([exp]) if "stage_key" in r.data.tags]
    assert sorted(r.info.run_id for r in stage_runs) == sorted(v.run_id for v in versions)  # no run left behind


@pytest.fixture(scope="module")
def race_diff(local_servers, tmp_path_factory) -> list[subprocess.CompletedProcess]:
    """4 different configs raced at once into model ``race-diff``, the password only in the tracking URI: the
    registry both tests below read (each test asks for it, so either runs alone)."""
    seeds = [["seed=1"], ["seed=2"], ["seed=3"], ["seed=4"]]
    overrides = [s + ["gate.margin=100"] for s in seeds]
    return _race(local_servers, tmp_path_factory.mktemp("race"), "race-diff", overrides, password_in_uri=True)


def test_four_different_configs_at_once_keep_every_version_and_no_credential(local_servers, race_diff):
    import psycopg
    from mlflow import MlflowClient

    password = local_servers.client_env()["MLFLOW_TRACKING_PASSWORD"]
    runs = race_diff
    for run in runs:
        assert run.returncode == 0, run.stdout[-3000:]
    client = MlflowClient(tracking_uri=local_servers.urls["mlflow"])
    versions = client.search_model_versions("name = 'race-diff'")
    assert len(versions) == 12 and len({v.tags["stage_key"] for v in versions}) == 12
    printed = sorted(v for r in runs for v in _versions_printed(r.stdout))
    assert printed == sorted(str(v.version) for v in versions)  # each run reports its own three
    decisions = sorted(_gate_line(r.stdout).split(": ")[1].split()[-1] for r in runs)
    assert decisions == ["promoted", "refused", "refused", "refused"]  # serialized gates: one promotion
    assert sorted(d.split()[-1].lower() for d in _gate_decisions(local_servers, "race-diff")) == decisions

    leaks = [i for i, r in enumerate(runs) if password in r.stdout]
    dump = {}
    for db in ("prefect", "mlflow"):  # every row: Prefect artifacts and logs, MLflow tags, params, descriptions
        url = local_servers.postgres_url("postgres").rsplit("/", 1)[0] + f"/{db}"
        with psycopg.connect(url) as conn:
            tables = [t for (t,) in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
            dump[db] = "".join(str(conn.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)
    assert "race-diff" in dump["mlflow"] and "race-diff" in dump["prefect"]  # the scan sees what was written
    files = [p for p in (Path(local_servers.dir) / "artifacts").rglob("*") if p.is_file()]
    assert leaks == [] and password not in dump["prefect"] and password not in dump["mlflow"]
    assert [p for p in files if password.encode() in p.read_bytes()] == []


def test_two_gates_waiting_at_the_same_moment_promote_once(local_servers, race_diff, tmp_path):
    """Two reruns of registered pipelines (stages skipped, gates only) on a fresh alias with margin 100. The test
    holds the alias's lease until both gates wait on it, so both decide "at once"; the second sees the first."""
    from mlflow import MlflowClient

    from tasks.registry import lease
    from tasks.registry.schema import lease_filter

    client = MlflowClient(tracking_uri=local_servers.urls["mlflow"])
    assert all(run.returncode == 0 for run in race_diff)  # the registered pipelines the gates rerun
    overrides = [[s, "gate.margin=100", "gate.alias=duel"] for s in ("seed=1", "seed=2")]
    with lease(client, "race-diff@duel"):
        import threading

        result = {}
        thread = threading.Thread(
            target=lambda: result.update(runs=_race(local_servers, tmp_path, "race-diff", overrides))
        )
        thread.start()
        deadline = time.monotonic() + 600
        while len(client.search_model_versions(lease_filter("race-diff@duel"))) < 3:  # ours + both gates'
            assert time.monotonic() < deadline and thread.is_alive(), "the gates never queued on the lease"
            time.sleep(0.5)
    thread.join()
    for run in result["runs"]:
        assert run.returncode == 0, run.stdout[-3000:]
    decisions = sorted(_gate_line(r.stdout).split(": ")[1].split()[-1] for r in result["runs"])
    assert decisions == ["promoted", "refused"]
    assert "duel" in client.get_registered_model("race-diff").aliases


def test_racers_pointing_one_new_alias_at_one_version_all_succeed(local_servers):
    """MLflow's SQL store looks an alias up, then inserts it, unserialized: racers that settled on one winner and
    set its stage alias at the same moment collided on ``registered_model_alias_pk`` and one `staged run` failed
    (a 4-way race of one config, once in ~10 runs). Each racer must succeed, the alias on the version."""
    import threading

    from mlflow import MlflowClient

    from tasks.registry.client import set_alias

    url, racers, rounds = local_servers.urls["mlflow"], 4, 25
    client = MlflowClient(tracking_uri=url)
    client.create_registered_model("race-alias")
    version = str(client.create_model_version("race-alias", source="race://alias/model", await_creation_for=0).version)
    clients = [MlflowClient(tracking_uri=url) for _ in range(racers)]
    errors: list[Exception] = []

    def race(c: MlflowClient, alias: str, start: threading.Barrier) -> None:
        start.wait()
        try:
            set_alias(c, "race-alias", alias, version)
        except Exception as e:  # noqa: BLE001 - collected: the assertion below names them
            errors.append(e)

    for r in range(rounds):
        start = threading.Barrier(racers)
        threads = [threading.Thread(target=race, args=(c, f"stage-{r}", start)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not errors, [str(e).splitlines()[0] for e in errors][:3]
    aliases = client.get_registered_model("race-alias").aliases
    assert {f"stage-{r}" for r in range(rounds)} <= set(aliases) and set(aliases.values()) == {version}
