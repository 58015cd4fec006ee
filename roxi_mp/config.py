"""Configuration: typed settings read from conf/roxi.toml, overridden by ROXI_* variables.

Every setting has a default here and a documented line in conf/roxi.toml. Loading is strict
because a typo in a config file that is silently ignored costs an operator hours: an unknown
section or key, a wrong type, or an out-of-range value raises `ConfigError` naming the key.
Environment overrides are `ROXI_<SECTION>_<KEY>` (for example `ROXI_EMBEDDER_BACKEND=hashing`),
parsed by the target type, plus `ROXI_DATA_DIR` and `ROXI_CONFIG`. The supervisor and every
role load the same file with the same environment, so they agree on every value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: environment variables that are not section keys
ENV_DATA_DIR = "ROXI_DATA_DIR"
ENV_CONFIG = "ROXI_CONFIG"
#: role kinds, as used in [restart.<role>], `roxi stop ROLE` and status
ROLE_KINDS = ("embedder", "indexer", "query")
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


@dataclass
class HashingSettings:
    dim: int = 1024


@dataclass
class MiniLMSettings:
    max_tokens: int = 256
    batch_tokens: int = 256
    threads: int = 1


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


@dataclass
class SupervisorSettings:
    heartbeat_seconds: float = 1.0
    liveness_seconds: float = 5.0
    grace_seconds: float = 10.0
    start_timeout_seconds: float = 30.0
    ingest_sample_on_empty: bool = True
    sleep_poll_seconds: float = 1.0
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
    #: empty means <data_dir>/keys (CURVE keys for a tcp:// query endpoint)
    keys_dir: str = ""


SECTIONS: dict[str, type] = {
    "store": StoreSettings,
    "embedder": EmbedderSettings,
    "hashing": HashingSettings,
    "minilm": MiniLMSettings,
    "http": HttpSettings,
    "indexer": IndexerSettings,
    "query": QuerySettings,
    "supervisor": SupervisorSettings,
    "restart": RestartSettings,
    "backup": BackupSettings,
    "limits": LimitsSettings,
    "network": NetworkSettings,
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
    query: QuerySettings = field(default_factory=QuerySettings)
    supervisor: SupervisorSettings = field(default_factory=SupervisorSettings)
    restart: RestartSettings = field(default_factory=RestartSettings)
    #: [restart.<role>] values, applied over `restart` by restart_for()
    restart_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    backup: BackupSettings = field(default_factory=BackupSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)

    def restart_for(self, kind: str) -> RestartSettings:
        return dataclasses.replace(self.restart, **self.restart_overrides.get(kind, {}))

    # --- paths derived from data_dir ------------------------------------------------
    @property
    def db_path(self) -> Path:
        return self.data_dir / "roxi.sqlite3"

    @property
    def vectors_path(self) -> Path:
        return self.data_dir / "vectors.faiss"

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
        digest = hashlib.sha1(str(self.data_dir).encode()).hexdigest()[:16]
        return Path("/tmp") / f"roxi-{os.getuid()}-{digest}"

    def endpoint(self, name: str) -> str:
        if name == "query" and self.network.query_endpoint:
            return self.network.query_endpoint
        return f"ipc://{self.run_dir / (name + '.sock')}"

    def to_argv(self) -> list[str]:
        argv = ["--data-dir", str(self.data_dir)]
        if self.config_path is not None:
            argv += ["--config", str(self.config_path)]
        return argv


def default_config_path() -> Path | None:
    """conf/roxi.toml of a source checkout, when there is one."""
    candidate = Path(__file__).resolve().parent.parent / "conf" / "roxi.toml"
    return candidate if candidate.is_file() else None


def load(
    config_path: Path | str | None = None,
    *,
    data_dir: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    use_default_file: bool = True,
) -> Config:
    """Load settings: defaults < TOML file < ROXI_* environment < explicit arguments."""
    env = os.environ if env is None else env
    if config_path is None and env.get(ENV_CONFIG):
        config_path = env[ENV_CONFIG]
    if config_path is None and use_default_file:
        config_path = default_config_path()
    raw: dict[str, Any] = {}
    if config_path is not None:
        config_path = Path(config_path)
        try:
            with open(config_path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path}: invalid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{config_path}: cannot read: {exc.strerror or exc}") from None
    file_data_dir = raw.pop("data_dir", None)
    if data_dir is None:
        data_dir = env.get(ENV_DATA_DIR) or file_data_dir or "data"
    cfg = Config(data_dir=Path(data_dir).expanduser().resolve(),
                 config_path=config_path.resolve() if config_path else None)
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"unknown config section [{section}] (known: {', '.join(SECTIONS)})")
        if not isinstance(values, dict):
            raise ConfigError(f"config key '{section}' must be a [section] table")
        for key, value in values.items():
            if section == "restart" and key in ROLE_KINDS and isinstance(value, dict):
                for sub, subvalue in value.items():
                    _set_override(cfg, key, sub, subvalue, source="config")
                continue
            _set(cfg, section, key, value, source="config")
    for name, text in env.items():
        if not name.startswith("ROXI_") or name in (ENV_DATA_DIR, ENV_CONFIG):
            continue
        rest = name[len("ROXI_"):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue  # not ours to judge: other tools may use ROXI_ names
        key = rest[len(section) + 1:]
        kind = next((k for k in ROLE_KINDS if key.startswith(k + "_")), None)
        if section == "restart" and kind is not None:
            _set_override(cfg, kind, key[len(kind) + 1:], text, source=f"environment {name}")
        else:
            _set(cfg, section, key, text, source=f"environment {name}")
    validate(cfg)
    return cfg


def _set(cfg: Config, section: str, key: str, value: Any, *, source: str) -> None:
    settings = getattr(cfg, section)
    fields = {f.name: f for f in dataclasses.fields(settings)}
    if key not in fields:
        raise ConfigError(f"unknown config key '{section}.{key}' ({source}); "
                          f"known: {', '.join(fields)}")
    target = type(getattr(settings, key))
    setattr(settings, key, _coerce(f"{section}.{key}", value, target, source=source))


def _set_override(cfg: Config, kind: str, key: str, value: Any, *, source: str) -> None:
    """A [restart.<kind>] value: checked like a [restart] key, stored apart."""
    fields = {f.name: f for f in dataclasses.fields(RestartSettings)}
    if key not in fields:
        raise ConfigError(f"unknown config key 'restart.{kind}.{key}' ({source}); known: {', '.join(fields)}")
    target = type(getattr(cfg.restart, key))
    cfg.restart_overrides.setdefault(kind, {})[key] = _coerce(f"restart.{kind}.{key}", value, target,
                                                              source=source)


def _coerce(name: str, value: Any, target: type, *, source: str) -> Any:
    """Check a TOML value's type, or parse an environment variable's text by the target type."""
    if source.startswith("environment"):
        text = value.strip()
        try:
            if target is bool:
                lowered = text.lower()
                if lowered in ("1", "true", "yes", "on"):
                    return True
                if lowered in ("0", "false", "no", "off"):
                    return False
                raise ValueError(text)
            return target(text)
        except ValueError:
            raise ConfigError(f"config key '{name}' ({source}) must be {target.__name__}, "
                              f"got {value!r}") from None
    if target is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not target:
        raise ConfigError(f"config key '{name}' must be {target.__name__}, "
                          f"got {type(value).__name__} {value!r}")
    return value


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"config key '{name}' must be {rule}, got {value!r}")


def validate(cfg: Config) -> None:
    s, e, i, q, sv, lim = cfg.store, cfg.embedder, cfg.indexer, cfg.query, cfg.supervisor, cfg.limits
    _require(s.chunk_words >= 8, "store.chunk_words", ">= 8", s.chunk_words)
    _require(0 <= s.chunk_overlap < s.chunk_words // 2, "store.chunk_overlap",
             "in [0, chunk_words/2)", s.chunk_overlap)
    _require(s.max_document_bytes >= 1024, "store.max_document_bytes", ">= 1024", s.max_document_bytes)
    _require(s.busy_timeout_ms >= 100, "store.busy_timeout_ms", ">= 100", s.busy_timeout_ms)
    _require(e.backend in BACKENDS, "embedder.backend", f"one of {', '.join(BACKENDS)}", e.backend)
    _require(cfg.hashing.dim >= 64, "hashing.dim", ">= 64", cfg.hashing.dim)
    m = cfg.minilm
    _require(8 <= m.max_tokens <= 512, "minilm.max_tokens", "in [8, 512]", m.max_tokens)
    _require(m.batch_tokens >= m.max_tokens, "minilm.batch_tokens", ">= max_tokens", m.batch_tokens)
    _require(1 <= m.threads <= 64, "minilm.threads", "in [1, 64]", m.threads)
    if e.backend == "http":  # only checked when used: the defaults describe no service
        h = cfg.http
        _require(h.base_url.startswith(("http://", "https://")), "http.base_url",
                 "an http:// or https:// URL", h.base_url)
        _require(bool(h.model), "http.model", "set", h.model)
        _require(h.dim >= 1, "http.dim", ">= 1 (the dimension the service returns)", h.dim)
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
    _require(e.pause_seconds >= 0, "embedder.pause_seconds", ">= 0", e.pause_seconds)
    _require(e.max_attempts >= 1, "embedder.max_attempts", ">= 1", e.max_attempts)
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
    _require(sv.sleep_poll_seconds > 0, "supervisor.sleep_poll_seconds", "> 0", sv.sleep_poll_seconds)
    _require(sv.heartbeat_seconds > 0, "supervisor.heartbeat_seconds", "> 0", sv.heartbeat_seconds)
    _require(sv.liveness_seconds > sv.heartbeat_seconds, "supervisor.liveness_seconds",
             "> heartbeat_seconds", sv.liveness_seconds)
    _require(sv.grace_seconds > 0, "supervisor.grace_seconds", "> 0", sv.grace_seconds)
    _require(sv.start_timeout_seconds > 0, "supervisor.start_timeout_seconds", "> 0",
             sv.start_timeout_seconds)
    _require(sv.log_max_bytes >= 4096, "supervisor.log_max_bytes", ">= 4096", sv.log_max_bytes)
    _require(0 <= sv.log_backups <= 100, "supervisor.log_backups", "in [0, 100]", sv.log_backups)
    for kind in ("", *ROLE_KINDS):
        r = cfg.restart_for(kind) if kind else cfg.restart
        where = f"restart.{kind}." if kind else "restart."
        _require(0 < r.backoff_initial_seconds <= r.backoff_max_seconds, where + "backoff_initial_seconds",
                 "in (0, backoff_max_seconds]", r.backoff_initial_seconds)
        _require(r.stable_seconds > 0, where + "stable_seconds", "> 0", r.stable_seconds)
        _require(r.flap_count >= 1, where + "flap_count", ">= 1", r.flap_count)
        _require(r.flap_window_seconds > 0, where + "flap_window_seconds", "> 0", r.flap_window_seconds)
    b = cfg.backup
    _require(b.keep >= 1, "backup.keep", ">= 1", b.keep)
    _require(b.interval_seconds >= 0, "backup.interval_seconds", ">= 0 (0: no scheduled backups)",
             b.interval_seconds)
    _require(b.check_seconds > 0, "backup.check_seconds", "> 0", b.check_seconds)
    _require(lim.max_message_bytes >= 4096, "limits.max_message_bytes", ">= 4096", lim.max_message_bytes)
    _require(lim.socket_hwm >= 1, "limits.socket_hwm", ">= 1", lim.socket_hwm)
    _require(lim.request_timeout_seconds > 0, "limits.request_timeout_seconds", "> 0",
             lim.request_timeout_seconds)
    ep = cfg.network.query_endpoint
    _require(ep == "" or ep.startswith("ipc://") or re.fullmatch(r"tcp://[^:/\s]+:\d{1,5}", ep) is not None,
             "network.query_endpoint", "empty, ipc://PATH or tcp://HOST:PORT (tcp needs `roxi keys generate`)", ep)
    for name in ("query", "heartbeat", "control", "vectors", "events"):
        path = cfg.endpoint(name)[len("ipc://"):]
        _require(len(path) <= MAX_IPC_PATH, "network.run_dir",
                 f"short enough for ipc socket paths (<= {MAX_IPC_PATH} bytes)", path)
