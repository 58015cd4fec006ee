"""Unit tests of the [extract] config section (issue 18): defaults, ranges, environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from roxi_mp.config import ExtractSettings, load
from roxi_mp.errors import ConfigError

MIB = 1 << 20


def load_text(tmp_path: Path, text: str, env: dict | None = None):
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    return load(conf, data_dir=tmp_path / "data", env=env or {})


def test_defaults(tmp_path: Path) -> None:
    x = load(None, data_dir=tmp_path, env={}, use_default_file=False).extract
    assert x == ExtractSettings(timeout_seconds=30.0, memory_mb=1024, max_pages=2000,
                                max_file_bytes=256 * MIB, max_unzipped_bytes=256 * MIB)


@pytest.mark.parametrize("text, named", [
    ("timeout_seconds = 0", "extract.timeout_seconds"),
    ("timeout_seconds = -1.0", "extract.timeout_seconds"),
    ("timeout_seconds = 3601", "extract.timeout_seconds"),
    ("memory_mb = 255", "extract.memory_mb"),
    ("memory_mb = 0", "extract.memory_mb"),
    ("max_pages = 0", "extract.max_pages"),
    ("max_file_bytes = 1023", "extract.max_file_bytes"),
    # a file the child could not even hold
    ("memory_mb = 512\nmax_file_bytes = 536870912", "extract.max_file_bytes"),
    ("max_unzipped_bytes = 100", "extract.max_unzipped_bytes"),
    ("memory_mb = 1024.0", "extract.memory_mb"),
    ('timeout_seconds = "30"', "extract.timeout_seconds"),
    ("max_page = 10", "extract.max_page"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, text: str, named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, f"[extract]\n{text}\n")
    assert named in str(info.value)


def test_values_just_inside_the_ranges_are_accepted(tmp_path: Path) -> None:
    x = load_text(tmp_path, "[extract]\ntimeout_seconds = 0.1\nmemory_mb = 256\nmax_pages = 1\n"
                            "max_file_bytes = 1024\nmax_unzipped_bytes = 1024\n").extract
    assert (x.timeout_seconds, x.memory_mb, x.max_pages, x.max_file_bytes, x.max_unzipped_bytes) == \
        (0.1, 256, 1, 1024, 1024)


def test_environment_overrides(tmp_path: Path) -> None:
    x = load_text(tmp_path, "", env={"ROXI_EXTRACT_TIMEOUT_SECONDS": "2.5", "ROXI_EXTRACT_MAX_PAGES": "10"}).extract
    assert (x.timeout_seconds, x.max_pages) == (2.5, 10)
    with pytest.raises(ConfigError, match="extract.memory_mb"):
        load_text(tmp_path, "", env={"ROXI_EXTRACT_MEMORY_MB": "lots"})
