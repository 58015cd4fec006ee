"""compact: start a compaction now (a new vectors file of the live rows, roxi_mp.compact).

The indexer runs it; the supervisor answers from what it knows without waiting for it:
the indexer's last heartbeat says whether one runs, and the disk check the indexer makes
(roxi_mp.compact_schedule.disk_refusal) refuses one the disk cannot hold, as a `busy`
error with the reason. An accepted request counts as running for a few heartbeats, until
the indexer reports it (or restarts, or reports an outcome: a finished, failed or refused
compaction), so a second request meanwhile never asks for a second compaction. A suspended
indexer (deep sleep, issue 22) is started for it and asked once it is ready.
"""

from __future__ import annotations

import weakref

from roxi_mp.compact_schedule import disk_refusal
from roxi_mp.errors import Busy

from ..child import LIVE_STATES, ChildState

NAME = "compact"
HELP = "compact the store now: a new vectors file of the live rows, SQLite space given back"

#: heartbeats during which an accepted request counts as running, until the indexer says so
ASKED_BEATS = 5
#: per arbiter: when the last request was accepted, and what the indexer said then (its pid,
#: compaction count, error and refusal): a change in any of them means it was acted on
_asked: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def execute(arbiter, msg: dict) -> dict:
    indexer = next((c for c in arbiter.children if c.kind == "indexer"), None)
    suspended = indexer is not None and indexer.state is ChildState.SUSPENDED
    if indexer is None or not (indexer.state in LIVE_STATES or suspended):
        state = indexer.state.shown if indexer is not None else "absent"
        raise Busy(f"the indexer is {state}: a compaction needs it running")
    info = indexer.info.get("compaction") or {}
    said = (indexer.pid, info.get("count", 0), info.get("error"), info.get("refused"))
    now = arbiter.clock()
    asked = _asked.get(arbiter)
    if info.get("running") or (asked is not None and asked[1] == said
                               and now - asked[0] < ASKED_BEATS * arbiter.cfg.supervisor.heartbeat_seconds):
        return {"started": False, "running": True, "message": "a compaction is already running"}
    store = arbiter.store
    dead, rows, model = store.dead_rows(), store.committed_rows(), store.model()
    if not dead or model is None:
        return {"started": False, "running": False, "message": "nothing to reclaim: the store has no dead rows"}
    refusal = disk_refusal(arbiter.cfg, live_rows=rows - dead, dim=model[1])
    if refusal is not None:
        raise Busy(refusal)
    if suspended:  # started for it, and asked once ready (the new process is what is watched)
        arbiter.resume("indexer", now, "a compaction was asked for", then="compact")
        said = (indexer.pid, *said[1:])
    else:
        arbiter.publish("indexer", "compact")
    _asked[arbiter] = (now, said)
    return {"started": True, "running": True,
            "message": f"compaction started: {dead} dead of {rows} rows to reclaim"}
