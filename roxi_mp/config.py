"""Configuration: typed settings read from conf/roxi.toml, overridden by ROXI_* variables.

Every setting has a default (in roxi_mp.config_sections) and a documented line in
conf/roxi.toml. Loading is strict because a typo in a config file that is silently ignored
costs an operator hours: an unknown section or key, a wrong type, or an out-of-range value
(roxi_mp.config_checks) raises `ConfigError` naming the key. Environment overrides are
`ROXI_<SECTION>_<KEY>` (for example `ROXI_EMBEDDER_BACKEND=hashing`), parsed by the target
type, plus `ROXI_DATA_DIR` and `ROXI_CONFIG`. The supervisor and every role load the same
file with the same environment, so they agree on every value. This module is the one to
import: it re-exports the settings classes and constants of the modules it is split into.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Mapping

from .config_checks import validate
from .config_sections import (
    BACKENDS,
    INDEX_KINDS,
    MAX_IPC_PATH,
    ROLE_KINDS,
    SECTIONS,
    BackupSettings,
    Config,
    EmbedderSettings,
    ExtractSettings,
    HashingSettings,
    HttpSettings,
    IndexerSettings,
    LimitsSettings,
    MiniLMSettings,
    NetworkSettings,
    QuerySettings,
    RestartSettings,
    StoreSettings,
    SupervisorSettings,
)
from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

#: the names other modules import from here, wherever they are defined
__all__ = [
    "BACKENDS", "INDEX_KINDS", "MAX_IPC_PATH", "ROLE_KINDS", "SECTIONS", "ENV_CONFIG", "ENV_DATA_DIR",
    "BackupSettings", "Config", "EmbedderSettings", "ExtractSettings", "HashingSettings", "HttpSettings",
    "IndexerSettings", "LimitsSettings", "MiniLMSettings", "NetworkSettings", "QuerySettings",
    "RestartSettings", "StoreSettings", "SupervisorSettings",
    "default_config_path", "load", "validate",
]

#: environment variables that are not section keys
ENV_DATA_DIR = "ROXI_DATA_DIR"
ENV_CONFIG = "ROXI_CONFIG"


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
        raw = _read_toml(config_path)
    file_data_dir = raw.pop("data_dir", None)
    if data_dir is None:
        data_dir = env.get(ENV_DATA_DIR) or file_data_dir or "data"
    cfg = Config(data_dir=Path(data_dir).expanduser().resolve(),
                 config_path=config_path.resolve() if config_path else None)
    _apply_file(cfg, raw)
    _apply_env(cfg, env)
    validate(cfg)
    return cfg


def _read_toml(config_path: Path) -> dict[str, Any]:
    try:
        with open(config_path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {config_path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path}: invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc.strerror or exc}") from None


def _apply_file(cfg: Config, raw: dict[str, Any]) -> None:
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


def _apply_env(cfg: Config, env: Mapping[str, str]) -> None:
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
