"""A deleted document is gone from every answer the moment the delete returns (issue 17,
acceptance 2), through the real system: supervisor, embedder, indexer and query server
processes, the hashing backend, files ingested as they are by `roxi ingest`.

The delete is `roxi rm`, the documents endpoint's delete op, or Store.delete_document in
the test process (what both call); the query server learns of it from nothing but its own per-query read of
the store: no event is published and its follow poll is off.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from roxi_mp import operations
from roxi_mp.client import DocumentsClient
from roxi_mp.store import Store

from ..conftest import clean_env
from ..corpus import write_corpus

pytestmark = pytest.mark.integration

#: seconds to wait for a state real processes reach in their own time (60): a deadline that
#: only a broken system misses, however loaded the machine
PATIENCE = 60.0
K = 10
QUERIES = 1000


def visible_rows(store: Store) -> int:
    return store.conn.execute("SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.doc_id "
                              "WHERE c.state = 'indexed' AND d.status = 'live'").fetchone()[0]


def delete(how: str, cfg, key: str) -> None:
    """Delete `key` the way a user would: `roxi rm`, the documents endpoint, or the store."""
    if how == "rm":
        done = subprocess.run([sys.executable, "-m", "roxi_mp.cli", *cfg.to_argv(), "rm", key],
                              capture_output=True, text=True, timeout=PATIENCE, env=clean_env())
        assert done.returncode == 0, done.stderr
    elif how == "endpoint":
        with DocumentsClient.for_config(cfg, timeout=PATIENCE) as docs:
            assert docs.delete(key) == 1
    else:
        with Store(cfg.db_path) as store:
            assert store.delete_document(key) == 1


@pytest.mark.parametrize("how", ["store", "rm", "endpoint"])
def test_after_a_delete_returns_no_answer_holds_the_document(system, make_config, tmp_path, how):
    cfg = make_config(store__chunk_words=30, store__chunk_overlap=0, query__follow_poll_seconds=3600.0)
    paths = write_corpus(tmp_path / "docs", docs=12, words=80)
    s = system(cfg)
    report = operations.ingest(cfg, [tmp_path / "docs"])
    assert report.added == 12
    s.wait_indexed(report.chunks, timeout=PATIENCE)
    target = paths[3]
    key = str(target.resolve())
    with Store(cfg.db_path) as store:
        doc_id, n_chunks = store.conn.execute("SELECT id, n_chunks FROM documents WHERE key=? AND status='live'",
                                              (key,)).fetchone()
    assert n_chunks >= 2
    # Texts that find the target first: its identifier and its own sentences; the others' too.
    lines = [p.read_text().split("\n", 2)[2] for p in paths]
    texts = [lines[3][:200], "Identifier token3x1.", *[t[:120] for t in lines[:8]]]
    with s.query_client(timeout=30) as client:
        before = client.query(texts[1], k=K)
        assert before[0]["key"] == key and before[0]["version"] == 1 and before[0]["doc_id"] == doc_id
        for text in texts:  # every one cached before the delete
            assert len(client.query(text, k=K)) == K
        delete(how, cfg, key)
        with Store(cfg.db_path) as store:
            live = visible_rows(store)
        assert live >= K
        for i in range(QUERIES):
            hits = client.query(texts[i % len(texts)], k=K, with_text=i % 3 != 0)
            assert len(hits) == K, (i, hits)
            assert all(hit["key"] != key and hit["doc_id"] != doc_id for hit in hits), (i, hits)
            assert [hit["rank"] for hit in hits] == list(range(1, K + 1))
        stats = client.stats()
    assert stats["cache_hits"] >= QUERIES - 3 * len(texts)  # the repeats came from the cache
    assert stats["hidden_rows"] == n_chunks and stats["stale_dropped"] == 0
    assert stats["visibility_seq"] >= 1 and stats["epoch"] == 0
    assert s.stop() == 0
