"""The SciFact benchmark's metrics and BEIR readers (tests/bench/beir_eval.py), on hand-computed cases."""

from __future__ import annotations

import json
import math

import pytest

from tests.bench import beir_eval as be


def log2(rank: int) -> float:
    return math.log2(rank + 1)


def test_a_document_scores_by_its_best_chunk():
    hits = [{"key": "a", "score": 0.9}, {"key": "b", "score": 0.8}, {"key": "a", "score": 0.95},
            {"key": "c", "score": 0.1}, {"key": "b", "score": 0.2}]
    assert be.document_scores(hits) == {"a": 0.95, "b": 0.8, "c": 0.1}


def test_ranking_orders_by_best_chunk_and_keeps_first_seen_order_on_ties():
    # c's best chunk comes last but beats everything; b and d tie, b was seen first
    hits = [{"key": "a", "score": 3.0}, {"key": "b", "score": 2.0}, {"key": "d", "score": 2.0},
            {"key": "c", "score": 1.0}, {"key": "c", "score": 5.0}]
    assert be.ranked_documents(hits) == ["c", "a", "b", "d"]
    assert be.ranked_documents([]) == []


def test_ndcg_of_a_perfect_and_of_an_empty_ranking():
    grades = {"x": 1, "y": 1}
    assert be.ndcg_at(["x", "y", "z"], grades) == pytest.approx(1.0)
    assert be.ndcg_at(["y", "x"], grades) == pytest.approx(1.0)
    assert be.ndcg_at([], grades) == 0.0
    assert be.ndcg_at(["z", "w"], grades) == 0.0


def test_ndcg_by_hand():
    # one relevant at rank 3 of two relevant documents: (1/log2 4) / (1/log2 2 + 1/log2 3)
    grades = {"x": 1, "y": 1}
    expected = (1 / log2(3)) / (1 / log2(1) + 1 / log2(2))
    assert be.ndcg_at(["a", "b", "x"], grades) == pytest.approx(expected)
    assert expected == pytest.approx(0.3065735963)


def test_ndcg_is_binary_and_ignores_grade_zero():
    # a grade of 2 counts like 1; a grade of 0 is not relevant (nor in the ideal DCG)
    assert be.ndcg_at(["x"], {"x": 2, "y": 0}) == pytest.approx(1.0)
    assert be.ndcg_at(["y", "x"], {"x": 2, "y": 0}) == pytest.approx(1 / log2(2))
    assert be.ndcg_at(["y"], {"y": 0}) == 0.0


def test_ndcg_cuts_at_k_in_the_ranking_and_in_the_ideal():
    # 12 relevant: the ideal DCG is of 10 only, so 10 relevant in the first 10 is perfect
    grades = {f"r{i}": 1 for i in range(12)}
    assert be.ndcg_at([f"r{i}" for i in range(10)], grades) == pytest.approx(1.0)
    # a relevant document at rank 11 adds nothing to nDCG@10
    ranked = [f"n{i}" for i in range(10)] + ["r0"]
    assert be.ndcg_at(ranked, grades) == 0.0
    assert be.ndcg_at(ranked, grades, k=11) > 0.0


def test_recall_at_k():
    grades = {"x": 1, "y": 1, "z": 0}
    ranked = [f"n{i}" for i in range(99)] + ["x", "y"]  # x at rank 100, y at 101
    assert be.recall_at(ranked, grades) == pytest.approx(0.5)
    assert be.recall_at(ranked, grades, k=101) == pytest.approx(1.0)
    assert be.recall_at([], grades) == 0.0
    assert be.recall_at(["z"], {"z": 0}) == 0.0


def test_evaluate_averages_over_every_qrels_query_and_a_missing_answer_scores_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"d": 1}}
    runs = {"q1": ["a"], "q2": ["x", "c"], "extra": ["a"]}  # q3 unanswered, extra not a test query
    result = be.evaluate(runs, qrels)
    q2 = (1 / log2(2)) / (1 / log2(1) + 1 / log2(2))
    assert result["queries"] == 3
    assert result["ndcg"] == pytest.approx((1.0 + q2 + 0.0) / 3)
    assert result["recall"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)


def write_beir(tmp_path):
    (tmp_path / "qrels").mkdir()
    docs = [{"_id": "10", "title": "Gout", "text": "Urate crystals.", "metadata": {}},
            {"_id": "11", "title": "", "text": " Only text. "}]
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [{"_id": "1", "text": "what causes gout"}, {"_id": "2", "text": "a training query"},
               {"_id": "3", "text": "another"}]
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n3\t11\t1\n1\t10\t1\n1\t11\t0\n")
    return tmp_path


def test_readers_of_the_beir_layout(tmp_path):
    root = write_beir(tmp_path)
    docs = list(be.read_corpus(root))
    assert [d.id for d in docs] == ["10", "11"]
    assert docs[0].content == "Gout\n\nUrate crystals."
    assert docs[1].content == "Only text."
    qrels = be.read_qrels(root)
    assert qrels == {"3": {"11": 1}, "1": {"10": 1, "11": 0}}
    # only the queries with qrels rows are test queries, in the qrels' order
    assert be.queries_with_qrels(be.read_queries(root), qrels) == {"3": "another", "1": "what causes gout"}


def test_a_qrels_query_missing_from_the_queries_is_an_error():
    with pytest.raises(KeyError, match="not in queries.jsonl"):
        be.queries_with_qrels({"1": "a"}, {"1": {"d": 1}, "9": {"d": 1}})


def fake_result(ndcg: dict[str, float]) -> dict:
    quality = {m: {"ndcg": v, "recall": 0.9} for m, v in ndcg.items()}
    latency = {m: {"p50": 0.004, "p99": 0.009, "ndcg_k10": v - 0.01} for m, v in ndcg.items()}
    return {"quality": quality, "latency": latency, "queries": 300, "documents": 5183, "reused": True,
            "index": {"chunks": 8257, "indexed": 8257, "failed": 0, "seconds": 0.0},
            "defaults": {"fusion": "rrf", "rrf_k": 60, "dense_weight": 1.0, "lexical_weight": 1.0, "candidates": 100},
            "sweep": [{"fusion": "rrf", "rrf_k": 60, "dense": 1.0, "lexical": 1.0, "ndcg": 0.72, "recall": 0.95,
                       "ndcg_k100": 0.71},
                      {"fusion": "weighted", "rrf_k": None, "dense": 1.0, "lexical": 0.5, "ndcg": None,
                       "recall": None, "ndcg_k100": None, "error": "bad_request"}]}


def test_acceptance_lines_of_issue_19():
    from tests.bench.bench_beir import markdown, verdicts
    lines = verdicts(fake_result({"dense": 0.652, "lexical": 0.67, "hybrid": 0.709}))
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["PASS", "PASS", "FAIL"]
    lines = verdicts(fake_result({"dense": 0.6551, "lexical": 0.669, "hybrid": 0.71}))
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["FAIL", "FAIL", "PASS"]
    assert verdicts(fake_result({"dense": 0.635}))[0].endswith("PASS")
    # a server without `mode` measures dense only: the others are said to be unmeasured
    only_dense = fake_result({"dense": 0.652})
    assert [line.endswith("NOT MEASURED (the server takes no `mode`)") for line in verdicts(only_dense)] == \
        [False, True, True]
    text = markdown(fake_result({"dense": 0.652, "lexical": 0.68, "hybrid": 0.72}))
    assert "| hybrid | 0.7200 | 0.9000 | 4.0 | 9.0 | 0.718 Qdrant RRF" in text
    assert "| rrf | 60 | 1 / 1 | 0.7200 | 0.9500 | 0.7100 |" in text
    assert "| weighted | - | 1 / 0.5 | refused | - | - |" in text
    assert "| lexical | - | - | - | - |" in markdown(only_dense)
