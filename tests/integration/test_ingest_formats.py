"""PDF, HTML and Word through the real `roxi ingest` (issue 18, acceptance 3): good files
are stored with their pages and heading paths, and every bad input of the issue ends in
one line naming its file and the reason, within extract.timeout_seconds, leaving the store
without it, while the ingest process's own memory stays bounded (the extraction child
takes the blows). The files are made here by small generators (reportlab writes PDFs)."""

from __future__ import annotations

import io
import json
import random
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from pathlib import Path

import psutil
import pytest

from roxi_mp.store import Store

from ..conftest import PATIENCE, clean_env

pytestmark = pytest.mark.integration

#: the test's extract.timeout_seconds: small, yet ample for the good files on a loaded machine
TIMEOUT = 4.0
MIB = 1 << 20


# --- good files ---------------------------------------------------------------------------
def good_pdf(path: Path) -> None:
    from reportlab.pdfgen import canvas
    c = canvas.Canvas(str(path))
    c.setTitle("Gout management guideline")
    for page in (1, 2, 3):
        text = c.beginText(72, 720)
        text.setFont("Helvetica", 11)
        for line in range(8):
            text.textLine(f"Page{page} urate lowering sentence {line} keeps serum urate low.")
        c.drawText(text)
        c.showPage()
    c.save()


GOOD_HTML = """<!doctype html><html><head><title>Lupus care</title>
<script>var tracker = "scriptword";</script><style>p { color: red }</style></head>
<body><nav><a href="/">navword home</a></nav>
<h1>Lupus</h1><p>Hydroxychloroquine is advised for every patient with lupus.</p>
<h2>Monitoring</h2><p>Eye screening finds retinal toxicity early.</p>
<table><tr><td>Drug</td><td>Dose</td></tr><tr><td>HCQ</td><td>5 mg/kg</td></tr></table>
<footer>footerword</footer></body></html>"""


def good_docx(path: Path) -> None:
    import docx
    d = docx.Document()
    d.core_properties.title = "Vasculitis handbook"
    d.add_heading("Vasculitis", level=1)
    d.add_paragraph("Giant cell arteritis needs glucocorticoids at once.")
    d.add_heading("Dosing", level=2)
    table = d.add_table(rows=2, cols=2)
    for r, row in enumerate([("Drug", "Dose"), ("Prednisolone", "40 mg")]):
        for col, value in enumerate(row):
            table.cell(r, col).text = value
    d.save(str(path))


# --- bad files ----------------------------------------------------------------------------
def pdf_of(objects: list[bytes]) -> bytes:
    """A PDF of numbered objects (1 is the catalog) with a correct cross-reference table."""
    out, offsets = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"), []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def stream_bomb_pdf(unpacked_mb: int) -> bytes:
    """One page whose content stream inflates to `unpacked_mb` MB (about 1 MB in the file)."""
    co = zlib.compressobj(9)
    block = b" " * (16 * MIB)
    packed = b"".join(co.compress(block) for _ in range(unpacked_mb // 16)) + co.flush()
    return pdf_of([b"<< /Type /Catalog /Pages 2 0 R >>",
                   b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                   b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
                   b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream"])


def encrypted_pdf(path: Path) -> None:
    from reportlab.lib.pdfencrypt import StandardEncryption
    from reportlab.pdfgen import canvas
    c = canvas.Canvas(str(path), encrypt=StandardEncryption("user-secret", ownerPassword="owner-secret"))
    c.drawString(72, 720, "Confidential methotrexate dosing table.")
    c.save()


def image_only_pdf(path: Path) -> None:
    from reportlab.pdfgen import canvas
    c = canvas.Canvas(str(path))
    for page in range(2):
        for i in range(40):  # strokes and fills standing for a scanned page: no text at all
            c.rect(50 + i * 10, 100 + i * 12, 80, 30, fill=1)
        c.showPage()
    c.save()


def empty_pages_pdf(path: Path, pages: int) -> None:
    from reportlab.pdfgen import canvas
    c = canvas.Canvas(str(path))
    for _ in range(pages):
        c.showPage()
    c.save()


def zip_bomb_docx(unpacked_mb: int) -> bytes:
    """A Word-shaped archive whose document part inflates to `unpacked_mb` MB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with z.open("word/document.xml", "w", force_zip64=True) as fh:
            block = b" " * (16 * MIB)
            for _ in range(unpacked_mb // 16):
                fh.write(block)
    return out.getvalue()


def write_batch(root: Path) -> dict[str, Path]:
    good, bad = root / "good", root / "bad"
    good.mkdir(parents=True)
    bad.mkdir()
    files = {name: (good if name.startswith("good") else bad) / name for name in (
        "good.pdf", "good.html", "good.docx", "good-notes.md", "encrypted.pdf", "scanned.pdf", "corrupt.pdf",
        "truncated.pdf", "empty-10000-pages.pdf", "stream-bomb.pdf", "bomb.docx", "nested.html", "lying.pdf",
        "binary.txt")}
    good_pdf(files["good.pdf"])
    files["good.html"].write_text(GOOD_HTML)
    good_docx(files["good.docx"])
    files["good-notes.md"].write_text("# Gout\n\nColchicine within 12 hours of a flare.\n")
    encrypted_pdf(files["encrypted.pdf"])
    image_only_pdf(files["scanned.pdf"])
    files["corrupt.pdf"].write_bytes(b"%PDF-1.7\n" + random.Random(18).randbytes(20000))
    files["truncated.pdf"].write_bytes(files["good.pdf"].read_bytes()[:700])
    empty_pages_pdf(files["empty-10000-pages.pdf"], 10_000)
    files["stream-bomb.pdf"].write_bytes(stream_bomb_pdf(1024))
    files["bomb.docx"].write_bytes(zip_bomb_docx(512))
    files["nested.html"].write_bytes(b"<!doctype html><html><body>" + b"<div>" * (10 * MIB) + b"deep")
    files["lying.pdf"].write_text(GOOD_HTML)
    files["binary.txt"].write_bytes(b"\x89PNG\r\n\x1a\n" + random.Random(1).randbytes(4096))
    return files


# --- running the CLI and watching its memory ------------------------------------------------
def peak_rss_of(proc: subprocess.Popen, peaks: dict) -> None:
    """Follow the CLI's own high-water mark (VmHWM), and its children's, until it exits."""
    me = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            peaks["ingest"] = max(peaks.get("ingest", 0), _hwm(proc.pid))
            for child in me.children():
                peaks["worker"] = max(peaks.get("worker", 0), _hwm(child.pid))
        except (OSError, psutil.Error):
            pass
        time.sleep(0.01)


def _hwm(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def ingest(cfg, *paths: Path) -> tuple[dict, float, dict]:
    """(report, seconds, peak RSS by process) of one `roxi ingest --json`."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "roxi_mp.cli", *cfg.to_argv(), "ingest", "--json",
                             *map(str, paths)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())
    peaks: dict = {}
    watcher = threading.Thread(target=peak_rss_of, args=(proc, peaks), daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=PATIENCE * 4)
    finally:
        if proc.poll() is None:
            proc.kill()
    watcher.join(timeout=10)
    assert proc.returncode in (0, 5), err  # 5: some files were skipped
    return json.loads(out), time.monotonic() - started, peaks


def test_good_files_are_ingested_and_every_bad_one_is_one_line(make_config, tmp_path: Path) -> None:
    cfg = make_config(extract__timeout_seconds=TIMEOUT, extract__memory_mb=512,
                      extract__max_unzipped_bytes=64 * MIB, store__chunk_words=40, store__chunk_overlap=5)
    files = write_batch(tmp_path / "docs")
    baseline, _, base_peaks = ingest(cfg, files["good-notes.md"])  # the CLI with one text file
    assert baseline["added"] == 1
    report, took, peaks = ingest(cfg, tmp_path / "docs")

    errors = {Path(e["path"]).name: e["reason"] for e in report["errors"]}
    bad = {name for name in files if not name.startswith("good")}
    assert set(errors) == bad, report
    for name, reason in errors.items():
        assert reason and "\n" not in reason and len(reason) < 300, (name, reason)
    assert errors["encrypted.pdf"] == "encrypted; not supported"
    assert errors["scanned.pdf"] == "no extractable text: scanned? OCR is not supported"
    assert errors["corrupt.pdf"].startswith("not a readable PDF")
    assert errors["lying.pdf"] == "named .pdf but the content is HTML"
    assert errors["binary.txt"] == "binary content (PNG image), not text"
    # (the others may be refused by a parser's own check or by the child's limits: any one line)

    # the good ones are in, with their titles, types and places; the bad ones are not
    assert (report["added"], report["unchanged"]) == (3, 1)
    with Store(cfg.db_path) as store:
        docs = {Path(k).name: (title, ctype) for k, title, ctype in
                store.conn.execute("SELECT key, title, content_type FROM documents WHERE status != 'dead'")}
        chunks = store.conn.execute("SELECT c.text, c.page, c.heading, d.key FROM chunks c "
                                    "JOIN documents d ON d.id = c.doc_id").fetchall()
    assert set(docs) == {"good.pdf", "good.html", "good.docx", "good-notes.md"}
    assert docs["good.pdf"] == ("Gout management guideline", "application/pdf")
    assert docs["good.html"][1] == "text/html" and docs["good.docx"][0] == "Vasculitis handbook"
    text = " ".join(c[0] for c in chunks)
    assert not {"scriptword", "navword", "footerword"} & set(text.split())
    pdf_pages = {page for _, page, _, key in chunks if key.endswith("good.pdf")}
    assert pdf_pages == {1, 2, 3}
    assert any(heading == "Lupus" for _, _, heading, key in chunks if key.endswith(".html"))
    assert any(heading and "Vasculitis" in heading for _, _, heading, key in chunks if key.endswith(".docx"))

    # every file within the time limit: 11 documents went to the child, none could take longer
    extracted = sum(1 for name in files if name.endswith((".pdf", ".html", ".docx")) and name != "lying.pdf")
    assert took < extracted * TIMEOUT + 10, f"the batch took {took:.1f} s"
    # The ingest held one file and one document's text at a time (the largest file here is
    # the 50 MB HTML page), however much its worker took (measured: +58 MB over a text-only
    # ingest, while the worker peaked at 540 MB on the stream bomb).
    grown = peaks["ingest"] - base_peaks["ingest"]
    assert grown < 160 * MIB, f"the ingest grew {grown / MIB:.0f} MB over a text-only ingest ({peaks})"

    # Again: the good files are unchanged (no extraction), the bad ones refused as before.
    again, _, _ = ingest(cfg, tmp_path / "docs")
    assert (again["added"], again["replaced"], again["unchanged"]) == (0, 0, 4)
    assert {Path(e["path"]).name: e["reason"] for e in again["errors"]} == errors


def test_the_cli_names_each_refused_file_on_one_line(make_config, tmp_path: Path) -> None:
    """Files whose bytes contradict their names are refused before any parser (no worker
    needed), each with one `skipped PATH: REASON` line, exit 5, and the rest ingested."""
    cfg = make_config()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lying.pdf").write_text(GOOD_HTML)
    (docs / "lying.docx").write_bytes(b"%PDF-1.7\n" + bytes(100))
    (docs / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    (docs / "nul.md").write_bytes(b"# Notes\n\x00\x00\x00")
    (docs / "page-source.txt").write_text(GOOD_HTML)  # HTML source named .txt is text
    (docs / "notes.md").write_text("# Gout\n\nColchicine within 12 hours of a flare.\n")
    result = subprocess.run([sys.executable, "-m", "roxi_mp.cli", *cfg.to_argv(), "ingest", str(docs)],
                            capture_output=True, text=True, timeout=PATIENCE, env=clean_env())
    assert result.returncode == 5, result.stderr
    assert sorted(result.stderr.splitlines()) == sorted([
        f"skipped {docs / 'binary.txt'}: binary content (PNG image), not text",
        f"skipped {docs / 'lying.docx'}: named .docx but the content is PDF",
        f"skipped {docs / 'lying.pdf'}: named .pdf but the content is HTML",
        f"skipped {docs / 'nul.md'}: binary content (NUL bytes), not text",
    ])
    assert result.stdout.startswith("added 2 documents")
    with Store(cfg.db_path) as store:
        keys = sorted(Path(k).name for (k,) in store.conn.execute("SELECT key FROM documents"))
    assert keys == ["notes.md", "page-source.txt"]
