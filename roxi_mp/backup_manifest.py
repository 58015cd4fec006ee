"""The manifest of a backup (`manifest.json`): what roxi_mp.backup writes and verify trusts.

Parsed strictly: any field missing, unknown or of the wrong type is a BackupError naming the
file, and file names must be plain names (restore joins them to directories).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path

from .errors import StoreError

#: version of the backup layout and manifest; verify refuses any other
FORMAT_VERSION = 1
#: what may start a backup
KINDS = ("manual", "scheduled", "milestone")


class BackupError(StoreError):
    """A backup cannot be made or trusted; the message names the offending file."""


@dataclass(frozen=True)
class Manifest:
    format_version: int
    created: str
    kind: str
    model_id: str | None
    dim: int | None
    rows: int
    chunks: int
    indexed: int
    documents: int
    files: dict[str, dict]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, *, path: Path) -> "Manifest":
        """Parse strictly: anything unexpected is a BackupError naming `path`."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise BackupError(f"{path}: manifest is not valid JSON ({exc})") from None
        version = raw.get("format_version") if isinstance(raw, dict) else None
        if type(version) is not int or version != FORMAT_VERSION:
            raise BackupError(f"{path}: unsupported backup format_version {version!r} "
                              f"(this roxi-mp reads {FORMAT_VERSION})")
        types = {f.name: (int,) for f in fields(cls)} | {"created": (str,), "kind": (str,), "files": (dict,),
                                                         "model_id": (str, type(None)), "dim": (int, type(None))}
        if set(raw) != set(types):
            raise BackupError(f"{path}: manifest fields differ from the format: missing "
                              f"{sorted(set(types) - set(raw))}, unknown {sorted(set(raw) - set(types))}")
        for name, allowed in sorted(types.items()):
            if type(raw[name]) not in allowed or (type(raw[name]) is int and raw[name] < 0):
                raise BackupError(f"{path}: manifest field {name!r} has a wrong value {raw[name]!r}")
        if raw["kind"] not in KINDS:
            raise BackupError(f"{path}: manifest kind {raw['kind']!r} is not one of {', '.join(KINDS)}")
        if (raw["model_id"] is None) != (raw["dim"] is None) or raw["dim"] == 0:
            raise BackupError(f"{path}: manifest model_id and dim must both be set (dim > 0) or both null")
        try:
            datetime.fromisoformat(raw["created"])
        except ValueError:
            raise BackupError(f"{path}: manifest created {raw['created']!r} is not ISO 8601") from None
        for name, entry in raw["files"].items():
            # Restore joins these names to directories: only plain names may pass.
            if not name or any(bad in name for bad in ("/", "\\", "\0", "..")):
                raise BackupError(f"{path}: manifest names a file {name!r} that is not a plain file name")
            if (not isinstance(entry, dict) or set(entry) != {"bytes", "sha256"}
                    or type(entry["bytes"]) is not int or entry["bytes"] < 0
                    or not isinstance(entry["sha256"], str) or len(entry["sha256"]) != 64
                    or set(entry["sha256"]) - set("0123456789abcdef")):
                raise BackupError(f"{path}: manifest entry for {name!r} is malformed: {entry!r}")
        return cls(**raw)
