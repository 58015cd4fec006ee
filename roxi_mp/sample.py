"""`python -m roxi_mp.sample`: ingest the bundled sample corpus into an empty store.

The supervisor runs it as a child at its first start (`supervisor.ingest_sample_on_empty`):
reading, hashing and extracting the corpus (a PDF among it) in the supervisor would leave
their modules and libcrypto in it for good, and the supervisor must stay small while the
system sleeps (issue 22). Each document is its own transaction, as with `roxi ingest`.
"""

from __future__ import annotations

import sys

from . import config as config_mod
from . import ingest
from .errors import ConfigError, RoxiError
from .process import child_parser, die_with_parent
from .store import Store


def ingest_sample(cfg: config_mod.Config) -> ingest.IngestReport | None:
    """Ingest the sample corpus if the store holds no document; None if it holds some."""
    with Store.open(cfg) as store:
        if not ingest.is_empty_store(store):
            return None
        return ingest.ingest_paths(store, [ingest.sample_corpus_dir()], chunk_words=cfg.store.chunk_words,
                                   chunk_overlap=cfg.store.chunk_overlap,
                                   max_document_bytes=cfg.store.max_document_bytes,
                                   extract=cfg.extract)  # its PDF is read by a bounded child too


def main(argv: list[str] | None = None) -> int:
    """Prints one line per outcome (the supervisor logs them); 0, or 1 with the reason."""
    args = child_parser("roxi_mp.sample").parse_args(argv)
    die_with_parent()  # a supervisor killed at boot takes its sample ingest along
    try:
        report = ingest_sample(config_mod.load(args.config, data_dir=args.data_dir))
    except (ConfigError, RoxiError, OSError) as exc:
        print(f"sample corpus not ingested: {exc}", file=sys.stderr)
        return 1
    if report is None:
        print("the store is not empty: no sample corpus")
        return 0
    print(f"empty store: ingested the sample corpus ({report.added} documents, {report.chunks} chunks)")
    for path, reason in report.errors:  # a broken package's file: the rest is still served
        print(f"skipped {path}: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
