"""``worker`` and ``stages.<i>.work_pool``: where a stage runs. Unset, a stage trains inside the pipeline's flow
run (the embedded default: one command, no servers); set, it is its own flow run on that Prefect work pool
(flows/pools.py), its hardware the pool's job sized by the stage (``job_variables`` over the pool's defaults)."""

from __future__ import annotations

from pydantic import Field, JsonValue

from tasks.config.model_section import Strict

POOL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class WorkerConfig(Strict):
    """The pipeline's default placement (``worker:``) and one stage's (``stages.<i>.work_pool`` /
    ``stages.<i>.job_variables``, merged over it key by key)."""

    # a Prefect work pool with a worker polling it (GPU pods, a Docker host, a process on another machine);
    # None: in the parent's flow run
    work_pool: str | None = Field(None, pattern=POOL_NAME)
    # over the pool's base job template defaults (image, env, cpu/memory, gpu_count...): every key must be a
    # variable the pool's template declares, or the run is refused before anything starts
    job_variables: dict[str, JsonValue] = {}

    def over(self, default: WorkerConfig) -> WorkerConfig | None:
        """This stage's placement on top of the pipeline's ``default``; None: in-process."""
        pool = self.work_pool or default.work_pool
        if pool is None:
            if self.job_variables or default.job_variables:
                raise ValueError("job_variables need a work_pool (stages.<i>.work_pool or worker.work_pool)")
            return None
        return WorkerConfig(work_pool=pool, job_variables={**default.job_variables, **self.job_variables})
