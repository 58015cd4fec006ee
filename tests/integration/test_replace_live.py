"""Issue 17, acceptance 1: a document replaced while a client queries it.

Put v1 over the documents endpoint, wait until it is indexed, then put v2 (half its text
unchanged) while a client queries in a loop. Every answer holds exactly one version of
the document, never both and never neither; once v2 is live no answer holds v1; and the
chunks v2 shares with v1 were copied by the indexer, not embedded again (the embedders'
own counter of texts embedded).
"""

from __future__ import annotations

import threading
import time

import pytest

from roxi_mp.client import DocumentsClient
from roxi_mp.documents import chunk_rows

from ..conftest import PATIENCE

pytestmark = pytest.mark.integration

KEY = "guidelines/gout-urate-lowering"
WORDS = 20  # store.chunk_words for this test: one paragraph per chunk

SHARED = [
    "Allopurinol is the preferred first line urate lowering therapy for gout patients including those "
    "with moderate to severe chronic kidney disease today.",
    "Start allopurinol at a low dose of one hundred milligrams daily or less and titrate it upward every "
    "few weeks now.",
    "Treat to a serum urate target below six milligrams per decilitre and keep checking urate levels during "
    "titration visits.",
]
OLD = [
    "Gout flare prophylaxis with colchicine should continue for three to six months after starting urate "
    "lowering therapy version one.",
    "Febuxostat may be used freely in patients with cardiovascular disease as an alternative first choice "
    "agent version one.",
]
NEW = [
    "Gout flare prophylaxis with colchicine should continue for at least three to six months with ongoing "
    "evaluation version two.",
    "Switching to febuxostat is not recommended in patients with a history of cardiovascular disease or a "
    "new event version two.",
]
QUERY = "gout allopurinol febuxostat colchicine urate lowering therapy"


def embedded(s) -> int:
    """Texts the embedders have embedded, from their heartbeats."""
    return sum(r.get("embedded", 0) for r in s.status()["roles"] if r["role"] == "embedder")


def live_version(client: DocumentsClient) -> tuple[int | None, bool]:
    doc = client.get(KEY)
    live = doc.get("live", {})
    done = set(live.get("chunk_states", {})) == {"indexed"} and "pending" not in doc
    return live.get("version"), done


def test_replace_under_query_load_shows_one_version_and_reuses_vectors(system):
    s = system(store__chunk_words=WORDS, store__chunk_overlap=0, embedder__idle_seconds=300.0,
               query__cache_entries=256)
    v1, v2 = "\n\n".join(SHARED + OLD) + "\n", "\n\n".join(SHARED + NEW) + "\n"
    rows1 = chunk_rows(v1, words=WORDS, overlap=0)
    rows2 = chunk_rows(v2, words=WORDS, overlap=0)
    fresh = {digest for _, _, digest, *_ in rows2} - {digest for _, _, digest, *_ in rows1}
    assert 0 < len(fresh) < len(rows2), "the test needs shared and changed chunks"

    with DocumentsClient.for_config(s.cfg, timeout=30) as docs:
        assert docs.put(KEY, v1)["version"] == 1
        s.wait_for(lambda: live_version(docs) == (1, True), timeout=PATIENCE, what="v1 indexed")
        s.wait_for(lambda: embedded(s) >= len(rows1), timeout=PATIENCE, what="the embedder's count reported")
        before = embedded(s)

        answers: list[tuple[float, set[int], list[str]]] = []
        stop = threading.Event()
        failures: list[BaseException] = []

        def ask() -> None:
            try:
                with s.query_client(timeout=30) as q:
                    while not stop.is_set():
                        hits = q.query(QUERY, k=10)
                        mine = [h for h in hits if h["key"] == KEY]
                        answers.append((time.monotonic(), {h["version"] for h in mine}, [h["text"] for h in mine]))
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        asker = threading.Thread(target=ask, daemon=True)
        asker.start()
        try:
            s.wait_for(lambda: len(answers) >= 20, timeout=PATIENCE, what="answers before the put")
            second = docs.put(KEY, v2)
            assert (second["outcome"], second["version"], second["reused"]) == ("replaced", 2, len(rows2) - len(fresh))
            s.wait_for(lambda: live_version(docs) == (2, True), timeout=PATIENCE, what="v2 indexed and live")
            promoted = time.monotonic()
            s.wait_for(lambda: sum(t > promoted for t, _, _ in answers) >= 50, timeout=PATIENCE,
                       what="answers after the promotion")
        finally:
            stop.set()
            asker.join(timeout=PATIENCE)
        assert not failures, failures

    assert all(len(versions) == 1 for _, versions, _ in answers), \
        [sorted(v) for _, v, _ in answers if len(v) != 1][:5]
    seen = {next(iter(v)) for _, v, _ in answers}
    assert seen == {1, 2}, seen  # the loop saw the old version answer, then the new one
    after = [(versions, texts) for t, versions, texts in answers if t > promoted]
    assert all(versions == {2} for versions, _ in after)
    assert not any("version one" in text for _, texts in after for text in texts)
    # Only the changed chunks were embedded: the shared ones were copied from v1's rows.
    s.wait_for(lambda: embedded(s) >= before + len(fresh), timeout=PATIENCE, what="the count reported")
    time.sleep(1.0)  # one more heartbeat: a re-embedded shared chunk would show now
    assert embedded(s) - before == len(fresh)
