"""Range and consistency checks on a loaded configuration, one function per section.

`roxi_mp.config.load` runs `validate` after the file and the environment are applied, so
a value that would only fail later, inside a child process and far from the operator, is
refused at load time with a `ConfigError` naming the key, the rule and the value. Checks
that relate two keys (chunk_overlap against chunk_words, default_k against max_k) live
in the section that owns both. The order of the checks is the order of the errors an
operator meets, one at a time, so it follows conf/roxi.toml.
"""

from __future__ import annotations

import re
from typing import Any

from .config_sections import BACKENDS, INDEX_KINDS, MAX_IPC_PATH, ROLE_KINDS, Config
from .errors import ConfigError
from .fusion import METHODS, MODES

#: minilm.compute: "auto" (int8 for a new store, what an existing store was built with), or fixed
MINILM_COMPUTES = ("auto", "int8", "float32")

#: the sockets under run_dir whose ipc:// path must fit in sun_path
IPC_SOCKETS = ("query", "heartbeat", "control", "vectors", "events", "documents")


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{name}' must be {rule}, got {value!r}")


def validate(cfg: Config) -> None:
    """Raise ConfigError on the first value out of range."""
    check_store(cfg)
    check_backends(cfg)
    check_embedder(cfg)
    check_indexer(cfg)
    check_documents(cfg)
    check_extract(cfg)
    check_query(cfg)
    check_supervisor(cfg)
    check_restart(cfg)
    check_backup(cfg)
    check_limits(cfg)
    check_network(cfg)
    check_web(cfg)


def check_store(cfg: Config) -> None:
    s = cfg.store
    _require(s.chunk_words >= 8, "store.chunk_words", ">= 8", s.chunk_words)
    _require(0 <= s.chunk_overlap < s.chunk_words // 2, "store.chunk_overlap",
             "in [0, chunk_words/2)", s.chunk_overlap)
    _require(s.max_document_bytes >= 1024, "store.max_document_bytes", ">= 1024", s.max_document_bytes)
    _require(s.busy_timeout_ms >= 100, "store.busy_timeout_ms", ">= 100", s.busy_timeout_ms)


def check_backends(cfg: Config) -> None:
    """embedder.backend and the backend sections ([hashing], [minilm], [http])."""
    e = cfg.embedder
    _require(e.backend in BACKENDS, "embedder.backend", f"one of {', '.join(BACKENDS)}", e.backend)
    _require(cfg.hashing.dim >= 64, "hashing.dim", ">= 64", cfg.hashing.dim)
    m = cfg.minilm
    _require(8 <= m.max_tokens <= 512, "minilm.max_tokens", "in [8, 512]", m.max_tokens)
    _require(m.batch_tokens >= m.max_tokens, "minilm.batch_tokens", ">= max_tokens", m.batch_tokens)
    _require(1 <= m.threads <= 64, "minilm.threads", "in [1, 64]", m.threads)
    _require(m.compute in MINILM_COMPUTES, "minilm.compute", " or ".join(MINILM_COMPUTES), m.compute)
    h = cfg.http
    _require(1 <= h.min_batch_size <= h.initial_batch_size, "http.min_batch_size", "in [1, initial_batch_size]",
             h.min_batch_size)
    _require(h.initial_batch_size <= h.max_batch_size, "http.initial_batch_size", "<= max_batch_size",
             h.initial_batch_size)
    _require(0 < h.target_fraction <= 1, "http.target_fraction", "in (0, 1]", h.target_fraction)
    _require(0 < h.query_share < 1, "http.query_share", "in (0, 1)", h.query_share)
    if e.backend == "http":  # only checked when used: the defaults describe no service
        _require(h.base_url.startswith(("http://", "https://")), "http.base_url",
                 "an http:// or https:// URL", h.base_url)
        _require(bool(h.model), "http.model", "set", h.model)
        _require(h.dim >= 1, "http.dim", ">= 1 (the dimension the service returns)", h.dim)


def check_embedder(cfg: Config) -> None:
    e = cfg.embedder
    _require(1 <= e.count <= 64, "embedder.count", "in [1, 64]", e.count)
    _require(1 <= e.batch_size <= 10_000, "embedder.batch_size", "in [1, 10000]", e.batch_size)
    _require(e.lease_seconds >= 1, "embedder.lease_seconds", ">= 1", e.lease_seconds)
    _require(e.poll_seconds > 0, "embedder.poll_seconds", "> 0", e.poll_seconds)
    _require(e.idle_seconds > 0, "embedder.idle_seconds", "> 0", e.idle_seconds)
    _require(e.wake_check_seconds > 0, "embedder.wake_check_seconds", "> 0", e.wake_check_seconds)
    _require(e.yield_seconds >= 0, "embedder.yield_seconds", ">= 0", e.yield_seconds)
    _require(1 <= e.yield_batch_size <= e.batch_size, "embedder.yield_batch_size", "in [1, batch_size]",
             e.yield_batch_size)
    _require(e.yield_pause_seconds >= 0, "embedder.yield_pause_seconds", ">= 0", e.yield_pause_seconds)
    _require(0 < e.busy_cpu_percent <= 100, "embedder.busy_cpu_percent", "in (0, 100]", e.busy_cpu_percent)
    _require(0 <= e.idle_workers <= 256, "embedder.idle_workers", "in [0, 256]", e.idle_workers)
    _require(0 <= e.idle_cpu_percent <= 100, "embedder.idle_cpu_percent", "in [0, 100]", e.idle_cpu_percent)
    _require(e.pause_seconds >= 0, "embedder.pause_seconds", ">= 0", e.pause_seconds)
    _require(e.max_attempts >= 1, "embedder.max_attempts", ">= 1", e.max_attempts)


def check_indexer(cfg: Config) -> None:
    i = cfg.indexer
    _require(i.commit_max_rows >= 1, "indexer.commit_max_rows", ">= 1", i.commit_max_rows)
    _require(i.commit_max_ms >= 0, "indexer.commit_max_ms", ">= 0", i.commit_max_ms)
    _require(i.index in INDEX_KINDS, "indexer.index", f"one of {', '.join(INDEX_KINDS)}", i.index)
    _require(i.ann_min_rows >= 1000, "indexer.ann_min_rows", ">= 1000", i.ann_min_rows)
    _require(i.ann_update_rows >= 1, "indexer.ann_update_rows", ">= 1", i.ann_update_rows)
    _require(i.ann_update_seconds > 0, "indexer.ann_update_seconds", "> 0", i.ann_update_seconds)
    _require(1 <= i.ann_build_threads <= 64, "indexer.ann_build_threads", "in [1, 64]", i.ann_build_threads)
    _require(4 <= i.hnsw_m <= 128, "indexer.hnsw_m", "in [4, 128]", i.hnsw_m)
    _require(i.hnsw_ef_construction >= i.hnsw_m, "indexer.hnsw_ef_construction", ">= hnsw_m",
             i.hnsw_ef_construction)
    _require(i.ivf_lists == 0 or 16 <= i.ivf_lists <= 1 << 20, "indexer.ivf_lists",
             "0 (automatic) or in [16, 1048576]", i.ivf_lists)
    _require(0 < i.compact_dead_fraction < 1, "indexer.compact_dead_fraction", "in (0, 1)",
             i.compact_dead_fraction)
    _require(i.compact_min_rows >= 1, "indexer.compact_min_rows", ">= 1", i.compact_min_rows)
    _require(i.compact_check_seconds > 0, "indexer.compact_check_seconds", "> 0", i.compact_check_seconds)


def check_documents(cfg: Config) -> None:
    d = cfg.documents
    _require(1024 <= d.max_document_bytes <= 1 << 30, "documents.max_document_bytes", "in [1 KiB, 1 GiB]",
             d.max_document_bytes)
    _require(1 <= d.max_key_chars <= 65536, "documents.max_key_chars", "in [1, 65536]", d.max_key_chars)
    _require(1 <= d.max_title_chars <= 65536, "documents.max_title_chars", "in [1, 65536]", d.max_title_chars)
    _require(d.max_metadata_bytes >= 64, "documents.max_metadata_bytes", ">= 64", d.max_metadata_bytes)
    _require(d.max_metadata_entries >= 1, "documents.max_metadata_entries", ">= 1", d.max_metadata_entries)
    _require(1 <= d.list_max <= 100_000, "documents.list_max", "in [1, 100000]", d.list_max)
    _require(1 <= d.max_pending_extractions <= 1000, "documents.max_pending_extractions", "in [1, 1000]",
             d.max_pending_extractions)


def check_extract(cfg: Config) -> None:
    x = cfg.extract
    _require(0 < x.timeout_seconds <= 3600, "extract.timeout_seconds", "in (0, 3600]", x.timeout_seconds)
    # A floor against a unit slip (memory_mb = 1, meant as GB): the child itself takes ~20 MB
    # before any document, and ordinary documents need tens of MB more.
    _require(256 <= x.memory_mb <= 1 << 20, "extract.memory_mb", "in [256, 1048576]", x.memory_mb)
    _require(1 <= x.max_pages <= 1_000_000, "extract.max_pages", "in [1, 1000000]", x.max_pages)
    # The child holds the whole file while it parses it: one over its memory never could be read.
    _require(1024 <= x.max_file_bytes < x.memory_mb << 20, "extract.max_file_bytes",
             "in [1 KiB, memory_mb MiB)", x.max_file_bytes)
    _require(x.max_unzipped_bytes >= 1024, "extract.max_unzipped_bytes", ">= 1 KiB", x.max_unzipped_bytes)


def check_query(cfg: Config) -> None:
    q = cfg.query
    _require(q.hnsw_ef_search >= 1, "query.hnsw_ef_search", ">= 1", q.hnsw_ef_search)
    _require(q.ivf_nprobe >= 1, "query.ivf_nprobe", ">= 1", q.ivf_nprobe)
    _require(1 <= q.default_k <= q.max_k, "query.default_k", "in [1, max_k]", q.default_k)
    _require(1 <= q.max_k <= 100_000, "query.max_k", "in [1, 100000]", q.max_k)
    _require(q.max_query_chars >= 1, "query.max_query_chars", ">= 1", q.max_query_chars)
    _require(q.threads >= 1, "query.threads", ">= 1", q.threads)
    _require(q.idle_seconds > 0, "query.idle_seconds", "> 0", q.idle_seconds)
    _require(q.follow_poll_seconds > 0, "query.follow_poll_seconds", "> 0", q.follow_poll_seconds)
    _require(q.cache_entries >= 0, "query.cache_entries", ">= 0", q.cache_entries)
    _require(q.cache_ttl_seconds > 0, "query.cache_ttl_seconds", "> 0", q.cache_ttl_seconds)
    _require(q.trim_seconds > 0, "query.trim_seconds", "> 0", q.trim_seconds)
    # Under the client's timeout, or a slow embedding service's answer would come to a
    # client that already gave up (and a retry would add to the load that made it slow).
    _require(0 < q.embed_timeout_seconds < cfg.limits.request_timeout_seconds, "query.embed_timeout_seconds",
             "> 0 and < limits.request_timeout_seconds", q.embed_timeout_seconds)
    _require(q.embed_max_waiting >= 1, "query.embed_max_waiting", ">= 1", q.embed_max_waiting)
    _require(q.mode in MODES, "query.mode", " or ".join(MODES), q.mode)
    _require(q.fusion in METHODS, "query.fusion", " or ".join(METHODS), q.fusion)
    _require(0 < q.rrf_k <= 10_000, "query.rrf_k", "in (0, 10000]", q.rrf_k)
    for name in ("dense_weight", "lexical_weight"):
        _require(0 <= getattr(q, name) <= 1, f"query.{name}", "in [0, 1]", getattr(q, name))
    _require(q.dense_weight + q.lexical_weight > 0, "query.dense_weight", "not 0 with lexical_weight 0",
             q.dense_weight)
    _require(1 <= q.candidates <= 10_000, "query.candidates", "in [1, 10000]", q.candidates)
    _require(1 <= q.max_lexical_terms <= 1024, "query.max_lexical_terms", "in [1, 1024]", q.max_lexical_terms)
    _require(q.lexical_budget >= 1, "query.lexical_budget", ">= 1", q.lexical_budget)


def check_supervisor(cfg: Config) -> None:
    sv = cfg.supervisor
    _require(sv.sleep_poll_seconds > 0, "supervisor.sleep_poll_seconds", "> 0", sv.sleep_poll_seconds)
    _require(sv.heartbeat_seconds > 0, "supervisor.heartbeat_seconds", "> 0", sv.heartbeat_seconds)
    _require(sv.liveness_seconds > sv.heartbeat_seconds, "supervisor.liveness_seconds",
             "> heartbeat_seconds", sv.liveness_seconds)
    _require(sv.sleep_heartbeat_seconds >= sv.heartbeat_seconds, "supervisor.sleep_heartbeat_seconds",
             ">= heartbeat_seconds", sv.sleep_heartbeat_seconds)
    _require(sv.grace_seconds > 0, "supervisor.grace_seconds", "> 0", sv.grace_seconds)
    _require(sv.start_timeout_seconds > 0, "supervisor.start_timeout_seconds", "> 0",
             sv.start_timeout_seconds)
    _require(sv.log_max_bytes >= 4096, "supervisor.log_max_bytes", ">= 4096", sv.log_max_bytes)
    _require(0 <= sv.log_backups <= 100, "supervisor.log_backups", "in [0, 100]", sv.log_backups)


def check_restart(cfg: Config) -> None:
    """[restart] and each role's policy as merged: an override may break a rule with a default."""
    for kind in ("", *ROLE_KINDS):
        r = cfg.restart_for(kind) if kind else cfg.restart
        where = f"restart.{kind}." if kind else "restart."
        _require(0 < r.backoff_initial_seconds <= r.backoff_max_seconds, where + "backoff_initial_seconds",
                 "in (0, backoff_max_seconds]", r.backoff_initial_seconds)
        _require(r.stable_seconds > 0, where + "stable_seconds", "> 0", r.stable_seconds)
        _require(r.flap_count >= 1, where + "flap_count", ">= 1", r.flap_count)
        _require(r.flap_window_seconds > 0, where + "flap_window_seconds", "> 0", r.flap_window_seconds)


def check_backup(cfg: Config) -> None:
    b = cfg.backup
    _require(b.keep >= 1, "backup.keep", ">= 1", b.keep)
    _require(b.interval_seconds >= 0, "backup.interval_seconds", ">= 0 (0: no scheduled backups)",
             b.interval_seconds)
    _require(b.check_seconds > 0, "backup.check_seconds", "> 0", b.check_seconds)


def check_limits(cfg: Config) -> None:
    lim = cfg.limits
    _require(lim.max_message_bytes >= 4096, "limits.max_message_bytes", ">= 4096", lim.max_message_bytes)
    _require(lim.socket_hwm >= 1, "limits.socket_hwm", ">= 1", lim.socket_hwm)
    _require(lim.request_timeout_seconds > 0, "limits.request_timeout_seconds", "> 0",
             lim.request_timeout_seconds)


def check_network(cfg: Config) -> None:
    for name in ("query_endpoint", "documents_endpoint"):
        ep = getattr(cfg.network, name)
        _require(ep == "" or ep.startswith("ipc://") or re.fullmatch(r"tcp://[^:/\s]+:\d{1,5}", ep) is not None,
                 f"network.{name}", "empty, ipc://PATH or tcp://HOST:PORT (tcp needs `roxi keys generate`)", ep)
    # sun_path limits the whole socket path, so each derived endpoint is checked, not run_dir.
    for name in IPC_SOCKETS:
        path = cfg.endpoint(name)[len("ipc://"):]
        _require(len(path) <= MAX_IPC_PATH, "network.run_dir",
                 f"short enough for ipc socket paths (<= {MAX_IPC_PATH} bytes)", path)


def check_web(cfg: Config) -> None:
    w = cfg.web
    _require(bool(w.host.strip()) and not any(c.isspace() for c in w.host), "web.host",
             "an address or host name (127.0.0.1, ::1, 0.0.0.0 ...)", w.host)
    _require(0 <= w.port <= 65535, "web.port", "in [0, 65535] (0: any free port)", w.port)
    _require(0.1 <= w.refresh_seconds <= 60, "web.refresh_seconds", "in [0.1, 60]", w.refresh_seconds)
    _require(1 <= w.sample_seconds <= 3600, "web.sample_seconds", "in [1, 3600]", w.sample_seconds)
    _require(w.sample_seconds <= w.history_seconds <= 7 * 86400, "web.history_seconds",
             "in [sample_seconds, 604800]", w.history_seconds)
    _require(w.history_seconds / w.sample_seconds <= 100_000, "web.history_seconds",
             "at most 100,000 samples (history_seconds / sample_seconds)", w.history_seconds)
    _require(1 <= w.max_connections <= 10_000, "web.max_connections", "in [1, 10000]", w.max_connections)
    _require(0.1 <= w.request_seconds <= 600, "web.request_seconds", "in [0.1, 600]", w.request_seconds)
