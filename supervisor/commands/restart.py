"""restart: restart a role now, clearing `failed`, a manual stop and its backoff."""

from roxi_mp.errors import BadInput

NAME = "restart"
HELP = "restart ROLE (a kind such as 'embedder', or one name such as 'embedder-2')"


def execute(arbiter, msg: dict) -> dict:
    role = msg.get("role")
    if not isinstance(role, str) or not role:
        raise BadInput("restart needs a role")
    return {"restarted": arbiter.restart_role(role)}
