"""PDF, HTML and Word over the documents endpoint in the real system (issue 18): supervisor,
roles, the extraction child, the hashing backend.

Each format put over the endpoint (a PDF and a DOCX with no content_type: sniffed) is
answered once extracted, titled from its own metadata, and becomes searchable with its
place: a query quoting a sentence of page 3 hits page 3; HTML and DOCX hits carry their
heading path; a page's script and navigation are never indexed. Hostile documents (a zip
bomb, 50 MB of nested tags, a PDF that takes longer than extract.timeout_seconds) each
get a one-line bad_request while the endpoint goes on answering (a ping during the
extraction), the role is never restarted, the store holds none of them, and a normal put
right after is stored and found.
"""

from __future__ import annotations

import io
import threading
import time

import pytest

from roxi_mp.client import DocumentsClient
from roxi_mp.errors import ServerError
from roxi_mp.extract import DOCX, HTML, PDF

from ..conftest import PATIENCE
from .test_documents_endpoint import wait_indexed
from .test_ingest_formats import zip_bomb_docx

pytestmark = pytest.mark.integration

MIB = 1 << 20
#: small chunks, so that each page of the PDF starts chunks of its own
CHUNKS = {"store__chunk_words": 40, "store__chunk_overlap": 5}
PAGE3 = "Febuxostat is the alternative when allopurinol is not tolerated or fails to reach the target."


def guideline_pdf() -> bytes:
    """Three pages of distinct sentences, PAGE3 in the middle of page 3, a metadata title."""
    from reportlab.pdfgen import canvas
    out = io.BytesIO()
    c = canvas.Canvas(out)
    c.setTitle("Gout management guideline")
    for page in (1, 2, 3):
        text = c.beginText(72, 720)
        text.setFont("Helvetica", 11)
        for line in range(12):
            text.textLine(PAGE3 if (page, line) == (3, 6) else
                          f"Section{page} point{line} keeps serum urate below the chosen threshold{page}x{line}.")
        c.drawText(text)
        c.showPage()
    c.save()
    return out.getvalue()


PAGE_HTML = b"""<!doctype html><html><head><title>Lupus care</title>
<script>var tracker = "scriptword";</script><style>p { color: red }</style></head>
<body><nav><a href="/">navword home</a></nav>
<h1>Lupus</h1><p>Hydroxychloroquine is advised for every patient with lupus.</p>
<h2>Monitoring</h2><p>""" + b" ".join(b"Visit%d checks blood counts and kidneys." % i for i in range(12)) + b"""
Eye screening finds retinal toxicity early in long treatment.</p>
<footer>footerword</footer></body></html>"""


def handbook_docx() -> bytes:
    import docx
    d = docx.Document()
    d.core_properties.title = "Vasculitis handbook"
    d.add_heading("Vasculitis", level=1)
    d.add_paragraph("Giant cell arteritis needs glucocorticoids at once.")
    d.add_heading("Dosing", level=2)
    d.add_paragraph(" ".join(f"Step{i} lowers the daily dose." for i in range(12))
                    + " Prednisolone starts at forty milligrams and tapers over a year.")
    table = d.add_table(rows=2, cols=2)
    for r, row in enumerate([("Drug", "Dose"), ("Tocilizumab", "162 mg weekly")]):
        for col, value in enumerate(row):
            table.cell(r, col).text = value
    out = io.BytesIO()
    d.save(out)
    return out.getvalue()


def long_pdf(pages: int) -> bytes:
    """Pages full of words: longer to read than the test's extract.timeout_seconds."""
    from reportlab.pdfgen import canvas
    out = io.BytesIO()
    c = canvas.Canvas(out)
    for page in range(pages):
        text = c.beginText(40, 760)
        text.setFont("Helvetica", 7)
        for line in range(90):
            text.textLine(" ".join(f"w{page}x{line}y{i}" for i in range(14)))
        c.drawText(text)
        c.showPage()
    c.save()
    return out.getvalue()


def hits(s, text: str, k: int = 10) -> list[dict]:
    with s.query_client(timeout=30) as q:
        return q.query(text, k=k)


def refused(client: DocumentsClient, key: str, content: bytes, **fields) -> str:
    with pytest.raises(ServerError) as caught:
        client.put(key, content, timeout=PATIENCE, **fields)
    assert caught.value.code == "bad_request", caught.value
    message = str(caught.value)
    assert message and "\n" not in message and len(message) < 300
    return message


def test_pdf_html_and_docx_puts_are_found_with_their_pages_and_headings(system):
    s = system(**CHUNKS)
    with DocumentsClient.for_config(s.cfg, timeout=30) as client:
        pdf = client.put("guides/gout", guideline_pdf(), metadata={"source": "test"})  # sniffed
        page = client.put("web/lupus", PAGE_HTML, content_type="text/html; charset=utf-8")
        word = client.put("handbooks/vasculitis", handbook_docx())  # sniffed
        for reply in (pdf, page, word):
            assert reply["outcome"] == "added" and reply["chunks"] >= 1, reply
        assert pdf["chunks"] >= 3
        for key, title, ctype in (("guides/gout", "Gout management guideline", PDF),
                                  ("web/lupus", "Lupus care", HTML),
                                  ("handbooks/vasculitis", "Vasculitis handbook", DOCX)):
            live = wait_indexed(s, client, key, 1)["live"]
            assert (live["title"], live["content_type"], live["source"]) == (title, ctype, "put")
        # The same bytes again: nothing new (the hash, title and type are the stored ones).
        assert client.put("web/lupus", PAGE_HTML, content_type="text/html")["outcome"] == "unchanged"

    found = [h for h in hits(s, PAGE3) if "Febuxostat" in h["text"]]
    assert found and found[0]["key"] == "guides/gout" and found[0]["page"] == 3, found
    assert found[0]["heading"] is None

    # (a chunk's place is its first word's: the one that starts inside the section has it)
    monitoring = [h for h in hits(s, "Eye screening finds retinal toxicity early") if "retinal" in h["text"]]
    assert {(h["key"], h["heading"], h["page"]) for h in monitoring} >= {("web/lupus", "Lupus > Monitoring", None)}
    dosing = [h for h in hits(s, "Prednisolone starts at forty milligrams") if "Prednisolone" in h["text"]]
    assert {(h["key"], h["heading"]) for h in dosing} >= {("handbooks/vasculitis", "Vasculitis > Dosing")}
    assert any("Tocilizumab | 162 mg weekly" in h["text"] for h in hits(s, "Tocilizumab 162 mg weekly"))
    every = " ".join(h["text"] for h in hits(s, "scriptword navword footerword tracker home", k=50))
    assert not {"scriptword", "navword", "footerword"} & set(every.replace('"', " ").split())


def test_hostile_documents_get_one_line_errors_and_the_endpoint_keeps_running(system):
    s = system(extract__timeout_seconds=3.0, extract__memory_mb=512, extract__max_unzipped_bytes=64 * MIB,
               documents__max_document_bytes=64 * MIB, **CHUNKS)
    slow = long_pdf(800)  # about 10 s of reading (80 pages/s measured): past the limit
    pid = s.pid("documents")
    with DocumentsClient.for_config(s.cfg, timeout=30) as client:
        assert "zip bomb" in refused(client, "bad/bomb.docx", zip_bomb_docx(512))
        nested = b"<!doctype html><html><body>" + b"<div>" * (10 * MIB) + b"deep"  # 50 MB of tags
        assert refused(client, "bad/nested.html", nested, content_type="text/html")
        assert refused(client, "bad/lying", PAGE_HTML, content_type="application/pdf") == (
            "sent as application/pdf but the content is HTML")

        # A document the child reads for longer than its time limit: the endpoint answers
        # others meanwhile (its loop never waits for the child), then the put its error.
        outcome: dict = {}

        def put_slow() -> None:
            with DocumentsClient.for_config(s.cfg, timeout=PATIENCE) as other:
                try:
                    other.put("bad/slow.pdf", slow)
                except ServerError as exc:
                    outcome["error"], outcome["at"] = exc, time.monotonic()

        thread = threading.Thread(target=put_slow)
        thread.start()
        s.wait_for(lambda: client.stats()["extracting"] == 1, timeout=PATIENCE, what="the slow PDF in extraction")
        assert client.ping() and client.stats()["state"] == "running"
        pinged = time.monotonic()
        thread.join(timeout=PATIENCE)
        assert not thread.is_alive()
        error = outcome["error"]
        assert (error.code, str(error)) == ("bad_request", "took over 3 s (extract.timeout_seconds)")
        assert pinged < outcome["at"], "the ping waited behind the extraction"

        # Still the same process, never restarted; nothing of the hostile ones stored.
        row = s.role("documents")
        assert (row["pid"], row["restarts"], row["state"]) == (pid, 0, "running")
        assert client.list()["documents"] == []
        good = client.put("web/lupus", PAGE_HTML)  # sniffed as HTML, read by a fresh worker
        assert good["outcome"] == "added"
        wait_indexed(s, client, "web/lupus", 1)
        s.wait_for(lambda: s.role("documents")["extract_failures"] == 3, timeout=PATIENCE,
                   what="a heartbeat with the failures counted")
    assert any("Hydroxychloroquine" in h["text"] for h in hits(s, "Hydroxychloroquine is advised for every patient"))
    assert s.role("documents")["restarts"] == 0
