"""status: every role's state and resources, and the store's counts. Wakes nothing."""

NAME = "status"
HELP = "roles (state, pid, uptime, restarts, RSS, CPU, heartbeat age) and store counts"


def execute(arbiter, msg: dict) -> dict:
    return arbiter.status()
