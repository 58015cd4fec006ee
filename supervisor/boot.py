"""What the supervisor does to its data directory before it opens a socket or spawns a role.

The directories exist (the run directory owner-only: its sockets are the door to the
data), CURVE keys exist when an endpoint needs them, an interrupted store swap is finished,
and an empty store gets the sample corpus when the configuration asks for it.
"""

from __future__ import annotations

import logging
import os

from roxi_mp import ingest, keys
from roxi_mp.config import Config
from roxi_mp.staging import complete_swap
from roxi_mp.store import Store

log = logging.getLogger("roxi.supervisor")


def open_data_dir(cfg: Config) -> Store:
    """Prepare the data directory (the caller holds its lock) and open the store."""
    if keys.needs_keys(cfg):
        keys.server_keys(cfg)  # a tcp:// endpoint without CURVE keys never opens
    for d in (cfg.data_dir, cfg.log_dir):
        d.mkdir(parents=True, exist_ok=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(cfg.run_dir, 0o700)  # sockets are the door to the data: owner only
    if complete_swap(cfg):  # a reembed or restore was interrupted mid-swap: finish it
        log.warning("finished an interrupted store swap (old files in %s)", cfg.data_dir / "previous")
    store = Store.open(cfg)
    if cfg.supervisor.ingest_sample_on_empty and ingest.is_empty_store(store):
        report = ingest.ingest_paths(store, [ingest.sample_corpus_dir()],
                                     chunk_words=cfg.store.chunk_words,
                                     chunk_overlap=cfg.store.chunk_overlap,
                                     max_document_bytes=cfg.store.max_document_bytes,
                                     extract=cfg.extract)  # its PDF is read by a bounded child too
        log.info("empty store: ingested the sample corpus (%d documents, %d chunks)",
                 report.added, report.chunks)
        for path, reason in report.errors:  # a broken package's file: the rest is still served
            log.warning("sample corpus: skipped %s: %s", path, reason)
    return store
