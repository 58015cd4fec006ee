"""Control commands of the supervisor, one module each (circus's layout).

A command module defines NAME, a one-line HELP, and `execute(arbiter, msg) -> dict`; the
dict becomes the fields of an ok() reply, and a RoxiError raised inside becomes an error
reply with its code. The CLI and the control socket call the same library functions, so no
command holds logic that the library does not.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from roxi_mp.errors import E_UNKNOWN_OP, RoxiError

from . import compact, notify, ping, restart, sleep, status, stop, wake

if TYPE_CHECKING:
    from ..arbiter import Arbiter

COMMANDS: dict[str, ModuleType] = {m.NAME: m for m in (compact, notify, ping, restart, sleep, status, stop, wake)}


class UnknownCommand(RoxiError):
    code = E_UNKNOWN_OP


def dispatch(arbiter: "Arbiter", msg: dict) -> dict[str, Any]:
    name = msg.get("op")
    command = COMMANDS.get(name) if isinstance(name, str) else None
    if command is None:
        raise UnknownCommand(f"unknown command {name!r} (known: {', '.join(sorted(COMMANDS))})")
    return command.execute(arbiter, msg)
