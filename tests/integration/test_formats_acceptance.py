"""Issue 18's acceptance 1 and 2 end to end: a two-column PDF, a Word document and an HTML
page go in with `roxi ingest` into a real running system, and the answers cite where they
came from.

The files are made by the tests' generators (tests/pdfgen.py, tests/markupgen.py), which
know the text a reader reads, the sentences that lie on each PDF page, and the heading a
probe sentence sits under. The hashing backend (the tests' default) ranks by shared words
and word pairs, so a query quoting a sentence finds the chunk holding it. Chunks are small
here (60 words), so a sentence from the middle of page 3 lies in a chunk that starts on
page 3. The stored text is read back from SQLite, the overlaps between neighbouring chunks
stitched away, and compared with the known text: in reading order (difflib ratio over
words >= 0.98), without the running header (once at most), without anything from the
HTML page's scripts, navigation or other boilerplate.

Then deep sleep: once the system sleeps, no extraction worker is left, neither the one the
ingest started nor one under the supervisor or its roles.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from roxi_mp.store import Store

from .. import markupgen, pdfgen
from ..conftest import PATIENCE, clean_env
from .test_pipeline import roxi

pytestmark = pytest.mark.integration

#: what the systems here run with: small chunks, so that a sentence's chunk starts near it
CONFIG = {"store__chunk_words": 60, "store__chunk_overlap": 10, "hashing__dim": 1024}
#: the worker's command line (python -m roxi_mp.extract.worker)
WORKER = "roxi_mp.extract.worker"


def ingest_watching_workers(cfg, *paths: Path) -> tuple[dict, set[int]]:
    """`roxi ingest --json PATHS`: its report, and the pids of the extraction workers it
    started (its children, watched while it runs)."""
    proc = subprocess.Popen([sys.executable, "-m", "roxi_mp.cli", *cfg.to_argv(), "ingest", "--json",
                             *map(str, paths)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env())
    workers: set[int] = set()

    def watch() -> None:
        me = psutil.Process(proc.pid)
        while proc.poll() is None:
            try:
                workers.update(c.pid for c in me.children(recursive=True) if WORKER in " ".join(c.cmdline()))
            except psutil.Error:
                pass
            time.sleep(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=PATIENCE * 2)
    finally:
        if proc.poll() is None:
            proc.kill()
    watcher.join(timeout=10)
    assert proc.returncode == 0, err
    return json.loads(out), workers


def stored_chunks(cfg) -> dict[str, list[tuple[str, int | None, str | None]]]:
    """(text, page, heading) of each live document's chunks in order, by file name."""
    with Store(cfg.db_path) as store:
        rows = store.conn.execute("SELECT d.key, c.text, c.page, c.heading FROM chunks c JOIN documents d "
                                  "ON d.id = c.doc_id WHERE d.status != 'dead' ORDER BY d.key, c.position")
        out: dict[str, list] = {}
        for key, text, page, heading in rows:
            out.setdefault(Path(key).name, []).append((text, page, heading))
    return out


def stitched(chunks: list[tuple[str, int | None, str | None]]) -> list[str]:
    """The document's words once: each chunk without the words it repeats from the one
    before (the overlap is the longest suffix of one that starts the next)."""
    words: list[str] = []
    for text, _, _ in chunks:
        new = text.split()
        k = min(len(words), len(new))
        while k and words[-k:] != new[:k]:
            k -= 1
        words += new[k:]
    return words


def similarity(known: str, got: list[str]) -> float:
    return difflib.SequenceMatcher(None, known.split(), got, autojunk=False).ratio()


def query(cfg, text: str, *extra: str) -> subprocess.CompletedProcess:
    result = roxi(cfg, "query", text, "-k", "5", *extra)
    assert result.returncode == 0, result.stderr
    return result


def top_hit(cfg, text: str) -> dict:
    return json.loads(query(cfg, text, "--json").stdout)["hits"][0]


def occurrences(words: list[str], phrase: str) -> int:
    n, target = len(phrase.split()), phrase.split()
    return sum(words[i:i + n] == target for i in range(len(words) - n + 1))


def test_pdf_docx_and_html_answer_with_their_page_or_heading(system, make_config, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = pdfgen.two_column_pdf(pages=5)
    (docs / "guideline.pdf").write_bytes(pdf.data)
    html, html_text = markupgen.html_page()
    (docs / "methotrexate.html").write_bytes(html)
    word, docx_text = markupgen.docx_document()
    (docs / "monitoring.docx").write_bytes(word)
    cfg = make_config(**CONFIG)
    s = system(cfg)
    report, workers = ingest_watching_workers(cfg, docs)
    assert (report["added"], report["errors"]) == (3, []), report
    assert workers, "the PDF, HTML and DOCX were read by an extraction worker"
    s.wait_indexed(s.stats().chunks, timeout=2 * PATIENCE)
    chunks = stored_chunks(cfg)

    # Acceptance 1: the PDF in reading order, no running header, a page-3 sentence -> p. 3
    pdf_words = stitched(chunks["guideline.pdf"])
    assert similarity(pdf.text, pdf_words) >= 0.98
    for running in (pdfgen.HEADER_LEFT, pdfgen.HEADER_RIGHT):
        assert occurrences(pdf_words, running) <= 1, running
    assert not any(f"Page {n} of 5" in text for text, _, _ in chunks["guideline.pdf"] for n in range(1, 6))
    on_page_3 = pdf.page_sentences[3]
    middle = on_page_3[len(on_page_3) // 2 - 1: len(on_page_3) // 2 + 2]  # three, from mid-page
    for sentence in middle:
        hit = top_hit(cfg, sentence)
        assert Path(hit["source"]).name == "guideline.pdf" and hit["page"] == 3, (sentence, hit)
        assert sentence in hit["text"], (sentence, hit["text"])
    assert "[guideline.pdf p. 3]" in query(cfg, middle[0]).stdout.splitlines()[0]

    # Acceptance 2: the Word document and the HTML page, in order, cited by heading path
    assert similarity(docx_text, stitched(chunks["monitoring.docx"])) >= 0.98
    assert similarity(html_text, stitched(chunks["methotrexate.html"])) >= 0.98
    for name, (paragraph, path) in deep_probes(html_text, docx_text).items():
        hit = top_hit(cfg, paragraph)
        assert (Path(hit["source"]).name, hit["heading"], hit["page"]) == (name, path, None), hit
        assert paragraph.split(". ")[-1] in hit["text"]
        assert f"[{name} § {path}]" in query(cfg, paragraph).stdout.splitlines()[0]

    # Nothing from scripts, styles, navigation, headers, footers, asides, forms or hidden
    # elements was stored, in any chunk of any document
    stored = {word for texts in chunks.values() for text, _, _ in texts for word in text.split()}
    assert not {w for w in stored if any(marker in w for marker in markupgen.MARKERS)}


def deep_probes(html_text: str, docx_text: str) -> dict[str, tuple[str, str]]:
    """The last paragraph of the HTML page and of the Word document, and the heading path it
    sits under: deep in its section, so that the chunk holding it starts under that heading
    too (a chunk is cited by its first word's place)."""
    return {"methotrexate.html": (html_text.split("\n\n")[-1], f"{markupgen.TITLE} > Monitoring"),
            "monitoring.docx": (docx_text.split("\n\n")[-1], f"{markupgen.DOCX_TITLE} > Monitoring > After the table")}


def test_the_first_paragraph_under_a_heading_is_cited_by_that_heading() -> None:
    """markupgen's probes lie right under their heading ("Folic acid"; "Laboratory tests"): the
    chunk holding one should carry that heading's path, at any chunk size."""
    from roxi_mp.documents import chunk_sections
    from roxi_mp.extract.docx import extract_docx
    from roxi_mp.extract.html import extract_html
    html, _ = markupgen.html_page()
    word, _ = markupgen.docx_document()
    for extracted, (sentence, path) in ((extract_html(html), markupgen.HTML_PROBE),
                                        (extract_docx(word, max_unzipped_bytes=1 << 26), markupgen.DOCX_PROBE)):
        for words, overlap in ((60, 10), (200, 40)):
            rows = chunk_sections(extracted.sections, words=words, overlap=overlap)
            assert [heading for _, text, _, _, heading in rows if sentence in text] == [path], (words, path)


def test_no_extraction_worker_outlives_the_ingest_once_asleep(system, make_config, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"guideline-{i}.pdf").write_bytes(pdfgen.two_column_pdf(pages=3, seed=i).data)
    cfg = make_config(**CONFIG)
    s = system(cfg)
    report, workers = ingest_watching_workers(cfg, docs)
    assert report["added"] == 4 and workers
    s.wait_indexed(s.stats().chunks, timeout=2 * PATIENCE)
    assert roxi(cfg, "sleep").returncode == 0
    s.wait_for(lambda: all(r["state"] in ("asleep", "suspended") for r in s.status()["roles"]), timeout=PATIENCE,
               what="every role asleep")
    assert not [pid for pid in workers if psutil.pid_exists(pid) and _is_worker(pid)]
    tree = psutil.Process(s.proc.pid).children(recursive=True)
    assert tree and not [p.pid for p in tree if _is_worker(p.pid)]


def _is_worker(pid: int) -> bool:
    try:
        return WORKER in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def test_the_sample_corpus_pdf_and_html_page_read_cleanly(make_config) -> None:
    """The bundled PDF is what tests/sample_corpus_gen.py writes (byte for byte), and both
    bundled files are stored in reading order with their places, without their running
    header, footer, navigation or scripts."""
    from roxi_mp import ingest
    from .. import sample_corpus_gen as gen
    assert gen.OUT.read_bytes() == gen.sample_pdf(), "regenerate: python -m tests.sample_corpus_gen"
    cfg = make_config(**CONFIG)
    cfg.data_dir.mkdir(parents=True)
    sample = ingest.sample_corpus_dir()
    with Store.open(cfg) as store:
        report = ingest.ingest_paths(store, [sample / gen.OUT.name, sample / "raynauds-phenomenon.html"],
                                     chunk_words=60, chunk_overlap=10, max_document_bytes=1 << 24,
                                     extract=cfg.extract)
    assert (report.added, report.errors) == (2, []), report
    chunks = stored_chunks(cfg)
    pdf = chunks[gen.OUT.name]
    words = stitched(pdf)
    assert {page for _, page, _ in pdf} == {1, 2, 3}
    assert occurrences(words, gen.HEADER_LEFT) + occurrences(words, gen.HEADER_RIGHT) == 0
    assert similarity(gen.known_text(), words) >= 0.98
    row = "4 | Polymyalgia rheumatica: 10 mg within 4 to 8 weeks, then 1 mg a month. | Strong | 90%"
    assert occurrences(words, row) == 1 and [p for t, p, _ in pdf if "| Strong | 90%" in t][-1] == 3
    page = chunks["raynauds-phenomenon.html"]
    text = " ".join(t for t, _, _ in page)
    for boilerplate in ("clinicAnalytics", "trackScroll", "Appointments and cancellations", "Cookie settings",
                        "Related leaflets", "demonstration site"):
        assert boilerplate not in text
    assert ("Raynaud's phenomenon > Treatments" in {h for _, _, h in page}
            and "Nifedipine (modified release) | Tablet once or twice a day" in text)
