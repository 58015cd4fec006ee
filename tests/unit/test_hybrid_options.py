"""A query's mode, fusion and weights: roxi_mp.hybrid.options (each bad value a BadInput with a
one-line message naming the field, which the query server sends as a bad_request), and the
`roxi query` options that carry them (--mode, --fusion, --weights), its legs column and
its coverage line and warning, with a fake query client (no processes)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from roxi_mp import cli, errors
from roxi_mp.cli_format import legs
from roxi_mp.errors import BadInput
from roxi_mp.hybrid import options
from tests.conftest import write_toml


@pytest.fixture
def cfg(make_config):
    return make_config(query__mode="hybrid", query__fusion="rrf", query__dense_weight=0.7,
                       query__lexical_weight=0.4, query__max_lexical_terms=4, query__lexical_budget=1234)


def refused(msg: dict, cfg, *, text: str | None = "gout", has_vector: bool = False) -> str:
    with pytest.raises(BadInput) as caught:
        options(msg, cfg, text=text, has_vector=has_vector)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 200, message
    assert caught.value.code == errors.E_BAD_REQUEST
    return message


def test_the_configured_defaults(cfg) -> None:
    o = options({}, cfg, text="The gout of the big toe and uric acid crystals", has_vector=False)
    assert (o.mode, o.fusion, o.dense_weight, o.lexical_weight) == ("hybrid", "rrf", 0.7, 0.4)
    assert (o.rrf_k, o.candidates, o.budget) == (60.0, 100, 1234)
    assert o.words == ("gout", "big", "toe", "uric")  # stop words out, max_lexical_terms 4


def test_per_request_overrides(cfg) -> None:
    o = options({"mode": "lexical", "fusion": "weighted", "weights": {"dense": 0, "lexical": 1}}, cfg,
                text="gout", has_vector=False)
    assert (o.mode, o.fusion, o.dense_weight, o.lexical_weight) == ("lexical", "weighted", 0.0, 1.0)
    assert isinstance(o.dense_weight, float) and isinstance(o.lexical_weight, float)


def test_a_missing_weight_takes_the_configured_one(cfg) -> None:
    o = options({"weights": {"dense": 0.25}}, cfg, text="gout", has_vector=False)
    assert (o.dense_weight, o.lexical_weight) == (0.25, 0.4)
    o = options({"weights": {"lexical": 1}}, cfg, text="gout", has_vector=False)
    assert (o.dense_weight, o.lexical_weight) == (0.7, 1.0)
    o = options({"weights": {}}, cfg, text="gout", has_vector=False)
    assert (o.dense_weight, o.lexical_weight) == (0.7, 0.4)


@pytest.mark.parametrize("mode", ["fuzzy", "HYBRID", "", 1, None, ["dense"], "x" * 10_000])
def test_an_unknown_mode_is_refused(cfg, mode) -> None:
    message = refused({"mode": mode}, cfg)
    assert message.startswith("mode must be one of hybrid, dense, lexical")


@pytest.mark.parametrize("fusion", ["borda", "RRF", "", 0, None, {"rrf": 1}])
def test_an_unknown_fusion_is_refused(cfg, fusion) -> None:
    message = refused({"fusion": fusion}, cfg)
    assert message.startswith("fusion must be one of rrf, weighted")


@pytest.mark.parametrize("weights, field", [
    ({"dense": 1.5}, "weights.dense"), ({"lexical": -0.1}, "weights.lexical"),
    ({"dense": math.nan}, "weights.dense"), ({"lexical": math.inf}, "weights.lexical"),
    ({"dense": "0.5"}, "weights.dense"), ({"dense": True}, "weights.dense"), ({"lexical": None}, "weights.lexical"),
    ({"dense": [1]}, "weights.dense"),
])
def test_a_weight_out_of_range_or_of_a_wrong_type_is_refused(cfg, weights, field) -> None:
    assert refused({"weights": weights}, cfg).startswith(f"{field} must be a number in [0, 1]")


@pytest.mark.parametrize("weights", [{"bm25": 1}, {"dense": 1, "sparse": 1}, [0.5, 1], "0.5,1", 1])
def test_weights_that_are_no_map_of_dense_and_lexical_are_refused(cfg, weights) -> None:
    assert "weights must be a map" in refused({"weights": weights}, cfg)


def test_both_weights_zero_are_refused(cfg, make_config) -> None:
    assert "cannot both be 0" in refused({"weights": {"dense": 0, "lexical": 0}}, cfg)
    only_lexical = make_config(query__dense_weight=0.0, query__lexical_weight=1.0)
    assert "cannot both be 0" in refused({"weights": {"lexical": 0.0}}, only_lexical)


def test_a_lexical_query_needs_text(cfg) -> None:
    assert "lexical query needs 'text'" in refused({"mode": "lexical"}, cfg, text=None, has_vector=True)
    o = options({"mode": "lexical"}, cfg, text="gout", has_vector=True)
    assert o.words == ("gout",)


def test_a_vector_alone_has_an_empty_lexical_leg(cfg) -> None:
    for mode in ("hybrid", "dense"):
        assert options({"mode": mode}, cfg, text=None, has_vector=True).words == ()
    assert "needs 'text' or a vector" in refused({"mode": "dense"}, cfg, text=None, has_vector=False)


def test_stop_words_only_give_an_empty_lexical_leg(cfg) -> None:
    assert options({}, cfg, text="the and of it", has_vector=False).words == ()
    assert options({"mode": "lexical"}, cfg, text='"*" () :', has_vector=False).words == ()


def test_the_cache_key_tells_every_option_apart(cfg) -> None:
    keys = {options(msg, cfg, text="gout", has_vector=False).key for msg in (
        {}, {"mode": "dense"}, {"mode": "lexical"}, {"fusion": "weighted"}, {"weights": {"dense": 0.1}},
        {"weights": {"lexical": 0.1}})}
    assert len(keys) == 6


# --- roxi query -------------------------------------------------------------------------
COVERAGE = {"indexed": 1234, "chunks": 2870, "percent": 43.0, "pending": 1600, "failed": 36}
HITS = [
    {"rank": 1, "score": 0.0325, "row": 11, "chunk_id": 111, "doc_id": 1, "key": "/d/gout.md", "version": 1,
     "position": 0, "title": "Gout", "source": "/d/gout.md", "page": None, "heading": "Gout", "text": "Gout is ...",
     "dense_rank": 3, "lexical_rank": 1, "embedded": True},
    {"rank": 2, "score": 0.0161, "row": None, "chunk_id": 500, "doc_id": 2, "key": "/d/new.md", "version": 1,
     "position": 2, "title": "New", "source": "/d/new.md", "page": None, "heading": None, "text": "fresh words",
     "dense_rank": None, "lexical_rank": 2, "embedded": False},
    {"rank": 3, "score": 0.0160, "row": 12, "chunk_id": 112, "doc_id": 3, "key": "/d/lupus.md", "version": 1,
     "position": 1, "title": "Lupus", "source": "/d/lupus.md", "page": 4, "heading": None, "text": "Lupus ...",
     "dense_rank": 1, "lexical_rank": None, "embedded": True},
]


class FakeQueryClient:
    """Stands in for roxi_mp.client.QueryClient: records the search, answers `reply`."""

    calls: list[tuple[str, dict]] = []
    reply: dict = {}

    @classmethod
    def for_config(cls, cfg) -> "FakeQueryClient":
        return cls()

    def __enter__(self) -> "FakeQueryClient":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def search(self, text: str, **fields) -> dict:
        FakeQueryClient.calls.append((text, fields))
        return FakeQueryClient.reply


@pytest.fixture
def fake_client(monkeypatch):
    FakeQueryClient.calls = []
    FakeQueryClient.reply = {"hits": HITS, "rows": 1234, "mode": "hybrid", "coverage": dict(COVERAGE),
                             "generation": 17, "took_ms": 1.5}
    monkeypatch.setattr(cli, "QueryClient", FakeQueryClient)
    return FakeQueryClient


@pytest.fixture
def env(tmp_path: Path) -> dict:
    conf = write_toml(tmp_path / "cli.toml", {"supervisor__ingest_sample_on_empty": False, "hashing__dim": 256})
    return {"data": tmp_path / "data", "conf": conf}


def roxi(env: dict, *args: str) -> Result:
    runner = CliRunner(env={k: None for k in os.environ if k.startswith("ROXI_")})
    return runner.invoke(cli.main, ["--data-dir", str(env["data"]), "--config", str(env["conf"]), *args],
                         catch_exceptions=False)


def test_legs_say_which_leg_found_a_hit_and_whether_it_is_embedded() -> None:
    assert legs(HITS[0]) == "dense #3, words #1"
    assert legs(HITS[1]) == "words #2, not embedded yet"
    assert legs(HITS[2]) == "dense #1"
    assert legs({"rank": 1, "position": 0}) == ""  # a reply from an older server


def test_query_passes_mode_fusion_and_weights(env, fake_client) -> None:
    result = roxi(env, "query", "gout", "-k", "3", "--mode", "lexical", "--fusion", "weighted", "--weights", "0.5,1")
    assert result.exit_code == errors.OK, result.output
    assert fake_client.calls == [("gout", {"k": 3, "mode": "lexical", "fusion": "weighted",
                                           "weights": {"dense": 0.5, "lexical": 1.0}})]
    roxi(env, "query", "gout")
    assert fake_client.calls[1] == ("gout", {"k": 10, "mode": None, "fusion": None, "weights": None})


def test_query_prints_legs_coverage_and_a_warning_below_half(env, fake_client) -> None:
    result = roxi(env, "query", "gout")
    assert result.exit_code == errors.OK, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "  1. 0.0325  Gout  [gout.md § Gout]  (dense #3, words #1)"
    assert lines[2] == "  2. 0.0161  New  [new.md #2]  (words #2, not embedded yet)"
    assert lines[4] == "  3. 0.0160  Lupus  [lupus.md p. 4]  (dense #1)"
    assert lines[6] == "coverage: 1,234 of 2,870 chunks embedded (43 %), 1,600 pending, 36 failed; hybrid search"
    assert len(lines) == 7
    assert result.stderr == ("warning: these answers cover 43 % of the library (1,234 of 2,870 chunks embedded); "
                             "ROXI advises 50 % before heavy use\n")


@pytest.mark.parametrize("percent, warned", [(49.9, True), (50.0, False), (100.0, False)])
def test_the_warning_is_printed_only_below_half(env, fake_client, percent, warned) -> None:
    fake_client.reply["coverage"]["percent"] = percent
    result = roxi(env, "query", "gout")
    assert result.exit_code == errors.OK
    assert ("warning: these answers cover" in result.stderr) is warned
    assert f"({percent:g} %)" in result.stdout


def test_an_empty_library_gets_no_warning(env, fake_client) -> None:
    fake_client.reply.update(hits=[], coverage={"indexed": 0, "chunks": 0, "percent": 0.0, "pending": 0, "failed": 0})
    result = roxi(env, "query", "gout")
    assert result.exit_code == errors.OK
    assert result.stderr == ""
    assert "coverage: 0 of 0 chunks embedded (0 %)" in result.stdout


def test_query_json_carries_coverage_generation_and_mode(env, fake_client) -> None:
    result = roxi(env, "query", "gout", "--json")
    assert result.exit_code == errors.OK, result.output
    data = json.loads(result.stdout)
    assert data["coverage"] == COVERAGE and data["generation"] == 17 and data["mode"] == "hybrid"
    assert data["query"] == "gout" and data["hits"] == HITS and data["took_ms"] >= 0
    assert result.stderr == ""  # JSON is for scripts: the coverage is in it


@pytest.mark.parametrize("value, reason", [
    ("0.5", "expected two numbers"), ("a,b", "expected two numbers"), ("0.5,1,1", "expected two numbers"),
    ("", "expected two numbers"), ("1.5,1", "in [0, 1]"), ("-0.1,1", "in [0, 1]"), ("nan,1", "in [0, 1]"),
    ("inf,1", "in [0, 1]"), ("0,0", "cannot both be 0"),
])
def test_bad_weights_are_a_usage_error_of_one_line(env, fake_client, value: str, reason: str) -> None:
    result = roxi(env, "query", "gout", "--weights", value)
    assert result.exit_code == errors.USAGE
    error = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "--weights" in error[0] and reason in error[0], result.stderr
    assert fake_client.calls == []  # refused before asking anyone


@pytest.mark.parametrize("option, value", [("--mode", "fuzzy"), ("--fusion", "borda")])
def test_unknown_mode_or_fusion_is_a_usage_error(env, fake_client, option: str, value: str) -> None:
    result = roxi(env, "query", "gout", option, value)
    assert result.exit_code == errors.USAGE
    assert option in result.stderr and value in result.stderr
    assert fake_client.calls == []


def test_a_server_refusal_is_one_line_and_exit_5(env, fake_client, monkeypatch) -> None:
    from roxi_mp.errors import ServerError

    def refuse(self, text, **fields):
        raise ServerError(errors.E_BAD_REQUEST, "weights.dense must be a number in [0, 1], got 2")

    monkeypatch.setattr(FakeQueryClient, "search", refuse)
    result = roxi(env, "query", "gout")
    assert result.exit_code == errors.BAD_INPUT
    assert result.stderr == "roxi: weights.dense must be a number in [0, 1], got 2\n"
