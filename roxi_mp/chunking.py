"""Split documents into overlapping word windows, the unit that gets embedded and searched.

A window holds at most `size` words and shares about `overlap` words with the next one, so
a passage cut by a window edge is still whole in one of the two. A window prefers to end
at a sentence end (., !, ?) or before a new Markdown block (blank line, heading, list item)
when one lies in its last ~30%, which keeps chunks readable as search results. The work is
one pass over the words with a buffer of about one window, so a 50 MB file costs O(n) time,
and `iter_chunks_from_lines` lets a caller stream a file line by line instead of loading
it whole. Whitespace inside a chunk is collapsed to single spaces.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from .errors import BadInput, ConfigError

#: default window length, in words (200)
DEFAULT_SIZE = 200
#: default number of words shared by consecutive windows (40)
DEFAULT_OVERLAP = 40
#: smallest window accepted, in words (8)
MIN_SIZE = 8
#: fraction of a window, at its end, searched for a boundary to cut at (0.3)
BOUNDARY_TAIL = 0.3
#: longest piece of one line handed to str.split at once, in characters (65536)
MAX_PIECE_CHARS = 65536

_SENTENCE_ENDS = frozenset(".!?…。！？")
# Closing quotes, brackets and Markdown emphasis may follow the full stop: `end." Next`.
_CLOSERS = "\"')]}»”’*_`"
# A Markdown heading or list item starts a new block, so a window may end just before it.
_BLOCK_START = re.compile(r"[ \t]{0,3}(?:(?P<heading>#{1,6})|[-*+]|\d{1,9}[.)])(?:[ \t]|$)")
# First characters that can open a block; most prose lines skip the regex on this test.
_BLOCK_FIRST = frozenset("#-*+0123456789 \t")
_WHITESPACE = re.compile(r"\s")


@dataclass(frozen=True)
class Chunk:
    """One window of a document; `position` is its 0-based index within the document, and
    `tag` the tag of the line its first word came from (`iter_tagged_chunks`; else None)."""

    position: int
    text: str
    tag: object = None


def chunk_text(
    text: str, *, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP
) -> list[Chunk]:
    """All chunks of `text`; [] when it holds no words."""
    return list(iter_chunks(text, size=size, overlap=overlap))


def iter_chunks(
    text: str, *, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP
) -> Iterator[Chunk]:
    """Chunks of `text`, produced lazily; parameters are checked before the first chunk."""
    if not isinstance(text, str):
        raise BadInput(f"text must be a str, got {type(text).__name__}")
    return iter_chunks_from_lines(_lines_of(text), size=size, overlap=overlap)


def iter_chunks_from_lines(
    lines: Iterable[str], *, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP
) -> Iterator[Chunk]:
    """Chunks of the document made of `lines` (with or without their line ends).

    Gives the same chunks as `chunk_text` on the joined text, while holding only about one
    window of words, so an open file can be passed directly.
    """
    _check_params(size, overlap)
    return _windows(lines, size, overlap)


def iter_tagged_chunks(
    lines: Iterable[tuple[str, object]], *, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP,
    section_of: Callable[[object], object] | None = None,
) -> Iterator[Chunk]:
    """Chunks of a document given as (line, tag) pairs, each chunk carrying the tag of the
    line its first word came from: where it came from (a page, a heading path). The same
    windows as `iter_chunks_from_lines` over the lines alone, except that with
    `section_of`, a line whose tag is of another section than the line before starts a new
    chunk (the old section's last words end one, without overlap into the new section): a
    chunk is then never cited under a heading it mostly is not under."""
    _check_params(size, overlap)
    return _windows(lines, size, overlap, tagged=True, section_of=section_of)


def _check_params(size: int, overlap: int) -> None:
    # bool is an int subclass; `size=True` is a bug at the call site, not a window of 1.
    if not isinstance(size, int) or isinstance(size, bool) or size < MIN_SIZE:
        raise ConfigError(f"chunk size must be an integer >= {MIN_SIZE} words, got {size!r}")
    if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap < size // 2:
        raise ConfigError(
            f"chunk overlap must be an integer in [0, {size // 2}) for size {size}, "
            f"got {overlap!r}"
        )


def _windows(lines: Iterable, size: int, overlap: int, tagged: bool = False,
             section_of: Callable[[object], object] | None = None) -> Iterator[Chunk]:
    # `words[start:]` are the words not yet fully emitted; `ends[i]` says a window may end
    # after words[i]. The last buffered word is never inside an emitted window (one is only
    # cut while more than `size` words wait), so its flag may still be set when the next
    # line turns out to be blank or a heading. Tagged, `tags[i]` is words[i]'s line's tag;
    # `words[fresh:]` are the words in no chunk yet (`start` may be before: the overlap).
    words: list[str] = []
    ends: list[bool] = []
    tags: list[object] = []
    tag: object = None
    section: object = None
    start = fresh = 0
    position = 0
    tail = max(1, int(size * BOUNDARY_TAIL))
    after_heading = False
    for line in lines:
        if tagged:
            line, tag = line
        if not line or line.isspace():
            # A blank line after a heading only closes the heading; a window should end
            # before a heading, not right after it.
            if ends and not after_heading:
                ends[-1] = True
            continue
        if section_of is not None and section_of(tag) != section:
            section = section_of(tag)
            if len(words) > fresh:  # the old section's last words end its last chunk
                yield Chunk(position, " ".join(words[start:]), tags[start])
                position += 1
            words.clear(), ends.clear(), tags.clear()
            start = fresh = 0
        block = _BLOCK_START.match(line) if line[0] in _BLOCK_FIRST else None
        if block and ends:
            ends[-1] = True
        after_heading = block is not None and block.group("heading") is not None
        for piece in (line,) if len(line) <= MAX_PIECE_CHARS else _pieces(line):
            tokens = piece.split()
            if not tokens:
                continue
            words.extend(tokens)
            # The common case inline: it saves a function call on most words.
            ends.extend([w[-1] in _SENTENCE_ENDS or _ends_sentence(w) for w in tokens])
            if tagged:
                tags.extend([tag] * len(tokens))
            while len(words) - start > size:
                end = _cut(ends, start, size, tail)
                yield Chunk(position, " ".join(words[start:end]), tags[start] if tagged else None)
                position += 1
                start, fresh = end - overlap, end
            if start:
                # Dropping emitted words keeps the buffer near one window; the cost is
                # paid once per line, so it stays linear overall.
                del words[:start]
                del ends[:start]
                del tags[:start]
                start, fresh = 0, fresh - start
    if len(words) > fresh:
        yield Chunk(position, " ".join(words[start:]), tags[start] if tagged else None)


def _cut(ends: list[bool], start: int, size: int, tail: int) -> int:
    """End (exclusive) of the window from `start`: after the latest boundary in its tail."""
    hi = start + size
    lo = hi - tail
    window_tail = ends[lo:hi]
    window_tail.reverse()
    try:
        return hi - window_tail.index(True)
    except ValueError:
        return hi


def _ends_sentence(word: str) -> bool:
    last = word[-1]
    if last in _SENTENCE_ENDS:
        return True
    return last in _CLOSERS and word.rstrip(_CLOSERS)[-1:] in _SENTENCE_ENDS


def _lines_of(text: str) -> Iterator[str]:
    # A lazy split: str.splitlines would hold a second copy of a 50 MB text at once.
    pos = 0
    length = len(text)
    while pos < length:
        newline = text.find("\n", pos)
        if newline < 0:
            yield text[pos:]
            return
        yield text[pos:newline]
        pos = newline + 1


def _pieces(line: str) -> Iterator[str]:
    """`line` cut at whitespace into pieces of about MAX_PIECE_CHARS, so a file with no line
    ends is never split into one list of millions of words."""
    pos = 0
    while pos < len(line):
        gap = _WHITESPACE.search(line, pos + MAX_PIECE_CHARS)
        if gap is None:
            yield line[pos:]
            return
        yield line[pos : gap.start()]
        pos = gap.end()
