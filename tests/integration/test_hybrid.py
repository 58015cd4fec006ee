"""Hybrid search through the real system (issue 19): supervisor, documents endpoint,
embedder, indexer and query server processes, the hashing backend.

- Acceptance 3: a document stored while embedding is paused is found by an exact word
  (the lexical leg) and marked not embedded; after resuming, by both legs.
- Acceptance 4: every answer carries coverage, generation and mode (text, vector, cached);
  `roxi query` warns below 50 % embedded and not at 100 %.
- Bad input over ZeroMQ: unknown mode or fusion, weights out of range are bad_request
  replies and the server goes on answering; FTS5 syntax in a query is plain words.
- Acceptance 5: asleep after hybrid and lexical queries, the query server is unmapped and
  within 5 MB of its fresh floor (the FTS pages went with the SQLite connection).
- A delete: no mode answers from the document afterwards, cached answers included.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from roxi_mp import operations, protocol, service
from roxi_mp.client import DocumentsClient
from roxi_mp.errors import E_BAD_REQUEST, ServerError
from roxi_mp.memory import maps_file
from roxi_mp.store import Store

from ..conftest import PATIENCE
from ..corpus import populate
from .test_pipeline import roxi
from .test_sleep import MB, rss, wait_asleep

pytestmark = pytest.mark.integration

#: a word no other document holds (the hashing backend's vectors know nothing of it either)
UNIQUE = "zymoglobulinase"
DOCS = {
    "gout": "Gout is an inflammatory arthritis caused by urate crystals deposited in the big toe.",
    "lupus": "Systemic lupus erythematosus brings malar rash, nephritis and anti-dsDNA antibodies.",
    "ra": "Rheumatoid arthritis shows anti-CCP antibodies and erosions of the small joints of the hands.",
    "target": f"The {UNIQUE} assay measures enzyme activity in synovial fluid of inflamed knees.",
    "psa": "Psoriatic arthritis affects skin and nails, with dactylitis and enthesitis of tendons.",
}
COVERAGE_FIELDS = {"indexed", "chunks", "percent", "pending", "failed"}


def put_all(cfg, docs: dict[str, str] = DOCS) -> None:
    with DocumentsClient.for_config(cfg, timeout=PATIENCE) as client:
        for key, text in docs.items():
            assert client.put(key, text)["outcome"] == "added"


def search(s, text: str, **fields) -> dict:
    with s.query_client(timeout=PATIENCE) as client:
        return client.search(text, **fields)


def vector_search(s, vector: np.ndarray, **fields) -> dict:
    meta, buf = protocol.encode_array(np.asarray(vector, dtype=np.float32).reshape(1, -1))
    with s.query_client(timeout=PATIENCE) as client:
        return client.call_raw("query", frames=[buf], **meta, **fields)[0]


def assert_answer_fields(reply: dict, *, mode: str, cfg) -> None:
    """Coverage, generation and mode as the store has them now (nothing is being written)."""
    assert reply["mode"] == mode
    assert set(reply["coverage"]) == COVERAGE_FIELDS
    with Store(cfg.db_path) as store:
        expected = store.coverage()
    assert reply["generation"] == expected.pop("generation")
    assert reply["coverage"] == expected
    for hit in reply["hits"]:
        assert {"dense_rank", "lexical_rank", "embedded", "row"} <= set(hit)
        assert hit["embedded"] is (hit["row"] is not None)


@pytest.mark.parametrize("how", ["put", "ingest"])
def test_a_document_stored_while_paused_is_found_by_its_words_then_by_both_legs(system, make_config, tmp_path,
                                                                               how: str) -> None:
    """Acceptance 3."""
    cfg = make_config()
    s = system(cfg)
    service.set_paused(cfg, True)  # `roxi pause`: from now on no embedder claims a chunk
    if how == "put":
        put_all(cfg)
        key = "target"
    else:
        (tmp_path / "docs").mkdir()
        for name, text in DOCS.items():
            (tmp_path / "docs" / f"{name}.txt").write_text(text + "\n")
        assert operations.ingest(cfg, [tmp_path / "docs"]).added == len(DOCS)
        key = str((tmp_path / "docs" / "target.txt").resolve())
    reply = search(s, UNIQUE, k=5)
    hit = reply["hits"][0]
    assert hit["key"] == key, reply["hits"]
    assert (hit["lexical_rank"], hit["dense_rank"], hit["embedded"], hit["row"]) == (1, None, False, None)
    assert UNIQUE in hit["text"]
    assert reply["mode"] == "hybrid" and reply["coverage"]["indexed"] == 0
    assert reply["coverage"]["pending"] == reply["coverage"]["chunks"] == len(DOCS)
    assert search(s, UNIQUE, k=5, mode="dense")["hits"] == []  # nothing has a vector yet
    assert s.stats().indexed == 0  # still paused: found by its words alone

    service.set_paused(cfg, False)  # `roxi resume`
    s.wait_indexed(len(DOCS), timeout=PATIENCE)
    reply = search(s, UNIQUE, k=5)
    hit = reply["hits"][0]
    assert hit["key"] == key, reply["hits"]
    assert hit["lexical_rank"] == 1 and hit["dense_rank"] is not None and hit["dense_rank"] >= 1
    assert hit["embedded"] is True and isinstance(hit["row"], int)
    assert reply["coverage"]["indexed"] == reply["coverage"]["chunks"] == len(DOCS)
    assert reply["coverage"]["percent"] == 100.0


def test_a_word_asked_before_its_document_is_stored_is_found_once_it_is(system, make_config) -> None:
    cfg = make_config()
    s = system(cfg)
    service.set_paused(cfg, True)
    put_all(cfg, {k: v for k, v in DOCS.items() if k != "target"})
    assert search(s, UNIQUE, k=5, mode="lexical")["hits"] == []
    put_all(cfg, {"target": DOCS["target"]})
    assert [h["key"] for h in search(s, UNIQUE, k=5, mode="lexical")["hits"]] == ["target"]


def test_every_answer_carries_coverage_and_roxi_query_warns_below_half(system, make_config) -> None:
    """Acceptance 4."""
    cfg = make_config()
    s = system(cfg)
    service.set_paused(cfg, True)
    put_all(cfg)
    below = roxi(cfg, "query", UNIQUE, "-k", "3")
    assert below.returncode == 0, below.stderr
    assert "(words #1, not embedded yet)" in below.stdout.splitlines()[0]
    assert f"coverage: 0 of {len(DOCS)} chunks embedded (0 %), {len(DOCS)} pending, 0 failed; hybrid search" \
        in below.stdout
    assert below.stderr == (f"warning: these answers cover 0 % of the library (0 of {len(DOCS)} chunks embedded); "
                            f"ROXI advises 50 % before heavy use\n")
    assert_answer_fields(search(s, "arthritis", k=3), mode="hybrid", cfg=cfg)

    service.set_paused(cfg, False)
    s.wait_indexed(len(DOCS), timeout=PATIENCE)
    full = roxi(cfg, "query", UNIQUE, "-k", "3")
    assert full.returncode == 0, full.stderr
    assert "warning" not in full.stderr and full.stderr == ""
    assert f"coverage: {len(DOCS)} of {len(DOCS)} chunks embedded (100 %)" in full.stdout
    assert "words #1" in full.stdout.splitlines()[0] and "dense #" in full.stdout.splitlines()[0]
    as_json = roxi(cfg, "query", UNIQUE, "--json", "--mode", "lexical")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["mode"] == "lexical" and data["coverage"]["percent"] == 100.0 and isinstance(data["generation"], int)

    for mode in ("hybrid", "dense", "lexical"):
        first = search(s, "urate crystals in the toe", k=3, mode=mode)
        assert_answer_fields(first, mode=mode, cfg=cfg)
        with s.query_client() as client:
            hits_before = client.stats()["cache_hits"]
        cached = search(s, "urate crystals in the toe", k=3, mode=mode)  # the same query: from the cache
        with s.query_client() as client:
            assert client.stats()["cache_hits"] == hits_before + 1
        assert cached["hits"] == first["hits"]
        assert_answer_fields(cached, mode=mode, cfg=cfg)
    rng = np.random.default_rng(4)
    vector = rng.standard_normal(cfg.hashing.dim).astype(np.float32)
    vector /= np.linalg.norm(vector)
    for fields, mode in (({}, "hybrid"), ({"mode": "dense"}, "dense"), ({"text": UNIQUE}, "hybrid")):
        for _ in range(2):  # the second from the cache
            reply = vector_search(s, vector, k=3, **fields)
            assert len(reply["hits"]) == 3
            assert_answer_fields(reply, mode=mode, cfg=cfg)
    # the text feeds the lexical leg (rrf: weighted min-max would tie it with the best vector)
    assert vector_search(s, vector, k=3, text=UNIQUE, fusion="rrf")["hits"][0]["key"] == "target"


BAD = [({"mode": "fuzzy"}, "mode must be one of"), ({"mode": 3}, "mode must be one of"),
       ({"fusion": "borda"}, "fusion must be one of"),
       ({"weights": {"dense": 1.5}}, "weights.dense must be a number in [0, 1]"),
       ({"weights": {"lexical": -1}}, "weights.lexical must be a number in [0, 1]"),
       ({"weights": {"dense": 0, "lexical": 0}}, "cannot both be 0"),
       ({"weights": {"bm25": 1}}, "weights must be a map"),
       ({"weights": [1, 1]}, "weights must be a map")]
FTS5_SYNTAX = ['"NEAR(', "a AND OR", 'text:"x', "*", "NEAR(gout crystals)", "{text}: gout", "-gout ^toe",
               "(unbalanced", "the and of", "\"'\\;--", "gout " * 1500]


def test_bad_input_over_zeromq_is_a_bad_request_and_fts5_syntax_is_plain_words(system, make_config) -> None:
    cfg = make_config()
    s = system(cfg)
    put_all(cfg)
    s.wait_indexed(len(DOCS), timeout=PATIENCE)
    with s.query_client(timeout=PATIENCE) as client:
        for fields, message in BAD:
            with pytest.raises(ServerError) as caught:
                client.search("gout", k=3, **fields)
            assert caught.value.code == E_BAD_REQUEST and message in str(caught.value), (fields, caught.value)
            assert "\n" not in str(caught.value)
            assert client.ping()
        meta, buf = protocol.encode_array(np.ones((1, cfg.hashing.dim), dtype=np.float32))
        with pytest.raises(ServerError) as caught:  # a vector alone has no words
            client.call_raw("query", frames=[buf], mode="lexical", k=3, **meta)
        assert caught.value.code == E_BAD_REQUEST and "needs 'text'" in str(caught.value)
        for text in FTS5_SYNTAX:
            for mode in ("hybrid", "lexical", "dense"):
                reply = client.search(text, k=3, mode=mode)
                assert reply["ok"] is True and reply["mode"] == mode, (text, mode)
        assert client.search('"NEAR(gout', k=3, mode="lexical")["hits"][0]["key"] == "gout"
        assert client.search("the and of", k=3, mode="lexical")["hits"] == []  # an empty lexical leg
        assert len(client.search("the and of", k=3, mode="hybrid")["hits"]) == 3  # dense still answers
        stats = client.stats()
    assert stats["errors"] >= len(BAD) + 1
    assert s.role("query")["restarts"] == 0


@pytest.fixture
def store_100k(make_config):
    cfg = make_config(hashing__dim=384)
    populate(cfg, rows=100_000)
    return cfg


def test_asleep_after_hybrid_queries_the_query_server_is_back_at_its_floor(system, store_100k) -> None:
    """Acceptance 5: hybrid and lexical queries (one of them scoring every chunk through
    FTS5), `roxi sleep`: nothing mapped, RSS within 5 MB of the fresh server's."""
    cfg = store_100k
    s = system(cfg)
    pid = s.pid("query")
    floor = rss(pid)  # the fresh process of this role: started, nothing mapped yet
    with s.query_client(timeout=PATIENCE) as client:
        for text, mode in (("chunk 123 tendon", "hybrid"), ("chunk", "lexical"), ("chunk", "hybrid"),
                           ("synovial joint inflammation", "hybrid"), ("chunk 4242", "dense")):
            reply = client.search(text, k=10, mode=mode)
            assert len(reply["hits"]) == 10 and reply["coverage"]["indexed"] == 100_000, (text, mode)
        # Only chunks holding the rarest words are the lexical leg's candidates (query.lexical_budget):
        # here the one holding "4242", not the 100,000 holding "chunk".
        assert [h["text"] for h in client.search("chunk 4242", k=10, mode="lexical")["hits"]] == ["chunk 4242"]
    awake = rss(pid)
    assert maps_file(pid, cfg.vectors_path) and awake - floor > 50 * MB  # the dense leg touched every row
    sleeps = s.role("query").get("sleeps", 0)
    result = roxi(cfg, "sleep", "query")
    assert result.returncode == 0, result.stderr
    wait_asleep(s, "query", sleeps_above=sleeps)
    assert not maps_file(pid, cfg.vectors_path)
    print(f"query server: floor {floor / MB:.1f} MB, awake {awake / MB:.1f} MB, asleep {rss(pid) / MB:.1f} MB")
    assert rss(pid) - floor < 5 * MB, f"asleep {rss(pid) / MB:.1f} MB vs floor {floor / MB:.1f} MB"


def test_after_a_delete_no_mode_answers_from_the_document(system, make_config) -> None:
    cfg = make_config()
    s = system(cfg)
    put_all(cfg)
    s.wait_indexed(len(DOCS), timeout=PATIENCE)
    texts = [UNIQUE, DOCS["target"], "enzyme activity in synovial fluid"]
    modes = ("hybrid", "dense", "lexical")
    with s.query_client(timeout=PATIENCE) as client:
        for text in texts:  # every answer cached before the delete
            for mode in modes:
                keys = [h["key"] for h in client.search(text, k=5, mode=mode)["hits"]]
                assert "target" in keys, (text, mode, keys)
        with DocumentsClient.for_config(cfg, timeout=PATIENCE) as docs:
            assert docs.delete("target") == 1
        for text in texts:
            for mode in modes:
                reply = client.search(text, k=5, mode=mode)
                assert "target" not in [h["key"] for h in reply["hits"]], (text, mode)
                assert reply["coverage"]["chunks"] == len(DOCS) - 1
        assert client.search(UNIQUE, k=5, mode="lexical")["hits"] == []
