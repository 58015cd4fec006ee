"""The typed settings: one dataclass per config section, and `Config`, which holds them.

Each field's default here is the documented default in conf/roxi.toml, and its type is the
type `roxi_mp.config.load` demands of a TOML value or parses an environment variable by.
`Config` also derives every path and socket endpoint from `data_dir`, so the supervisor and
its children compute the same ones. Nothing here reads files or the environment, and
nothing checks ranges: that is `roxi_mp.config` and `roxi_mp.config_checks`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: role kinds, as used in [restart.<role>], `roxi stop ROLE` and status
ROLE_KINDS = ("embedder", "indexer", "query", "documents")
#: longest ipc:// socket path we allow (sun_path is 108 bytes on Linux, with its NUL)
MAX_IPC_PATH = 100


@dataclass
class StoreSettings:
    chunk_words: int = 200
    chunk_overlap: int = 40
    max_document_bytes: int = 64 * 1024 * 1024
    busy_timeout_ms: int = 10_000


#: embedder backends, each configured in its own section
BACKENDS = ("minilm", "hashing", "http")
#: search indexes (`indexer.index`): exact scan, or an approximate index built beside it
INDEX_KINDS = ("exact", "hnsw", "ivf")


@dataclass
class EmbedderSettings:
    backend: str = "minilm"
    count: int = 1
    batch_size: int = 64
    lease_seconds: float = 60.0
    poll_seconds: float = 0.5
    pause_seconds: float = 0.0
    max_attempts: int = 5
    idle_seconds: float = 30.0
    wake_check_seconds: float = 10.0
    yield_seconds: float = 5.0
    yield_batch_size: int = 8
    yield_pause_seconds: float = 0.2
    busy_cpu_percent: float = 90.0
    idle_workers: int = 0
    idle_cpu_percent: float = 25.0


@dataclass
class HashingSettings:
    dim: int = 1024


@dataclass
class MiniLMSettings:
    max_tokens: int = 256
    batch_tokens: int = 256
    threads: int = 1
    compute: str = "auto"


@dataclass
class HttpSettings:
    base_url: str = ""
    model: str = ""
    dim: int = 0
    api_key_env: str = "OPENAI_API_KEY"
    requests_per_minute: float = 3000.0
    tokens_per_minute: float = 1_000_000.0
    max_in_flight: int = 4
    timeout_seconds: float = 30.0
    max_retries: int = 6
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    max_wait_seconds: float = 300.0
    min_batch_size: int = 1
    max_batch_size: int = 2048
    initial_batch_size: int = 8
    target_fraction: float = 0.5
    query_share: float = 0.1


@dataclass
class IndexerSettings:
    commit_max_rows: int = 8192
    commit_max_ms: int = 100
    index: str = "exact"
    ann_min_rows: int = 50_000
    ann_update_rows: int = 20_000
    ann_update_seconds: float = 600.0
    ann_build_threads: int = 1
    hnsw_m: int = 32
    hnsw_ef_construction: int = 40
    ivf_lists: int = 0
    compact_dead_fraction: float = 0.2
    compact_min_rows: int = 10_000
    compact_check_seconds: float = 30.0


@dataclass
class DocumentsSettings:
    max_document_bytes: int = 16 * 1024 * 1024
    max_key_chars: int = 1024
    max_title_chars: int = 1000
    max_metadata_bytes: int = 16 * 1024
    max_metadata_entries: int = 64
    list_max: int = 1000
    max_pending_extractions: int = 8


@dataclass
class ExtractSettings:
    """Limits of the extraction child (roxi_mp.extract.worker) that reads PDF, HTML and DOCX."""

    timeout_seconds: float = 30.0
    memory_mb: int = 1024
    max_pages: int = 2000
    max_file_bytes: int = 256 * 1024 * 1024
    max_unzipped_bytes: int = 256 * 1024 * 1024


@dataclass
class QuerySettings:
    default_k: int = 10
    max_k: int = 1000
    max_query_chars: int = 8192
    threads: int = 1
    idle_seconds: float = 300.0
    follow_poll_seconds: float = 1.0
    cache_entries: int = 256
    cache_ttl_seconds: float = 60.0
    trim_seconds: float = 60.0
    prewarm: bool = True
    model_process: bool = True
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 16
    embed_timeout_seconds: float = 5.0
    embed_max_waiting: int = 32
    #: hybrid search (issue 19): which legs answer by default, and how they are fused
    mode: str = "hybrid"
    fusion: str = "weighted"  # measured on SciFact: nDCG@10 0.731, rrf 0.706
    rrf_k: float = 60.0
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    candidates: int = 100
    max_lexical_terms: int = 32
    lexical_budget: int = 2000


@dataclass
class SupervisorSettings:
    heartbeat_seconds: float = 1.0
    liveness_seconds: float = 5.0
    grace_seconds: float = 10.0
    start_timeout_seconds: float = 30.0
    ingest_sample_on_empty: bool = True
    sleep_poll_seconds: float = 5.0
    sleep_heartbeat_seconds: float = 10.0
    suspend: bool = True
    log_max_bytes: int = 10 * 1024 * 1024
    log_backups: int = 3


@dataclass
class RestartSettings:
    """Restart policy; [restart] holds the defaults, [restart.<role>] overrides per role."""

    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    stable_seconds: float = 30.0
    flap_count: int = 5
    flap_window_seconds: float = 60.0


@dataclass
class BackupSettings:
    #: empty means <data_dir>/backups
    dir: str = ""
    keep: int = 5
    interval_seconds: float = 86400.0
    milestones: bool = True
    check_seconds: float = 10.0


@dataclass
class LimitsSettings:
    max_message_bytes: int = 1024 * 1024
    socket_hwm: int = 1000
    request_timeout_seconds: float = 10.0


@dataclass
class NetworkSettings:
    #: empty means <data_dir>/run (or a short /tmp path when that is too long for ipc)
    run_dir: str = ""
    #: empty means ipc://<run_dir>/query.sock
    query_endpoint: str = ""
    #: empty means ipc://<run_dir>/documents.sock
    documents_endpoint: str = ""
    #: empty means <data_dir>/keys (CURVE keys for a tcp:// query endpoint)
    keys_dir: str = ""


@dataclass
class WebSettings:
    """The supervisor's HTTP endpoint (issue 20): the resources page, /status.json, /metrics."""

    enabled: bool = True
    host: str = "127.0.0.1"
    #: 0: any free port (the chosen one is logged and in data_dir/run/web.url)
    port: int = 8787
    #: how often the supervisor refreshes what the endpoint serves while someone reads it
    refresh_seconds: float = 1.0
    #: a history sample (RSS, CPU, mapped bytes, progress) every this many seconds ...
    sample_seconds: float = 10.0
    #: ... kept this long (a ring in memory)
    history_seconds: float = 3600.0
    max_connections: int = 256
    #: a client has this long to send a request (its head), and to read the answer
    request_seconds: float = 5.0


SECTIONS: dict[str, type] = {
    "store": StoreSettings,
    "embedder": EmbedderSettings,
    "hashing": HashingSettings,
    "minilm": MiniLMSettings,
    "http": HttpSettings,
    "indexer": IndexerSettings,
    "documents": DocumentsSettings,
    "extract": ExtractSettings,
    "query": QuerySettings,
    "supervisor": SupervisorSettings,
    "restart": RestartSettings,
    "backup": BackupSettings,
    "limits": LimitsSettings,
    "network": NetworkSettings,
    "web": WebSettings,
}


@dataclass
class Config:
    data_dir: Path
    config_path: Path | None = None
    store: StoreSettings = field(default_factory=StoreSettings)
    embedder: EmbedderSettings = field(default_factory=EmbedderSettings)
    hashing: HashingSettings = field(default_factory=HashingSettings)
    minilm: MiniLMSettings = field(default_factory=MiniLMSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    indexer: IndexerSettings = field(default_factory=IndexerSettings)
    documents: DocumentsSettings = field(default_factory=DocumentsSettings)
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    query: QuerySettings = field(default_factory=QuerySettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    restart: RestartSettings = field(default_factory=RestartSettings)
    #: [restart.<role>] values, applied over `restart` by restart_for()
    restart_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    backup: BackupSettings = field(default_factory=BackupSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    web: WebSettings = field(default_factory=WebSettings)

    def restart_for(self, kind: str) -> RestartSettings:
        return dataclasses.replace(self.restart, **self.restart_overrides.get(kind, {}))

    # --- paths derived from data_dir ------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.data_dir / "roxi.sqlite3"

    @property
    def vectors_path(self) -> Path:
        """The first vectors file (epoch 0); after a compaction the store's meta names the
        current one: use `vectors_file(store.vectors_epoch())`."""
        return self.data_dir / "vectors.faiss"

    def vectors_file(self, epoch: int) -> Path:
        """The vectors file of an epoch: each compaction writes the next one beside it."""
        return self.vectors_path if epoch == 0 else self.data_dir / f"vectors.{epoch}.faiss"

    @property
    def ann_path(self) -> Path:
        """The approximate index beside the vectors (derived data: rebuilt, never backed up)."""
        return self.data_dir / "vectors.ann"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def backup_dir(self) -> Path:
        return Path(self.backup.dir).expanduser() if self.backup.dir else self.data_dir / "backups"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "supervisor.lock"

    @property
    def run_dir(self) -> Path:
        if self.network.run_dir:
            return Path(self.network.run_dir)
        local = self.data_dir / "run"
        if len(str(local / "heartbeat.sock")) <= MAX_IPC_PATH:  # the longest socket name
            return local
        # Deep temporary directories overflow sun_path; a short, stable per-data-dir path
        # keeps every process agreeing on the endpoints.
        import hashlib  # here, not at import: libcrypto is 3.6 MB of every process asleep

        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:16]
        return Path("/tmp") / f"roxi-{os.getuid()}-{digest}"

    def endpoint(self, name: str) -> str:
        if name == "query" and self.network.query_endpoint:
            return self.network.query_endpoint
        if name == "documents" and self.network.documents_endpoint:
            return self.network.documents_endpoint
        return f"ipc://{self.run_dir / (name + '.sock')}"

    def to_argv(self) -> list[str]:
        argv = ["--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        return argv
