"""The documents endpoint in the real system: supervisor, roles, sockets, the hashing backend.

Put over the endpoint, indexed and found by a query; a second version replaces it; delete;
the role survives kill -9 (the supervisor restarts it) and takes puts again. The embedders
are asleep and look for work only every 300 s on their own, so a put indexed at once also
shows the role's `work` counter reaching them through the supervisor.
"""

from __future__ import annotations

import os
import signal

import pytest

from roxi_mp.client import DocumentsClient
from roxi_mp.errors import ServerError
from roxi_mp.service import READY_STATES

from ..conftest import PATIENCE

pytestmark = pytest.mark.integration

V1 = ("# Hydroxychloroquine monitoring\n\nBaseline retinal screening within the first year, then annual "
      "screening after five years of hydroxychloroquine use. Keep the daily dose at or below five "
      "milligrams per kilogram of real body weight.\n")
V2 = V1 + ("\n## Revision\n\nPatients with renal impairment or tamoxifen use need annual screening from the "
           "start, since their risk of maculopathy is higher.\n")
#: new text after the restart (V1's vectors would be copied by the indexer, not embedded)
V3 = "# Methotrexate\n\nFolic acid supplementation reduces the gastrointestinal side effects of methotrexate.\n"


def wait_indexed(s, client: DocumentsClient, key: str, version: int) -> dict:
    """Until `key`'s live version is `version` with every chunk indexed and nothing pending."""
    def done() -> dict | None:
        doc = client.get(key)
        live = doc.get("live", {})
        ready = live.get("version") == version and set(live["chunk_states"]) == {"indexed"} and "pending" not in doc
        return doc if ready else None

    s.wait_for(lambda: done() is not None, timeout=PATIENCE, what=f"{key} v{version} indexed")
    return client.get(key)


def texts(s, query: str) -> list[str]:
    with s.query_client(timeout=30) as q:
        return [hit["text"] for hit in q.query(query, k=10)]


def test_put_query_replace_delete_and_survive_kill_9(system):
    s = system(embedder__idle_seconds=1.0, embedder__wake_check_seconds=300.0,
               restart__backoff_initial_seconds=0.2)
    s.wait_for(lambda: s.role("embedder-1")["state"] in ("asleep", "suspended"), timeout=PATIENCE,
               what="embedder asleep")
    with DocumentsClient.for_config(s.cfg, timeout=30) as client:
        assert client.ping()
        first = client.put("guides/hcq", V1, content_type="text/markdown", metadata={"source": "ACR 2020"})
        assert (first["outcome"], first["version"]) == ("added", 1) and first["chunks"] >= 1
        doc = wait_indexed(s, client, "guides/hcq", 1)  # the embedder woke on the role's `work`
        assert doc["live"]["title"] == "Hydroxychloroquine monitoring"
        assert doc["live"]["metadata"] == {"source": "ACR 2020"}
        assert any("retinal screening" in t for t in texts(s, "retinal screening hydroxychloroquine"))

        second = client.put("guides/hcq", V2, content_type="text/markdown")
        assert (second["outcome"], second["version"]) == ("replaced", 2)
        wait_indexed(s, client, "guides/hcq", 2)
        assert any("tamoxifen" in t for t in texts(s, "renal impairment tamoxifen screening"))
        listed = client.list()["documents"]
        assert [(d["key"], d["status"], d["version"]) for d in listed] == [("guides/hcq", "live", 2)]

        assert client.delete("guides/hcq") == 1
        with pytest.raises(ServerError) as gone:
            client.get("guides/hcq")
        assert gone.value.code == "not_found"
        s.wait_for(lambda: s.role("documents")["deletes"] == 1, timeout=PATIENCE, what="a heartbeat after the delete")
        row = s.role("documents")  # the role's counters, as its heartbeat told the supervisor
        assert row["puts"] == 2 and row["work"] == 2 and row["errors"] == 1  # the get of a deleted key

        victim = s.pid("documents")
        os.kill(victim, signal.SIGKILL)
        s.wait_for(lambda: s.role("documents")["pid"] not in (None, victim)
                   and s.role("documents")["state"] in READY_STATES, timeout=PATIENCE, what="documents restarted")
        assert s.role("documents")["restarts"] == 1
        # The client's socket reconnects by itself; a put after the restart is stored and indexed.
        again = client.put("guides/hcq", V3)
        assert (again["outcome"], again["version"]) == ("added", 3)
        wait_indexed(s, client, "guides/hcq", 3)
    assert s.role("query")["restarts"] == 0 and s.role("indexer")["restarts"] == 0
