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


class RoxiError(Exception):
    """Base of every error roxi-mp reports to a person; `exit_code` is the CLI's exit."""

    exit_code = SERVER
    #: short machine-readable code used in ZeroMQ error replies
    code = "error"


class BadInput(RoxiError):
    exit_code = BAD_INPUT
    code = "bad_request"


class ConfigError(RoxiError):
    exit_code = CONFIG
    code = "config"


class StoreError(RoxiError):
    exit_code = STORE
    code = "store"


class ModelMismatch(StoreError):
    code = "model_mismatch"


class NotRunning(RoxiError):
    exit_code = NOT_RUNNING
    code = "not_running"


class AlreadyRunning(RoxiError):
    exit_code = ALREADY_RUNNING
    code = "already_running"


class Timeout(RoxiError):
    exit_code = TIMEOUT
    code = "timeout"


class TargetUnreachable(RoxiError):
    """A progress target that no amount of waiting reaches: nothing left is pending."""

    exit_code = SERVER
    code = "target_unreachable"


class ServerError(RoxiError):
    """An error reply from a server; `code` is the reply's own code."""

    exit_code = SERVER
    #: reply codes that mean the request itself was bad, and the exit code they map to
    EXIT_BY_CODE = {"bad_request": BAD_INPUT, "too_large": BAD_INPUT, "model_mismatch": STORE}

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.exit_code = self.EXIT_BY_CODE.get(code, SERVER)
