"""ping: is the supervisor alive and answering? Touches nothing."""

NAME = "ping"
HELP = "answer pong"


def execute(arbiter, msg: dict) -> dict:
    return {"pong": True}
