"""The store's lexical leg and coverage (issue 19) on a real SQLite FTS5 store in a temporary
file: every bad query string of the issue through lexical.terms and Store.lexical, 10,000
random strings with 0 errors, only live versions answering (pending chunks of live ones
too), the chunk counts that coverage reads kept by triggers through every write path, and
migration 5 on a store created at schema 4."""

from __future__ import annotations

import hashlib
import math
import random
import sqlite3
import time
from pathlib import Path

import pytest

from roxi_mp import lexical, migrations
from roxi_mp.store import Store

DOCS = {
    "gout": ["Gout is an inflammatory arthritis caused by urate crystals in the big toe.",
             "Colchicine and allopurinol treat gout flares; HLA-B27 is unrelated."],
    "lupus": ["Systemic lupus erythematosus: anti-dsDNA antibodies, malar rash, nephritis.",
              "Hydroxychloroquine 200 mg twice daily; monitor the retina yearly."],
    "ra": ["Rheumatoid arthritis: anti-CCP antibodies and erosions of small joints.",
           "Methotrexate 15 mg weekly with folic acid; near the text of the guideline."],
    "intl": ["Café au lait, naïve Ärzte in der Straße, 日本語のテキスト, ٣٤٥ émoji 😀 tokens."],
}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def put(store: Store, key: str, *texts: str):
    chunks = [(i, t, digest(t)) for i, t in enumerate(texts)]
    return store.put_document(key=key, content_hash=digest("\0".join(texts)), source=f"/docs/{key}.md",
                              title=key.title(), size=sum(map(len, texts)), chunks=chunks)


def embed(store: Store, chunk_ids: list[int] | None = None) -> None:
    """What the indexer does once vectors are durable: rows for the chunks (all without one)."""
    if chunk_ids is None:
        chunk_ids = [r[0] for r in store.conn.execute("SELECT id FROM chunks WHERE row IS NULL AND state != 'dropped' "
                                                      "ORDER BY id")]
    start = store.committed_rows()
    store.commit_rows([(cid, start + i) for i, cid in enumerate(chunk_ids)], rows=start + len(chunk_ids))


def search(store: Store, text: str, limit: int = 10) -> list[tuple[int, int | None, float]]:
    return store.lexical(lexical.terms(text), limit)


def keys_of(store: Store, found) -> list[str]:
    out = []
    for cid, _, _ in found:
        out.append(store.conn.execute("SELECT d.key FROM chunks c JOIN documents d ON d.id = c.doc_id WHERE c.id=?",
                                      (cid,)).fetchone()[0])
    return out


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "roxi.sqlite3")
    for key, texts in DOCS.items():
        put(s, key, *texts)
    embed(s, [r[0] for r in s.conn.execute("SELECT id FROM chunks WHERE doc_id IN "
                                           "(SELECT id FROM documents WHERE key IN ('gout', 'lupus'))")])
    yield s
    s.close()


# --- bad input (issue 19) ---------------------------------------------------------------
@pytest.mark.parametrize("text, finds", [
    ('"gout', "gout"), ('gout"', "gout"), ('"gout crystals"', "gout"), ("gout*", "gout"), ("*", None),
    ("NEAR", "ra"), ("NEAR(gout crystals)", "gout"), ("NEAR(a b)", "ra"), ("gout AND", "gout"),
    ("AND gout", "gout"), ("a AND OR", None), ("gout OR", "gout"), ("NOT gout", "gout"), ("gout NOT", "gout"),
    ("-gout", "gout"), ("gout -lupus", "gout"), ("text:gout", "gout"), ("{text}: gout", "gout"),
    ("{text colchicine}: x", "gout"), ("chunks_fts:gout", "gout"), ("rowid:1", None), ('text:"x', "ra"),
    ("^gout", "gout"), ("+gout", "gout"), ("gout^2", "gout"), ("(gout", "gout"), ("gout)", "gout"),
    ("((gout) OR (lupus", "gout"), ("anti-CCP", "ra"), ("HLA-B27", "gout"), ("malar:rash", "lupus"),
    ('"NEAR(', "ra"), ("x:", None), (":", None), ("'; DROP TABLE chunks; --", None), ("\\", None),
    ("gout\0crystals", "gout"), ("'", None), ('"" ""', None),
])
def test_fts5_operators_and_punctuation_are_plain_words(store: Store, text: str, finds: str | None) -> None:
    """Each string is searched as the words in it (and finds the document holding them)."""
    found = search(store, text)
    assert all(k in DOCS for k in keys_of(store, found))
    if finds is not None:
        assert finds in keys_of(store, found), (text, keys_of(store, found))
    assert store.conn.execute("SELECT count(*) FROM chunks").fetchone()[0] == 7  # nothing happened to the store


def test_operators_do_not_operate(store: Store) -> None:
    """`gout*` is no prefix query, `-lupus` no exclusion, `text:` no column filter."""
    assert search(store, "gou*") == []
    assert "lupus" in keys_of(store, search(store, "gout -lupus"))
    assert search(store, "text:zzz") == search(store, "text zzz")


@pytest.mark.parametrize("text", ["the and of", "a AND OR NOT", "!!! ??? ...", '"" () {} : * ^ - +', "  ", "_"])
def test_only_stop_words_or_punctuation_is_an_empty_leg(store: Store, text: str) -> None:
    assert lexical.terms(text) == []
    assert store.lexical(lexical.terms(text), 10) == []


def test_no_words_and_no_limit_ask_nothing(store: Store) -> None:
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    assert store.lexical([], 10) == [] and store.lexical(["gout"], 0) == []
    store.conn.set_trace_callback(None)
    assert statements == []


def test_a_very_long_query_is_bounded(store: Store) -> None:
    text = " ".join(f"filler{i}" for i in range(50_000)) + " gout crystals"
    words = lexical.terms(text)
    assert len(words) == 32 and "gout" not in words  # the first 32 words
    assert store.lexical(words, 10) == []
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    started = time.perf_counter()
    found = store.lexical(lexical.terms("gout crystals " + text), 10)
    assert time.perf_counter() - started < 1.0
    store.conn.set_trace_callback(None)
    assert set(keys_of(store, found)) == {"gout"}
    assert max(map(len, statements)) < 32 * (lexical.MAX_WORD_CHARS + 8) * 2 + 400


def test_a_query_word_of_the_longest_length_is_searched(store: Store) -> None:
    word = "x" * lexical.MAX_WORD_CHARS
    put(store, "long", f"a chunk holding {word} once")
    assert keys_of(store, search(store, word)) == ["long"]
    assert search(store, word + "x") == []


#: pieces random queries are made of: operators, quotes, brackets, stored words, marks,
#: emoji, control characters, separators
PIECES = ['"', "'", "*", "^", ":", "-", "+", "(", ")", "{", "}", "[", "]", "NEAR", "NEAR(", "AND", "OR", "NOT",
          "text:", "{text}:", "rowid", "rank", "bm25", "chunks_fts", "\\", ";", ",", ".", "\0", "\t", "\n", " ",
          "\u00a0", "\u2028", "\u200b", "\u200d", "\u200f", "\ufeff", "gout", "GOUT", "crystals", "anti", "ccp",
          "b27", "café", "cafe\u0301", "ärzte", "日本語", "٣٤٥", "😀", "👩\u200d⚕️", "İ", "ß", "ﬁ", "Ⅻ", "²", "_"]


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randrange(0, 24)):
        pick = rng.random()
        if pick < 0.45:
            parts.append(rng.choice(PIECES))
        elif pick < 0.6:
            parts.append(chr(rng.randrange(0x300, 0x370)))  # combining marks
        elif pick < 0.7:
            parts.append(chr(rng.randrange(0x1F300, 0x1FB00)))  # emoji
        elif pick < 0.85:
            parts.append("".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 8))))
        else:
            code = rng.randrange(0, 0x110000 - 0x800)
            parts.append(chr(code if code < 0xD800 else code + 0x800))  # any code point but surrogates
    return "".join(parts)


def test_ten_thousand_random_strings_make_no_error(store: Store) -> None:
    rng = random.Random(19)
    ids = {r[0] for r in store.conn.execute("SELECT id FROM chunks")}
    errors, found_some = [], 0
    started = time.perf_counter()
    for _ in range(10_000):
        text = random_text(rng)
        try:
            found = store.lexical(lexical.terms(text), 5)
        except Exception as exc:  # every failure is reported below, with its input
            errors.append((text, repr(exc)))
            continue
        assert len(found) <= 5
        assert all(cid in ids and math.isfinite(score) for cid, _, score in found), (text, found)
        found_some += bool(found)
    assert errors == [], errors[:5]
    assert found_some > 1000  # the strings did reach the index, not only the empty leg
    assert time.perf_counter() - started < 20  # ~2 s on an idle machine


# --- what the lexical leg may see ---------------------------------------------------------
def test_pending_chunks_of_live_versions_are_found_without_a_row(store: Store) -> None:
    found = search(store, "methotrexate")  # "ra" is stored, not embedded
    assert keys_of(store, found) == ["ra"] and found[0][1] is None and found[0][2] > 0
    found = search(store, "colchicine")  # "gout" is embedded
    row = store.conn.execute("SELECT row FROM chunks WHERE id=?", (found[0][0],)).fetchone()[0]
    assert keys_of(store, found) == ["gout"] and found[0][1] == row is not None


def test_leased_and_failed_chunks_of_live_versions_are_found_without_a_row(store: Store) -> None:
    leased = store.claim("embedder-1", 1, now=1000.0, lease_seconds=30)
    assert [store.lexical(lexical.terms(text), 10)[0][:2] for _, text in leased] == [(leased[0][0], None)]
    store.release([leased[0][0]], owner="embedder-1", error="boom", max_attempts=1)
    assert store.conn.execute("SELECT state FROM chunks WHERE id=?", (leased[0][0],)).fetchone()[0] == "failed"
    assert store.lexical(lexical.terms(leased[0][1]), 10)[0][:2] == (leased[0][0], None)


def test_dead_versions_are_never_found(store: Store) -> None:
    store.delete_document("gout")
    assert search(store, "colchicine allopurinol urate") == []
    assert "gout" not in keys_of(store, search(store, "arthritis", 10))
    assert store.chunk_hits([r[0] for r in store.conn.execute("SELECT id FROM chunks")], with_text=False).keys() \
        == {r[0] for r in store.conn.execute("SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
                                             "WHERE d.status = 'live'")}


def test_a_pending_replacement_answers_only_once_promoted(store: Store) -> None:
    put(store, "lupus", "Lupus revised: belimumab and anifrolumab for refractory disease.")
    assert search(store, "belimumab") == []  # the replacement is pending
    assert keys_of(store, search(store, "hydroxychloroquine")) == ["lupus"]  # the live version answers
    new = store.conn.execute("SELECT c.id FROM chunks c JOIN documents d ON d.id = c.doc_id "
                             "WHERE d.status = 'pending'").fetchall()
    embed(store, [r[0] for r in new])  # all its chunks indexed: promoted, the old version dead
    found = search(store, "belimumab")
    assert keys_of(store, found) == ["lupus"] and found[0][1] is not None
    assert search(store, "hydroxychloroquine") == []


def test_many_dead_chunks_ranking_first_do_not_crowd_out_live_ones(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as s:
        for i in range(60):  # better bm25 than any live chunk: the word three times, short text
            put(s, f"dead{i}", f"zebra zebra zebra {i}")
            s.delete_document(f"dead{i}")
        for i in range(8):
            put(s, f"live{i}", f"one zebra among many other words in a long live chunk number {i}")
        found = s.lexical(["zebra"], 5)
        assert len(found) == 5 and all(k.startswith("live") for k in keys_of(s, found))
        assert len(s.lexical(["zebra"], 50)) == 8


def test_scores_are_positive_and_best_first(store: Store) -> None:
    put(store, "more", "gout gout gout", "gout is mentioned once in a much longer chunk about other things")
    found = search(store, "gout", 10)
    scores = [score for _, _, score in found]
    assert scores == sorted(scores, reverse=True) and all(s > 0 for s in scores)
    assert keys_of(store, found)[0] == "more"


def test_porter_stemming_and_folding_find_other_forms(store: Store) -> None:
    assert keys_of(store, search(store, "erosion"))[0] == "ra"
    assert keys_of(store, search(store, "CRYSTAL"))[0] == "gout"
    assert keys_of(store, search(store, "cafe arzte strasse"))[0] == "intl"
    assert keys_of(store, search(store, "日本語のテキスト"))[0] == "intl"


def test_a_decomposed_query_finds_the_composed_word(store: Store) -> None:
    assert keys_of(store, search(store, "nai\u0308ve"))[:1] == ["intl"]


def test_a_word_first_asked_before_any_chunk_held_it_is_found_once_stored(store: Store) -> None:
    assert search(store, "zzyzx") == []
    put(store, "new", "the zzyzx syndrome, newly described")
    assert keys_of(store, search(store, "zzyzx")) == ["new"]


# --- coverage: chunk counts kept by triggers ------------------------------------------------
STATES = ("pending", "leased", "indexed", "failed", "copy", "dropped")


def check_counts(store: Store) -> dict:
    """The coverage, after checking that it and the FTS index agree with the chunks table."""
    counted = dict.fromkeys(STATES, 0)
    counted.update(store.conn.execute("SELECT state, count(*) FROM chunks GROUP BY state"))
    assert dict(store.conn.execute("SELECT state, n FROM chunk_counts")) == counted
    store.conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES ('integrity-check')")
    coverage = store.coverage()
    chunks = sum(n for state, n in counted.items() if state != "dropped")
    assert coverage == {
        "indexed": counted["indexed"], "chunks": chunks,
        "percent": round(100 * counted["indexed"] / chunks, 1) if chunks else 0.0,
        "pending": counted["pending"] + counted["leased"] + counted["copy"], "failed": counted["failed"],
        "generation": store.generation()}
    return coverage


def summary(coverage: dict) -> tuple:
    return tuple(coverage[name] for name in ("indexed", "chunks", "percent", "pending", "failed", "generation"))


def test_coverage_follows_every_write_path(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as s:
        assert summary(check_counts(s)) == (0, 0, 0.0, 0, 0, 0)
        put(s, "a", "alpha one", "alpha two")
        put(s, "b", "beta one")
        assert summary(check_counts(s)) == (0, 3, 0.0, 3, 0, 0)
        leased = [cid for cid, _ in s.claim("e1", 2, now=1000.0, lease_seconds=30)]
        assert summary(check_counts(s)) == (0, 3, 0.0, 3, 0, 0)  # leased chunks are pending work
        assert s.release([leased[0]], owner="e1", error="boom", max_attempts=1) == 1
        assert summary(check_counts(s)) == (0, 3, 0.0, 2, 1, 0)
        embed(s, [leased[1]])
        assert summary(check_counts(s)) == (1, 3, 33.3, 1, 1, 1)
        assert s.retry_failed() == 1
        assert summary(check_counts(s)) == (1, 3, 33.3, 2, 0, 1)
        embed(s)
        assert summary(check_counts(s)) == (3, 3, 100.0, 0, 0, 2)
        # A replacement: one chunk's text already embedded (a copy), one new; both versions count.
        result = put(s, "a", "alpha one", "alpha three")
        assert (result.outcome, result.reused) == ("replaced", 1)
        assert summary(check_counts(s)) == (3, 5, 60.0, 2, 0, 2)
        embed(s)  # the replacement complete: promoted, the old version's chunks dropped
        assert summary(check_counts(s)) == (3, 3, 100.0, 0, 0, 3)
        s.delete_document("b")
        assert summary(check_counts(s)) == (2, 2, 100.0, 0, 0, 3)
        put(s, "c", "gamma")
        s.delete_document("c")  # dropped before it was ever embedded
        assert summary(check_counts(s)) == (2, 2, 100.0, 0, 0, 3)
        with s.transaction() as conn:  # what a compaction's cleanup deletes
            conn.execute("UPDATE chunks SET row = NULL WHERE state = 'dropped'")
            conn.execute("DELETE FROM chunks WHERE state = 'dropped'")
        check_counts(s)
        assert s.conn.execute("SELECT n FROM chunk_counts WHERE state = 'dropped'").fetchone()[0] == 0
        s.reset_for_model("other-model", 8)  # reembed: every vector forgotten
        assert summary(check_counts(s)) == (0, 2, 0.0, 2, 0, 3)
        with s.transaction() as conn:  # a document deleted with its chunks (foreign-key cascade)
            conn.execute("DELETE FROM documents WHERE key = 'a'")
        assert summary(check_counts(s)) == (0, 0, 0.0, 0, 0, 3)


def test_the_lexical_index_follows_text_changes(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as s:
        put(s, "a", "original wording")
        with s.transaction() as conn:
            conn.execute("UPDATE chunks SET text = 'corrected wording' WHERE text = 'original wording'")
        check_counts(s)
        assert s.lexical(["original"], 5) == [] and len(s.lexical(["corrected"], 5)) == 1


def test_migration_5_indexes_and_counts_the_chunks_of_an_old_store(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys=OFF")
    for _, sql in migrations.MIGRATIONS[:4]:
        conn.executescript(sql)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '4')")
    conn.executemany("INSERT INTO documents(id, key, version, status, content_hash, source, title, bytes, created) "
                     "VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0)",
                     [(1, "k1", 1, "dead", "h1", "s", "Old"), (2, "k1", 2, "live", "h2", "s", "New"),
                      (3, "k2", 1, "live", "h3", "s", "Other"), (4, "k2", 2, "pending", "h4", "s", "Next")])
    conn.executemany("INSERT INTO chunks(id, doc_id, position, text, hash, state, row) VALUES (?, ?, ?, ?, ?, ?, ?)",
                     [(1, 1, 0, "obsolete osteomalacia", "c1", "dropped", 0),
                      (2, 2, 0, "current osteoporosis", "c2", "indexed", 1),
                      (3, 2, 1, "current denosumab", "c3", "pending", None),
                      (4, 3, 0, "scleroderma skin", "c4", "indexed", 2),
                      (5, 4, 0, "scleroderma revised nintedanib", "c5", "leased", None),
                      (6, 3, 1, "scleroderma failed", "c6", "failed", None)])
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert int(s.get_meta("schema_version")) == migrations.LATEST >= 5
        coverage = check_counts(s)
        assert summary(coverage)[:5] == (2, 5, 40.0, 2, 1)
        fts = {r[0] for r in s.conn.execute("SELECT rowid FROM chunks_fts WHERE chunks_fts MATCH ?",
                                            ('"osteomalacia" OR "osteoporosis" OR "denosumab" OR "scleroderma"',))}
        assert fts == {1, 2, 3, 4, 5, 6}  # every chunk indexed, dropped ones too
        assert [c[:2] for c in s.lexical(["osteoporosis"], 5)] == [(2, 1)]
        assert [c[:2] for c in s.lexical(["denosumab"], 5)] == [(3, None)]
        assert s.lexical(["osteomalacia"], 5) == [] and s.lexical(["nintedanib"], 5) == []
        assert sorted(c[0] for c in s.lexical(["scleroderma"], 5)) == [4, 6]
        put(s, "k3", "triggers work after the migration: sarcoidosis")
        assert keys_of(s, s.lexical(["sarcoidosis"], 5)) == ["k3"]
        check_counts(s)
