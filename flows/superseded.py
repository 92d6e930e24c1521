"""Prefect runs that a resumed run supersedes are marked CRASHED, so the Prefect UI tells the truth.

A run killed with SIGKILL (or on a machine that died) never reports its end: its flow run, its
iteration subflows and their task runs stayed RUNNING in the Prefect database after the resume had
finished the work. Every flow run of a run folder is recorded in its `.identity.json`, and the run
lock guarantees that none of them is alive when a new one starts, so the new one marks whatever
they left unfinished CRASHED. Best effort: a Prefect API that does not know those runs (another
Prefect home, a wiped database) or cannot be reached changes nothing and stops nothing.
"""

import logging
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.states import Crashed

__all__ = ["crash_superseded_runs"]

UNFINISHED = [StateType.PENDING, StateType.RUNNING, StateType.SCHEDULED, StateType.PAUSED, StateType.CANCELLING]
logger = logging.getLogger(__name__)


def crash_superseded_runs(flow_run_ids: list[str], current: str) -> int:
    """Mark every unfinished flow run in `flow_run_ids` (but `current`), their subflows and their task
    runs CRASHED; returns how many runs were marked."""
    ids = [UUID(i) for i in dict.fromkeys(flow_run_ids) if i != current]
    if not ids:
        return 0
    message = f"Superseded: this run stopped without reporting (killed?); flow run {current} resumed it"
    unfinished = FlowRunFilterState(type=FlowRunFilterStateType(any_=UNFINISHED))
    try:
        with get_client(sync_client=True) as client:
            subflows = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=ids)))
            ids += [run.id for run in subflows]
            flow_runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids), state=unfinished))
            task_runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=UNFINISHED))))
            for task_run in task_runs:
                client.set_task_run_state(task_run.id, Crashed(message=message), force=True)
            for run in flow_runs:
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    except Exception as err:  # the Prefect UI stays as it was; the run itself is not at stake
        logger.warning("could not mark the flow runs this run supersedes as crashed: %s", str(err)[:200])
        return 0
    return len(task_runs) + len(flow_runs)
