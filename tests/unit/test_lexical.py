"""Unit tests of roxi_mp.lexical: user text to the words the lexical leg searches, and the
FTS5 expression made of them (issue 19: no query string can make an FTS5 syntax error).

The bad-input cases run through a real SQLite FTS5 store in tests/unit/test_store_lexical.py;
here the pure functions: words, stop words, case, unicode, bounds and the split by frequency.
"""

from __future__ import annotations

import sqlite3

import pytest

from roxi_mp.lexical import MAX_WORD_CHARS, STOP_WORDS, expression, match_expression, split_by_frequency, terms


def test_words_are_lower_cased_unique_and_in_order() -> None:
    assert terms("Gout GOUT gout, Uric acid; URIC") == ["gout", "uric", "acid"]


def test_stop_words_are_left_out_but_not_words_that_contain_them() -> None:
    assert terms("The gout of THE toe and the knee") == ["gout", "toe", "knee"]
    assert terms("these theme android notable isle") == ["theme", "android", "notable", "isle"]
    assert len(STOP_WORDS) == 33  # Lucene's English list


@pytest.mark.parametrize("text", ["", "   ", "the and of", "a an AND OR NOT", "!!! ??? --- ...", "_ __ ___",
                                  '"" () {} [] * ^ : + -', "\u200b\u2028\t\n"])
def test_only_stop_words_or_punctuation_leave_no_word(text: str) -> None:
    assert terms(text) == []
    assert match_expression(text) is None


def test_words_are_runs_of_letters_and_digits_as_unicode61_cuts_them() -> None:
    assert terms("HLA-B27 anti-CCP 2.5mg x_y") == ["hla", "b27", "anti", "ccp", "2", "5mg", "x", "y"]
    assert terms("café NAÏVE Ärzte straße 日本語 ٣٤٥ ²") == ["café", "naïve", "ärzte", "straße", "日本語", "٣٤٥", "²"]
    assert terms("emoji 😀 between🙂words") == ["emoji", "between", "words"]


def test_operators_and_punctuation_become_plain_words() -> None:
    assert terms('"NEAR(gout crystals) text:foo {text}: x* ^start -no +plus') == \
        ["near", "gout", "crystals", "text", "foo", "x", "start", "plus"]


def test_at_most_max_terms_words_the_first_ones() -> None:
    text = " ".join(f"word{i}" for i in range(1000))
    assert terms(text) == [f"word{i}" for i in range(32)]
    assert terms(text, max_terms=3) == ["word0", "word1", "word2"]
    # duplicates and stop words do not use up the bound
    assert terms("the x x x the y y z", max_terms=3) == ["x", "y", "z"]


def test_a_word_longer_than_max_word_chars_is_no_word() -> None:
    longest, longer = "a" * MAX_WORD_CHARS, "b" * (MAX_WORD_CHARS + 1)
    assert terms(f"{longer} {longest} gout") == [longest, "gout"]
    assert terms(longer * 1000) == []


def test_expression_quotes_each_word_and_joins_with_or() -> None:
    assert match_expression("Gout and uric acid") == '"gout" OR "uric" OR "acid"'
    assert expression(["a1"]) == '"a1"'
    assert expression(["rare", "scarce"], ["common"]) == '("rare" OR "scarce") AND ("rare" OR "scarce" OR "common")'


@pytest.mark.parametrize("text", ['"NEAR(', "a AND OR", 'text:"x', "*", "NEAR(a b)", "-x", "x:y", "^x", "+x",
                                  "(x", "x)", "{text}: x", "NOT x", "x OR", '"unbalanced', "a*b*c", "col:"])
def test_every_expression_parses_where_the_raw_text_does_not(text: str) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(text, tokenize='porter unicode61 remove_diacritics 2')")
    conn.execute("INSERT INTO t VALUES ('x y a b c near text foo')")
    match = match_expression(text)
    if match is not None:
        conn.execute("SELECT count(*) FROM t WHERE t MATCH ?", (match,)).fetchone()


def test_the_raw_texts_are_fts5_syntax_errors() -> None:
    """What the cases above guard against: FTS5 rejects these as typed."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(text)")
    for raw in ('"NEAR(', "a AND OR", 'text:"x', "*", "(x", "x)", "col:", "-x"):
        with pytest.raises(sqlite3.OperationalError):
            conn.execute("SELECT count(*) FROM t WHERE t MATCH ?", (raw,)).fetchone()


# --- split_by_frequency -----------------------------------------------------------------
def freq(**counts: int):
    return lambda word: counts[word]


def test_the_rarest_words_are_selective_up_to_the_budget() -> None:
    f = freq(gout=10, toe=40, pain=900, the=5000)
    assert split_by_frequency(["pain", "gout", "toe"], f, budget=50) == (["gout", "toe"], ["pain"])
    assert split_by_frequency(["pain", "gout", "toe"], f, budget=49) == (["gout"], ["pain", "toe"])
    assert split_by_frequency(["pain", "gout", "toe"], f, budget=950) == (["gout", "toe", "pain"], [])


def test_the_rarest_word_is_kept_however_common() -> None:
    f = freq(pain=900, fever=700)
    assert split_by_frequency(["pain", "fever"], f, budget=10) == (["fever"], ["pain"])
    assert split_by_frequency(["pain"], f, budget=0) == (["pain"], [])


def test_words_found_nowhere_cost_nothing_and_are_selective() -> None:
    f = freq(zzyzx=0, qqq=0, pain=900, gout=30)
    assert split_by_frequency(["pain", "zzyzx", "gout", "qqq"], f, budget=30) == (["zzyzx", "qqq", "gout"], ["pain"])
    assert split_by_frequency(["zzyzx", "qqq"], f, budget=0) == (["zzyzx", "qqq"], [])


def test_common_words_keep_the_query_order_and_each_frequency_is_asked_once() -> None:
    asked: list[str] = []
    counts = {"a1": 5, "b2": 100, "c3": 90, "d4": 80}

    def f(word: str) -> int:
        asked.append(word)
        return counts[word]

    assert split_by_frequency(["b2", "a1", "c3", "d4"], f, budget=5) == (["a1"], ["b2", "c3", "d4"])
    assert sorted(asked) == ["a1", "b2", "c3", "d4"]


def test_equal_frequencies_keep_the_query_order() -> None:
    f = freq(x=10, y=10, z=10)
    assert split_by_frequency(["z", "x", "y"], f, budget=20) == (["z", "x"], ["y"])


def test_no_words_split_into_nothing() -> None:
    assert split_by_frequency([], freq(), budget=100) == ([], [])

