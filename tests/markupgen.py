"""HTML pages and Word documents the tests make themselves, with the text they must give.

`html_page` and `docx_document` return (bytes, known text in reading order): the text an
extractor must find, one block per paragraph, heading, list item or table ("cell | cell"
rows), blank-line separated like `Extracted.text()`. The HTML page also holds navigation,
a header, a footer, scripts, a style, an aside and hidden elements, each with a MARKERS
word that must never be indexed. `zip_bomb_docx` and `nested_html` are hostile inputs.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from html import escape

WORDS = ("synovial joint inflammation cartilage erosion tendon ligament bone marrow antibody "
         "cytokine interleukin tumour necrosis factor fatigue stiffness morning swelling pain "
         "kidney lung skin rash fever ulcer nerve muscle weakness vessel artery vein clot "
         "dose tablet injection infusion monitoring blood count liver enzyme vaccine infection "
         "pregnancy child elderly exercise physiotherapy diet weight smoking alcohol sleep "
         "methotrexate folic acid µg/kg ≥ 15 mg weekly naïve").split()

#: words hidden in parts of the page that must never be indexed
MARKERS = ("zzscriptmark", "zzstylemark", "zznavmark", "zzheadermark", "zzfootermark",
           "zzasidemark", "zzhiddenmark", "zzariamark", "zzcommentmark", "zzformmark",
           "zznoscriptmark", "zzrolemark", "zzdisplaymark", "zztemplatemark")

TITLE = "Methotrexate in rheumatoid arthritis"
#: (probe sentence, heading path it sits under) in the HTML page
HTML_PROBE = ("Folic acid is taken once weekly on a day other than the methotrexate dose.",
              f"{TITLE} > Dosing > Folic acid")
#: the same in the Word document (its Title style tops every path)
DOCX_PROBE = ("Blood counts and liver enzymes are checked every four weeks at first.",
              "Methotrexate guideline > Monitoring > Laboratory tests")
DOCX_TITLE = "Methotrexate guideline"

TABLE = [("Test", "Interval", "Action"),
         ("Full blood count", "every 4 weeks", "stop if neutrophils < 1.5"),
         ("ALT/AST", "every 4 weeks", "halve the dose if > 3× normal"),
         ("Creatinine", "every 3 months", "review the dose")]


def sentences(rng: random.Random, count: int) -> str:
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize()
                    + "." for _ in range(count))


def html_page(*, paragraphs: int = 4, seed: int = 18) -> tuple[bytes, str]:
    """A UTF-8 page: boilerplate around a <main> with h1-h3, paragraphs with inline
    markup and line breaks, a list and a table."""
    rng = random.Random(seed)
    known: list[str] = []
    body: list[str] = []

    def block(tag: str, text: str, html: str | None = None) -> None:
        known.append(text)
        body.append(f"<{tag}>{html if html is not None else escape(text)}</{tag}>")

    block("h1", TITLE)
    for _ in range(paragraphs):
        block("p", sentences(rng, 3))
    block("p", "Inline markup keeps words whole: a bold word and a link, then a line break.",
          "Inline <b>mark</b>up keeps <i>words</i> whole: a <strong>bold</strong> word "
          "and a <a href='#x'>link</a>, then a line<br>break.")
    block("h2", "Dosing")
    for _ in range(paragraphs):
        block("p", sentences(rng, 2))
    block("h3", "Folic acid")
    block("p", HTML_PROBE[0])
    items = [sentences(rng, 1) for _ in range(4)]
    known.extend(items)
    body.append("<ul>" + "".join(f"<li>{escape(item)}</li>" for item in items) + "</ul>")
    body.append("<aside>zzasidemark related articles</aside>")
    body.append('<div hidden>zzhiddenmark</div><p>Visible <span aria-hidden="true">'
                'zzariamark</span>text<!-- zzcommentmark --> stays.</p>')
    known.append("Visible text stays.")
    block("h2", "Monitoring")
    text = sentences(rng, 2)
    known.append("Direct text of a div. " + text)
    body.append(f"<div>Direct text of a div.<p>{escape(text)}</p></div>")
    known.append("\n".join(" | ".join(row) for row in TABLE))
    head, *rows = TABLE
    body.append("<table><thead><tr>" + "".join(f"<th>{escape(c)}</th>" for c in head)
                + "</tr></thead><tbody>"
                + "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>"
                          for row in rows) + "</tbody></table>")
    for _ in range(paragraphs):
        block("p", sentences(rng, 3))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(TITLE)}</title>
<style>.zzstylemark {{ color: red }}</style>
<script>var zzscriptmark = "<p>zzscriptmark</p>";</script></head>
<body>
<header><a href="/">zzheadermark Clinic home</a></header>
<nav><ul><li><a href="/a">zznavmark Home</a></li><li><a href="/b">Guidelines</a></li></ul></nav>
<div role="navigation">zzrolemark breadcrumbs</div>
<noscript>zznoscriptmark enable scripts</noscript>
<template><p>zztemplatemark</p></template>
<main>
{chr(10).join(body)}
<div style="display: none">zzdisplaymark</div>
<form><label>zzformmark Search</label><input name="q"></form>
</main>
<footer>zzfootermark Copyright 2024</footer>
<script>document.write("zzscriptmark")</script>
</body></html>
"""
    return page.encode("utf-8"), "\n\n".join(known)


def docx_document(*, paragraphs: int = 4, seed: int = 18,
                  core_title: str | None = None) -> tuple[bytes, str]:
    """A .docx made with python-docx: Title, Heading 1/2, paragraphs of several runs, and
    a table whose last row holds a nested table (read as that cell's text)."""
    import docx  # here: only the tests that make documents pay for the import

    rng = random.Random(seed)
    document = docx.Document()
    document.core_properties.title = core_title or ""
    known: list[str] = []

    def add(text: str, style: str | None = None) -> None:
        known.append(text)
        document.add_paragraph(text, style=style)

    add(DOCX_TITLE, "Title")
    add("Background", "Heading 1")
    for _ in range(paragraphs):
        add(sentences(rng, 3))
    runs = document.add_paragraph("Several ")
    runs.add_run("runs").bold = True
    runs.add_run(" make one paragraph, and a\ttab is a space.")
    known.append("Several runs make one paragraph, and a tab is a space.")
    add("Monitoring", "Heading 1")
    add("Laboratory tests", "Heading 2")
    add(DOCX_PROBE[0])
    table = document.add_table(rows=len(TABLE) + 1, cols=3)
    for row, cells in zip(table.rows, TABLE):
        for cell, text in zip(row.cells, cells):
            cell.text = text
    last = table.rows[len(TABLE)].cells
    last[0].text = "Nested"
    inner = last[1].add_table(rows=1, cols=2)
    inner.cell(0, 0).text, inner.cell(0, 1).text = "inner one", "inner two"
    known.append("\n".join(" | ".join(row) for row in TABLE) + "\nNested | inner one inner two | ")
    add("After the table", "Heading 2")
    for _ in range(paragraphs):
        add(sentences(rng, 2))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue(), "\n\n".join(known)


def zip_bomb_docx(*, inflated: int = 1 << 30) -> bytes:
    """A .docx-shaped ZIP whose word/document.xml inflates to `inflated` zero bytes (1 GiB:
    about 1 MB on disk). Made fast: zeros deflated once per MiB with a full flush give
    the same bytes every MiB, so the stream is one block repeated."""
    step = 1 << 20
    assert inflated % step == 0
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = deflater.compress(bytes(step)) + deflater.flush(zlib.Z_FULL_FLUSH)
    stream = block * (inflated // step) + deflater.flush()
    crc = 0
    zeros = bytes(step)
    for _ in range(inflated // step):
        crc = zlib.crc32(zeros, crc)
    types = b'<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/' \
            b'package/2006/content-types"/>'
    return _zip([("[Content_Types].xml", 0, types, zlib.crc32(types), len(types)),
                 ("word/document.xml", 8, stream, crc, inflated)])


def _zip(entries: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A ZIP of (name, method, stored bytes, crc, inflated size) entries, written by hand
    so a bomb's data need not be inflated to be written."""
    out = io.BytesIO()
    central = []
    for name, method, data, crc, size in entries:
        offset = out.tell()
        raw = name.encode()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21,
                              crc, len(data), size, len(raw), 0) + raw + data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0,
                                   0x21, crc, len(data), size, len(raw), 0, 0, 0, 0, 0,
                                   offset) + raw)
    start = out.tell()
    directory = b"".join(central)
    out.write(directory)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries),
                          len(directory), start, 0))
    return out.getvalue()


def many_entries_zip(entries: int = 10_001) -> bytes:
    """A ZIP of `entries` empty files (and a word/document.xml)."""
    return _zip([("word/document.xml", 0, b"", 0, 0)]
                + [(f"e{i}", 0, b"", 0, 0) for i in range(entries - 1)])


def nested_html(size: int = 50 * 1024 * 1024) -> bytes:
    """`size` bytes of <div> opened and never closed."""
    return b"<div>" * (size // 5)
