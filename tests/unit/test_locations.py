"""Where a chunk came from (issue 18): tagged chunking, Markdown heading paths, sections
to chunk rows, the page and heading columns (migration 4) and the hit fields."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from roxi_mp import migrations
from roxi_mp.chunking import iter_chunks_from_lines, iter_tagged_chunks
from roxi_mp.cli_format import where
from roxi_mp.documents import chunk_rows, chunk_sections
from roxi_mp.extract import Section
from roxi_mp.extract.text import located_lines
from roxi_mp.store import Store


def words(n: int, stem: str) -> str:
    return " ".join(f"{stem}{i}" for i in range(n))


def test_tagged_chunks_are_the_same_windows_and_carry_their_first_words_tag() -> None:
    lines = [words(30, "a") + ".", "", words(25, "b"), words(40, "c") + "."]
    plain = [c.text for c in iter_chunks_from_lines(lines, size=20, overlap=5)]
    tagged = list(iter_tagged_chunks([(line, i) for i, line in enumerate(lines)], size=20, overlap=5))
    assert [c.text for c in tagged] == plain
    for chunk in tagged:
        first = chunk.text.split()[0]
        assert first in lines[chunk.tag].split()


def test_markdown_heading_paths_follow_levels_and_skip_code_fences() -> None:
    md = ["# Gout", "intro", "## Acute flares", "colchicine", "```", "# not a heading", "```",
          "still flares", "### Dosing ###", "low dose", "## Prophylaxis", "allopurinol", "# Lupus", "text"]
    got = {line: heading for line, (_, heading) in located_lines(md, markdown=True)}
    assert got["intro"] == "Gout"
    assert got["colchicine"] == "Gout > Acute flares"
    assert got["# not a heading"] == "Gout > Acute flares"
    assert got["still flares"] == "Gout > Acute flares"
    assert got["low dose"] == "Gout > Acute flares > Dosing"
    assert got["allopurinol"] == "Gout > Prophylaxis"
    assert got["text"] == "Lupus"
    assert all(h is None for _, (_, h) in located_lines(md, markdown=False))


def test_markdown_chunks_carry_the_heading_path_of_their_first_word() -> None:
    text = "# Gout\n\n" + words(30, "g") + "\n\n## Dosing\n\n" + words(30, "d") + "\n"
    rows = chunk_rows(text, words=20, overlap=0, markdown=True)
    assert all(len(r) == 5 and r[3] is None for r in rows)
    assert rows[0][1].startswith("# Gout g0") and rows[0][4] == "Gout"
    for _, text, _, _, heading in rows[1:]:
        first = text.split()[0]
        assert heading == ("Gout" if first.startswith("g") else "Gout > Dosing"), (first, heading)
    assert any(r[4] == "Gout > Dosing" for r in rows)
    assert all(r[4] is None for r in chunk_rows(text, words=20, overlap=0))  # plain text: no headings


def test_sections_become_rows_with_the_page_of_their_first_word() -> None:
    sections = [Section(words(15, "p1w") + ".", page=1), Section(words(15, "p2w") + ".", page=2),
                Section("Results", page=3, heading="Results", kind="heading"),
                Section(words(15, "p3w") + ".", page=3, heading="Results")]
    rows = chunk_sections(sections, words=12, overlap=0)
    for position, text, _, page, heading in rows:
        first = text.split()[0]
        assert page == (3 if first in ("Results",) or first.startswith("p3") else int(first[1])), (first, page)
    assert [r[0] for r in rows] == list(range(len(rows)))
    # a window never ends between a heading and its text
    assert not any(r[1].endswith("Results") for r in rows)


def test_a_heading_starts_a_chunk_and_the_sections_tail_ends_one_without_overlap() -> None:
    text = "# A\n\n" + words(50, "a") + "\n\n## B\n\n" + words(5, "b") + "\n\n# C\n\n" + words(30, "c") + "\n"
    rows = chunk_rows(text, words=20, overlap=5, markdown=True)
    for _, chunk, _, _, heading in rows:
        stems = {w[0] for w in chunk.split() if w[0] in "abc" and w[1:].isdigit()}
        assert len(stems) == 1, chunk  # no chunk mixes two sections
        assert heading == {"a": "A", "b": "A > B", "c": "C"}[stems.pop()]
    every = " ".join(r[1] for r in rows).split()
    assert all(w in every for w in text.split())  # and every word is in some chunk
    plain = chunk_rows(text, words=20, overlap=5)  # plain text: one stream, no sections
    assert any("a49" in r[1] and "b0" in r[1] for r in plain)


def test_page_and_heading_are_stored_and_returned_in_hits(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite3") as s:
        rows = chunk_sections([Section("alpha beta gamma.", page=7), Section("delta.", page=8, heading="H > I")],
                              words=8, overlap=0)
        s.put_document(key="k", content_hash="h", source="put", title="T", size=1, chunks=rows)
        s.put_document(key="old", content_hash="h2", source="put", title="T", size=1, chunks=[(0, "x", "hx")])
        ids = [cid for cid, _ in s.claim("w", 10, now=0.0, lease_seconds=60)]
        s.commit_rows([(cid, row) for row, cid in enumerate(sorted(ids))], rows=len(ids))
        hits = s.hits([0, 1, 2])
        assert (hits[0].page, hits[0].heading) == (7, None)
        assert (hits[1].page, hits[1].heading) == (8, "H > I")  # a heading starts a chunk
        assert (hits[2].page, hits[2].heading) == (None, None)  # a 3-tuple chunk: place unknown


def test_migration_4_adds_the_columns_to_an_old_store(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA foreign_keys=OFF")
    for _, sql in migrations.MIGRATIONS[:3]:
        conn.executescript(sql)
    conn.execute("INSERT INTO meta VALUES ('schema_version', '3')")
    conn.commit()
    conn.close()
    with Store(path) as s:
        assert int(s.get_meta("schema_version")) == migrations.LATEST >= 4
        cols = {r[1] for r in s.conn.execute("PRAGMA table_info(chunks)")}
        assert {"page", "heading"} <= cols


def test_roxi_query_cites_the_page_else_the_heading_else_the_chunk_number() -> None:
    assert where({"page": 12, "heading": "A", "position": 3}) == " p. 12"
    assert where({"page": None, "heading": "Methods > Dosing", "position": 3}) == " § Methods > Dosing"
    assert where({"page": None, "heading": None, "position": 3}) == " #3"
    assert where({"position": 4}) == " #4"  # a reply from an older server
