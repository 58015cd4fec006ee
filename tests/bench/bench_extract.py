"""Extraction throughput and PDF ingest end to end (issue 18, acceptance 4).

    .venv/bin/python -m tests.bench.bench_extract [--quick] [--pdfs 1000] [--no-ingest]

All documents are generated before any clock starts, with distinct text per seed:
two-column PDFs with a running header, a footer, hyphenated line ends and a table on page
2 (tests.pdfgen.two_column_pdf), HTML pages with boilerplate around h1-h3, lists and a
table, and Word documents with headings and a nested table (tests.markupgen).

1. Extraction through the real Extractor (roxi_mp.extract.extractor), i.e. in the child
   process that `roxi ingest` and the documents role use, one document at a time: PDF
   pages/s, HTML and DOCX documents/s. The worker is started (and its parsers imported)
   before the clock, and its start is reported apart. The same documents parsed in this
   process (no child, no pipes) show what the isolation costs.
2. `roxi ingest DIR` of `--pdfs` generated PDFs (3 pages each) into a real running system
   (supervisor and roles with the shipped [embedder] settings; [extract] defaults):
   a. with the default backend, MiniLM: the CLI's wall time and documents/s (read, sniff,
      hash, extract in the child, chunk, store). The embedder works on the new chunks
      meanwhile, on the other core; at about 12 chunks/s it would take far longer than
      the ingest to index them all, so the clock stops when the CLI returns.
   b. with the hashing backend (dim 1024): the same ingest, then the time until every
      chunk is indexed (`committed_rows` polled every 0.1 s).
   CPU seconds of the CLI with its extraction worker are from RUSAGE_CHILDREN.

On a 2-core machine every process shares the cores with whatever else runs: compare
figures from one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from roxi_mp.config_sections import EmbedderSettings, ExtractSettings
from roxi_mp.extract import DOCX, HTML, PDF
from roxi_mp.extract.docx import extract_docx
from roxi_mp.extract.extractor import Extractor
from roxi_mp.extract.html import extract_html
from roxi_mp.extract.pdf import extract_pdf
from roxi_mp.store import Store

from .. import markupgen, pdfgen
from ..conftest import clean_env
from .common import bench_system, machine, stop_on_sigterm, table, temp_root, write_results

KB = 1024
#: pages of each PDF ingested end to end
INGEST_PAGES = 3
#: seconds to wait for an ingest or for indexing, whatever the machine's load
PATIENCE = 3600.0
#: the shipped [embedder] settings (the tests' defaults are tuned for speed, not realism)
SHIPPED_EMBEDDER = {f"embedder__{k}": v for k, v in asdict(EmbedderSettings()).items() if k != "backend"}
#: sizes: (PDFs, pages each) for extraction, HTML and DOCX documents, PDFs ingested
FULL = {"pdfs": (50, 10), "html": 300, "docx": 300, "ingest": 1000}
QUICK = {"pdfs": (8, 4), "html": 40, "docx": 40, "ingest": 50}


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_each(items: list[bytes], fn: Callable[[bytes], Any]) -> tuple[float, list[Any]]:
    started = time.perf_counter()
    results = [fn(data) for data in items]
    return time.perf_counter() - started, results


def extraction(sizes: dict) -> dict:
    """Documents/s and pages/s through the Extractor (child) and in process."""
    count, pages = sizes["pdfs"]
    pdfs = [pdfgen.two_column_pdf(pages=pages, seed=1000 + i).data for i in range(count)]
    htmls = [markupgen.html_page(paragraphs=12, seed=i)[0] for i in range(sizes["html"])]
    docxs = [markupgen.docx_document(paragraphs=12, seed=i)[0] for i in range(sizes["docx"])]
    settings = ExtractSettings()
    in_process = {PDF: lambda d: extract_pdf(d, max_pages=settings.max_pages), HTML: extract_html,
                  DOCX: lambda d: extract_docx(d, max_unzipped_bytes=settings.max_unzipped_bytes)}
    extractor = Extractor(settings)
    try:
        started = time.perf_counter()
        extractor.extract(htmls[0], HTML)  # the worker starts and imports its parsers
        start_s = time.perf_counter() - started
        rows = []
        for label, ctype, docs in (("PDF", PDF, pdfs), ("HTML", HTML, htmls), ("DOCX", DOCX, docxs)):
            child_s, results = timed_each(docs, lambda d: extractor.extract(d, ctype))
            local_s, _ = timed_each(docs, in_process[ctype])
            words = sum(len(r.text().split()) for r in results)
            rows.append({"type": label, "documents": len(docs), "pages": sum(r.pages or 0 for r in results),
                         "bytes": sum(map(len, docs)), "words": words, "child_s": child_s, "in_process_s": local_s})
    finally:
        extractor.close()
    return {"worker_start_s": start_s, "rows": rows}


def write_pdfs(root: Path, count: int) -> tuple[Path, int, float]:
    """`count` PDFs of INGEST_PAGES pages, distinct text each: (directory, bytes, seconds)."""
    started = time.perf_counter()
    docs = root / "pdfs"
    docs.mkdir(parents=True)
    size = 0
    for i in range(count):
        data = pdfgen.two_column_pdf(pages=INGEST_PAGES, seed=i).data
        (docs / f"guideline-{i:05d}.pdf").write_bytes(data)
        size += len(data)
    return docs, size, time.perf_counter() - started


def ingest_run(docs: Path, backend: str, *, wait_indexed: bool) -> dict:
    """`roxi ingest docs` into a running system of `backend`; with `wait_indexed`, also
    the time until all its chunks are indexed."""
    overrides = {**SHIPPED_EMBEDDER, "embedder__backend": backend, "hashing__dim": 1024}
    with bench_system(f"extract-{backend}", **overrides) as s:
        s.start(timeout=180)
        cpu_before = children_cpu()
        started = time.perf_counter()
        cli = subprocess.run([sys.executable, "-m", "roxi_mp.cli", *s.cfg.to_argv(), "ingest", str(docs), "--json"],
                             capture_output=True, text=True, env=clean_env(), timeout=PATIENCE)
        ingest_s = time.perf_counter() - started
        cli_cpu = children_cpu() - cpu_before
        if cli.returncode != 0:
            raise RuntimeError(f"roxi ingest exited {cli.returncode}: {cli.stderr[-2000:]}")
        report = json.loads(cli.stdout)
        with Store(s.cfg.db_path) as store:
            indexed_at_return = store.committed_rows()
            indexed_s = None
            while wait_indexed and store.committed_rows() < report["chunks"]:
                if time.perf_counter() - started > PATIENCE or s.proc.poll() is not None:
                    raise RuntimeError(f"{report['chunks']} chunks not indexed\n{s.logs()}")
                time.sleep(0.1)
            if wait_indexed:
                indexed_s = time.perf_counter() - started
        return {"backend": backend, "documents": report["added"], "errors": len(report["errors"]),
                "chunks": report["chunks"], "ingest_s": ingest_s, "cli_cpu_s": cli_cpu,
                "indexed_at_return": indexed_at_return, "indexed_s": indexed_s}


def end_to_end(count: int) -> dict:
    root = temp_root("extract-pdfs")
    try:
        docs, size, made_s = write_pdfs(root, count)
        runs = [ingest_run(docs, "minilm", wait_indexed=False), ingest_run(docs, "hashing", wait_indexed=True)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"pdfs": count, "pages": count * INGEST_PAGES, "bytes": size, "generated_s": made_s, "runs": runs}


def markdown(data: dict) -> str:
    ext = data["extraction"]
    rows = []
    for r in ext["rows"]:
        unit = r["pages"] if r["type"] == "PDF" else r["documents"]
        rows.append([r["type"], f"{r['documents']:,}", f"{r['pages']:,}" if r["pages"] else "-",
                     f"{r['bytes'] / r['documents'] / KB:.0f}", f"{r['words'] / r['documents']:,.0f}",
                     f"{r['child_s']:.2f}", f"{unit / r['child_s']:,.1f}", f"{unit / r['in_process_s']:,.1f}",
                     f"{r['child_s'] / r['in_process_s']:.2f}"])
    out = [f"## Extraction (bench_extract.py; one document at a time; worker start {ext['worker_start_s']:.2f} s, "
           "not counted)", "",
           table(["type", "documents", "pages", "KB each", "words each", "child s", "pages/s or docs/s (child)",
                  "in process", "child / in process time"], rows)]
    e2e = data.get("ingest")
    if e2e:
        ingest_rows = []
        for r in e2e["runs"]:
            indexed = f"{r['indexed_s']:.1f}" if r["indexed_s"] is not None else "not waited for"
            rate = f"{r['chunks'] / r['indexed_s']:,.0f}" if r["indexed_s"] else "-"
            ingest_rows.append([r["backend"], f"{r['documents']:,}", f"{r['errors']}", f"{r['chunks']:,}",
                                f"{r['ingest_s']:.1f}", f"{r['documents'] / r['ingest_s']:,.1f}",
                                f"{e2e['pages'] / r['ingest_s']:,.1f}", f"{r['cli_cpu_s']:.1f}",
                                f"{r['indexed_at_return']:,}", indexed, rate])
        out += ["", f"## `roxi ingest` of {e2e['pdfs']:,} generated PDFs ({INGEST_PAGES} pages each, "
                f"{e2e['bytes'] / e2e['pdfs'] / KB:.0f} KB each; generated in {e2e['generated_s']:.0f} s, not counted) "
                "into a running system, shipped [embedder] settings", "",
                table(["backend", "documents", "errors", "chunks", "ingest s", "docs/s", "pages/s",
                       "CLI + worker CPU s", "indexed when ingest returned", "all indexed s", "chunks/s to indexed"],
                      ingest_rows)]
    return "\n".join(out) + "\n"


def run(quick: bool, *, pdfs: int | None = None, ingest: bool = True) -> dict:
    sizes = {**(QUICK if quick else FULL)}
    if pdfs is not None:
        sizes["ingest"] = pdfs
    data: dict[str, Any] = {"sizes": sizes, "extraction": extraction(sizes)}
    if ingest:
        data["ingest"] = end_to_end(sizes["ingest"])
    return {"name": "extract", "markdown": markdown(data), "data": data}


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 PDFs of 4 pages, 40 HTML, 40 DOCX, ingest of 50 PDFs")
    parser.add_argument("--pdfs", type=int, help="PDFs ingested end to end (default 1000, quick 50)")
    parser.add_argument("--no-ingest", action="store_true", help="extraction only, no system started")
    args = parser.parse_args(argv)
    result = run(args.quick, pdfs=args.pdfs, ingest=not args.no_ingest)
    path = write_results("extract", {"machine": machine(), **result["data"]}, result["markdown"])
    print(result["markdown"])
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
