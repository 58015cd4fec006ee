"""A text query's model starts before the rest of the query is done (issue 21): before the
commit mark and the read snapshot, so a snapshot after a commit costs the query nothing the
model does not cover; never when the result cache may answer (a vector nobody reads would
make the next text query wait for it). The query server over its real ROUTER socket."""

from __future__ import annotations

import pytest

from .test_roles import QS, cfg_factory, index_directly, add_docs, qs_factory, zctx  # noqa: F401 (fixtures)

GOUT = "urate crystals in the big toe"


def traced(q: QS) -> list[str]:
    """The order in which the server starts the model and reads the store, per query."""
    order: list[str] = []
    server = q.server
    encode_later, read = server.model.encode_later, server.view.read

    def traced_encode_later(texts):
        order.append("model")
        return encode_later(texts)

    def traced_read(*args, **kwargs):
        order.append("read")
        return read(*args, **kwargs)

    server.model.encode_later = traced_encode_later
    server.view.read = traced_read
    return order


@pytest.mark.parametrize("mode", ["dense", "hybrid"])
def test_the_model_starts_before_the_store_is_read(qs_factory, mode: str) -> None:  # noqa: F811
    q = qs_factory(query__cache_entries=0)
    assert q.ask("query", text=GOUT, k=2, mode=mode)["ok"]  # awake
    order = traced(q)
    reply = q.ask("query", text=GOUT, k=2, mode=mode)
    assert reply["ok"] and reply["hits"][0]["title"] == "Gout"
    assert order == ["model", "read"]


def test_a_lexical_query_or_a_vector_starts_no_model(qs_factory) -> None:  # noqa: F811
    from .test_query_fast import ask, vector

    q = qs_factory(query__cache_entries=0)
    assert q.ask("query", text=GOUT, k=2)["ok"]
    order = traced(q)
    assert q.ask("query", text=GOUT, k=2, mode="lexical")["ok"]
    assert ask(q, vector("gout"), k=2, mode="dense")["ok"]  # the general path
    assert "model" not in order


def test_a_cached_answer_starts_no_model_and_one_invalidated_starts_it_late(qs_factory) -> None:  # noqa: F811
    q = qs_factory(query__cache_entries=10)
    first = q.ask("query", text=GOUT, k=2, mode="dense")
    order = traced(q)
    assert q.ask("query", text=GOUT, k=2, mode="dense")["hits"] == first["hits"]
    assert order == ["read"]  # from the cache: no model
    order.clear()
    index_directly(q.cfg, add_docs(q.cfg, {"pseudogout.md": "# Pseudogout\ncalcium pyrophosphate crystals in the knee"}))
    reply = q.ask("query", text=GOUT, k=2, mode="dense")  # the commit empties the cache in the snapshot
    assert reply["ok"] and reply["hits"][0]["title"] == "Gout"
    assert order == ["read", "model"]
