"""BEIR files and retrieval metrics for the SciFact benchmark (bench_beir), as pure functions.

A BEIR dataset directory holds `corpus.jsonl` (one document a line: `_id`, `title`,
`text`), `queries.jsonl` (`_id`, `text`) and `qrels/<split>.tsv` (a header, then
query-id, corpus-id, score). The test queries are the queries with rows in the qrels.
Nothing here writes anything: the data stays where it is (its licence allows evaluation
only, see ../shared/beir/README.md).

The system answers with chunks; a document scores by its best chunk, and the documents
are ranked by that score. nDCG@10 uses binary relevance (a qrels grade > 0 is relevant),
the discount log2(rank + 1) and an ideal DCG from the number of relevant documents, as
BEIR's pytrec_eval does with SciFact's all-1 grades; recall@100 is the share of a query's
relevant documents in its first 100. A test query without an answer scores 0 on both.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str

    @property
    def content(self) -> str:
        """What the benchmark stores: the title, a blank line, the abstract (one text, so
        the title's words count for the dense and the lexical leg alike)."""
        return (self.title + "\n\n" + self.text).strip()


def read_corpus(directory: Path) -> Iterator[Document]:
    with open(Path(directory) / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                doc = json.loads(line)
                yield Document(id=str(doc["_id"]), title=doc.get("title") or "", text=doc.get("text") or "")


def read_queries(directory: Path) -> dict[str, str]:
    with open(Path(directory) / "queries.jsonl", encoding="utf-8") as f:
        return {str(q["_id"]): q["text"] for q in map(json.loads, filter(str.strip, f))}


def read_qrels(directory: Path, split: str = "test") -> dict[str, dict[str, int]]:
    """{query id: {document id: grade}} of `qrels/<split>.tsv` (its header line skipped)."""
    qrels: dict[str, dict[str, int]] = {}
    with open(Path(directory) / "qrels" / f"{split}.tsv", encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t")
        next(rows, None)
        for row in rows:
            if len(row) >= 3:
                qrels.setdefault(row[0].strip(), {})[row[1].strip()] = int(row[2])
    return qrels


def queries_with_qrels(queries: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]) -> dict[str, str]:
    """The queries that have qrels rows, in the qrels' order; KeyError names a qrels query
    missing from the queries (a broken dataset, not a query to skip)."""
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        raise KeyError(f"{len(missing)} qrels queries are not in queries.jsonl, e.g. {missing[:3]}")
    return {qid: queries[qid] for qid in qrels}


def document_scores(hits: Iterable[Mapping]) -> dict[str, float]:
    """{document key: its best chunk's score} over chunk hits (each with `key` and `score`)."""
    scores: dict[str, float] = {}
    for hit in hits:
        key, score = hit["key"], float(hit["score"])
        if key not in scores or score > scores[key]:
            scores[key] = score
    return scores


def ranking(scores: Mapping[str, float]) -> list[str]:
    """Document keys, best score first; equal scores keep their first-seen order."""
    return sorted(scores, key=lambda key: -scores[key])


def ranked_documents(hits: Sequence[Mapping]) -> list[str]:
    return ranking(document_scores(hits))


def relevant(grades: Mapping[str, int]) -> set[str]:
    return {doc for doc, grade in grades.items() if grade > 0}


def ndcg_at(ranked: Sequence[str], grades: Mapping[str, int], k: int = 10) -> float:
    """Binary nDCG@k of one query: DCG of the first k documents over the ideal DCG of
    min(k, number of relevant documents) relevant ones; 0 when nothing is relevant."""
    good = relevant(grades)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(good)) + 1))
    if ideal == 0:
        return 0.0
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], start=1) if doc in good)
    return dcg / ideal


def recall_at(ranked: Sequence[str], grades: Mapping[str, int], k: int = 100) -> float:
    good = relevant(grades)
    return len(good & set(ranked[:k])) / len(good) if good else 0.0


def evaluate(runs: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], *,
             ndcg_k: int = 10, recall_k: int = 100) -> dict[str, float]:
    """Means over every qrels query of nDCG@ndcg_k and recall@recall_k; `runs` maps a query
    id to its ranked document keys (a query missing from it scores 0)."""
    if not qrels:
        return {"ndcg": 0.0, "recall": 0.0, "queries": 0}
    ndcg = sum(ndcg_at(runs.get(qid, []), grades, ndcg_k) for qid, grades in qrels.items())
    recall = sum(recall_at(runs.get(qid, []), grades, recall_k) for qid, grades in qrels.items())
    return {"ndcg": ndcg / len(qrels), "recall": recall / len(qrels), "queries": len(qrels)}
