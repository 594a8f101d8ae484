"""What a failed torchrun stage says: the rank a signal killed, even when a peer failed first on its socket."""

import pytest
from repo import REPO_ROOT


def _report(root: tuple[int, int], others: list[tuple[int, int]]) -> str:
    """torchrun's ChildFailedError report: the other failures, then the root cause (rank, exit code)."""

    def entry(rank: int, code: int) -> str:
        fields = {
            "time": "t",
            "host": "localhost",
            "rank": f"{rank} (local_rank: {rank})",
            "exitcode": f"{code} (pid: 1)",
        }
        return f"[{rank}]:\n" + "".join(f"  {k:<10}: {v}\n" for k, v in fields.items())

    failures = "".join(entry(*f) for f in others)
    head = "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\nFailures:\n"
    return f"{head}{failures}Root Cause (first observed failure):\n{entry(*root)}"


@pytest.mark.parametrize(
    "root, others, wrote, expected",
    [
        ((1, -9), [(0, -15)], [], "rank 1 was killed by SIGKILL"),  # torchrun saw the kill first
        ((0, 1), [(1, -9)], [0], "rank 1 was killed by SIGKILL"),  # rank 0 failed first, on the dead peer's socket
        ((0, 1), [(1, -15)], [0], "rank 0: its own reason"),  # rank 1 only stopped by torchrun: rank 0's reason
        ((1, 1), [], [1], "rank 1: its own reason"),
    ],
    ids=["killed is the root cause", "a peer failed first", "stopped by torchrun", "a reason, no signal"],
)
def test_a_killed_rank_is_named_even_when_a_peer_failed_first(tmp_path, root, others, wrote, expected):
    from tasks.config import load_config
    from tasks.parallel.launch import _reason
    from tasks.workspace import StageJob, Workspace

    for rank in wrote:
        (tmp_path / f"error-{rank}.txt").write_text(f"stage 1: rank {rank}: its own reason")
    spec = load_config(REPO_ROOT / "configs" / "smoke.yaml", ["stages.0.nproc=2"]).stage_specs()[0]
    job = StageJob(spec=spec, parent=None, workspace=Workspace.resolve(tmp_path), key="k", output="v")
    assert _reason(job, tmp_path, _report(root, others), 1).removeprefix("stage 1: ").startswith(expected)
