"""User text made into an FTS5 query the lexical leg can always run.

FTS5's query language gives meaning to quotes, `*`, `^`, `:`, `-`, parentheses and the
words AND, OR, NOT and NEAR, and raises a syntax error on anything it cannot parse. A
query string never reaches it as typed: it is cut into words the way the index's
unicode61 tokenizer cuts text (runs of letters and digits), each word goes in as an FTS5
string ("word": inside double quotes everything is literal, and the words hold no quote),
and the words are joined with OR, so a chunk matching any of them is a candidate and bm25
ranks those matching more, and rarer, words first. English stop words (Lucene's list) are
left out: they match nearly every chunk, cost the most to score and barely move bm25. A
query with no word left has an empty lexical leg (no FTS call at all); the dense leg still
answers it.

The index stems with porter, and so does FTS5 for the words of a query, so "erosions"
finds "erosion". Words are bounded in number (`max_terms`, the first ones kept) and in
length (a longer run is no word a person typed), so a query costs at most a bounded
number of posting lists, whatever its length.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Callable, Sequence

#: Lucene's English stop words (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET), as Anserini's
#: BM25 baselines use them
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split())

#: letters and digits: what unicode61 keeps as token characters (underscore separates)
WORD = re.compile(r"[^\W_]+")

#: characters of the longest word kept
MAX_WORD_CHARS = 64


def terms(text: str, *, max_terms: int = 32) -> list[str]:
    """The words of `text` the lexical leg searches: lower-cased, unique, no stop word,
    at most `max_terms` (the first ones)."""
    out: list[str] = []
    seen: set[str] = set()
    # Composed first: "nai\u0308ve" is one word to the index's tokenizer (which then folds
    # the diacritic away), and to this regex only once the mark is composed into its letter.
    for match in WORD.finditer(unicodedata.normalize("NFC", text)):
        word = match.group().lower()
        if word in seen or word in STOP_WORDS or len(word) > MAX_WORD_CHARS:
            continue
        seen.add(word)
        out.append(word)
        if len(out) >= max_terms:
            break
    return out


def match_expression(text: str, *, max_terms: int = 32) -> str | None:
    """An FTS5 MATCH expression for `text` that cannot be a syntax error, or None when it
    has no word to search (only stop words, punctuation or nothing)."""
    words = terms(text, max_terms=max_terms)
    return expression(words) if words else None


def expression(selective: Sequence[str], common: Sequence[str] = ()) -> str:
    """The MATCH expression of words from `terms`: chunks holding any `selective` word,
    ranked by bm25 over every word.

    FTS5 scores every chunk an expression matches (about a microsecond each), so a query
    with a word found in half the library costs half the library. `(S) AND (S OR C)`
    matches only the chunks holding a selective (rare) word, and its bm25 still counts
    the common words in them; the selective words count twice, which weighs rare words
    a little more (measured on SciFact: nDCG@10 0.684-0.694 against 0.694 for the plain
    OR of every word, at a fraction of the cost)."""
    s = " OR ".join(f'"{w}"' for w in selective)
    if not common:
        return s
    return f"({s}) AND ({s} OR {' OR '.join(f'{chr(34)}{w}{chr(34)}' for w in common)})"


def split_by_frequency(words: Sequence[str], frequency: Callable[[str], int], *,
                       budget: int) -> tuple[list[str], list[str]]:
    """(selective, common) words: the rarest first, as long as the chunks they are found
    in add up to at most `budget` (the rarest one always, however common), the rest common.
    Words found nowhere cost nothing and are selective."""
    counts = {w: frequency(w) for w in words}
    selective, total = [], 0
    for w in sorted(words, key=counts.__getitem__):
        if selective and total + counts[w] > budget:
            break
        selective.append(w)
        total += counts[w]
    return selective, [w for w in words if w not in selective]
