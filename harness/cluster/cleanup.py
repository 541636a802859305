"""Removing shards' runs by id, from a journal callback or from a worker.  No Dask here:
``scalelab clean`` and ``scalelab down`` import this through the journal."""

from __future__ import annotations

from harness.state import JOURNAL, STATE_ROOT, RunState


def remove_run(run_id: str) -> None:
    """Take down the run ``run_id`` of this host if it is still there (journal callback).

    The client's journal names every shard on its own host this way, so ``scalelab down``
    and ``scalelab clean`` of a cluster run take its local shards with it.
    """
    problems = remove_dead_run(run_id, only_dead=False)
    if problems:
        raise RuntimeError("; ".join(problems))


def remove_dead_run(run_id: str, *, only_dead: bool = True) -> list[str]:
    """Remove what run ``run_id`` left on this host; with ``only_dead``, only if its owner
    (the shard's worker) is gone.  Returns the problems met."""
    journal = STATE_ROOT / run_id / JOURNAL
    if not journal.is_file():
        return []
    state = RunState.load(journal)
    if only_dead and state.owner_alive:
        return [f"run {run_id} still has a live owner (pid {state.header.get('pid')})"]
    return state.remove_all()
