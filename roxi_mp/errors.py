"""Typed errors and the exit codes they map to.

The exit codes are a contract shared by the `roxi` CLI, the supervisor and every role
process: scripts branch on them, and the supervisor stops respawning a child that exits
with BOOT_ERROR (it can never start until an operator fixes something). Each error class
carries its code, so a CLI command only has to catch `RoxiError` and print one line.

| code | name               | meaning                                                        |
|------|--------------------|----------------------------------------------------------------|
| 0    | OK                 | success                                                        |
| 1    | TARGET_NOT_REACHED | a progress target (`--target PCT`) is not reached yet          |
| 2    | USAGE              | wrong command-line usage (click's own code)                    |
| 3    | NOT_RUNNING        | the system is not running (no supervisor answers)              |
| 4    | ALREADY_RUNNING    | another supervisor holds the data directory                    |
| 5    | BAD_INPUT          | bad input: missing path, empty query, k out of range, ...      |
| 6    | CONFIG             | invalid configuration (unknown key, wrong type, bad value)     |
| 7    | STORE              | the store refuses: model mismatch, corrupt file, bad schema    |
| 8    | TIMEOUT            | a request timed out                                            |
| 9    | SERVER             | a server answered with an error reply                          |
| 78   | BOOT_ERROR         | a role process could not start (config, model); not respawned  |

The error codes (`E_*`, below) are the other contract: the `code` of each error class and
of every error reply on a ZeroMQ socket. They are one table, here rather than in
roxi_mp.protocol (which re-exports them), because every error class needs its code and
this module must stay importable without zmq, numpy or msgpack. Other modules use the
names, never the strings.
"""

from __future__ import annotations

OK = 0
TARGET_NOT_REACHED = 1
USAGE = 2
NOT_RUNNING = 3
ALREADY_RUNNING = 4
BAD_INPUT = 5
CONFIG = 6
STORE = 7
TIMEOUT = 8
SERVER = 9
BOOT_ERROR = 78  # sysexits EX_CONFIG, as gunicorn's WORKER_BOOT_ERROR
#: a role's exit in deep sleep (issue 22): nothing to do, so nothing kept in memory; the
#: supervisor starts it again when work appears (not a failure, not a stop)
SUSPENDED = 85

# Error codes: the "code" field of an error reply, and `RoxiError.code`.
E_ERROR = "error"  #: a RoxiError with no more precise code
E_BAD_REQUEST = "bad_request"  #: malformed or invalid input (BadInput, most ProtocolErrors)
E_BAD_VERSION = "bad_version"  #: the message's "v" is not protocol.VERSION
E_UNKNOWN_OP = "unknown_op"  #: no such op on this socket
E_TOO_LARGE = "too_large"  #: a message, text or row count over its limit
E_INTERNAL = "internal"  #: a bug in the server; the server logs the traceback
E_CONFIG = "config"  #: ConfigError
E_STORE = "store"  #: StoreError (and BackupError)
E_MODEL_MISMATCH = "model_mismatch"  #: the store was built with another model
E_NOT_RUNNING = "not_running"  #: NotRunning (client side: nothing answers)
E_ALREADY_RUNNING = "already_running"  #: AlreadyRunning (the data directory is taken)
E_TIMEOUT = "timeout"  #: Timeout (client side: no reply in time)
E_TARGET_UNREACHABLE = "target_unreachable"  #: TargetUnreachable
E_EMBED_FAILED = "embed_failed"  #: EmbedError (roxi_mp.embedders.base): a backend failed
E_EMBED_TIMEOUT = "embed_timeout"  #: EmbedTimeout: a query's text was not embedded within its deadline
E_UPSTREAM_UNAVAILABLE = "upstream_unavailable"  #: UpstreamUnavailable: the embedding service is down or busy
E_NOT_FOUND = "not_found"  #: NotFound: no document with that key
E_BUSY = "busy"  #: Busy: the operation is already running (a compaction), or refused for now

#: every code above, for checks and the protocol's documentation
CODES = (E_ERROR, E_BAD_REQUEST, E_BAD_VERSION, E_UNKNOWN_OP, E_TOO_LARGE, E_INTERNAL, E_CONFIG,
         E_STORE, E_MODEL_MISMATCH, E_NOT_RUNNING, E_ALREADY_RUNNING, E_TIMEOUT, E_TARGET_UNREACHABLE,
         E_EMBED_FAILED, E_EMBED_TIMEOUT, E_UPSTREAM_UNAVAILABLE, E_NOT_FOUND, E_BUSY)


class RoxiError(Exception):
    """Base of every error roxi-mp reports to a person; `exit_code` is the CLI's exit."""

    exit_code = SERVER
    #: short machine-readable code used in ZeroMQ error replies
    code = E_ERROR


class BadInput(RoxiError):
    exit_code = BAD_INPUT
    code = E_BAD_REQUEST


class ConfigError(RoxiError):
    exit_code = CONFIG
    code = E_CONFIG


class StoreError(RoxiError):
    exit_code = STORE
    code = E_STORE


class ModelMismatch(StoreError):
    code = E_MODEL_MISMATCH


class NotRunning(RoxiError):
    exit_code = NOT_RUNNING
    code = E_NOT_RUNNING


class AlreadyRunning(RoxiError):
    exit_code = ALREADY_RUNNING
    code = E_ALREADY_RUNNING


class Timeout(RoxiError):
    exit_code = TIMEOUT
    code = E_TIMEOUT


class TargetUnreachable(RoxiError):
    """A progress target that no amount of waiting reaches: nothing left is pending."""

    exit_code = SERVER
    code = E_TARGET_UNREACHABLE


class EmbedTimeout(RoxiError):
    """A query's text was not embedded within `query.embed_timeout_seconds` (a slow service)."""

    exit_code = TIMEOUT
    code = E_EMBED_TIMEOUT


class UpstreamUnavailable(RoxiError):
    """The embedding service cannot take a query's text now: it failed, refuses, backs off,
    or too many queries already wait for it. Trying again later may succeed."""

    exit_code = SERVER
    code = E_UPSTREAM_UNAVAILABLE


class NotFound(BadInput):
    """No document with that key (a delete or get of an unknown key)."""

    code = E_NOT_FOUND


class Busy(RoxiError):
    """Refused for now: the operation already runs (a second compaction), or cannot run."""

    exit_code = SERVER
    code = E_BUSY


class ServerError(RoxiError):
    """An error reply from a server; `code` is the reply's own code."""

    exit_code = SERVER
    #: reply codes with an exit code of their own: the request itself was bad, the store
    #: refuses it, or the server's own deadline passed; any other code exits SERVER
    EXIT_BY_CODE = {E_BAD_REQUEST: BAD_INPUT, E_TOO_LARGE: BAD_INPUT, E_MODEL_MISMATCH: STORE,
                    E_EMBED_TIMEOUT: TIMEOUT, E_NOT_FOUND: BAD_INPUT}

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = self.EXIT_BY_CODE.get(code, SERVER)
