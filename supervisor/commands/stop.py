"""stop: begin the ordered shutdown (embedders, indexer, query server) and answer at once.

The reply does not wait for the children: the caller watches the data directory's lock,
which the supervisor releases as its very last act.
"""

NAME = "stop"
HELP = "stop every role in order, then the supervisor"


def execute(arbiter, msg: dict) -> dict:
    arbiter.begin_shutdown("stop command")
    return {"stopping": True, "pid": arbiter.status()["supervisor"]["pid"]}
