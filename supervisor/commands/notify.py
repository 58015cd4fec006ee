"""notify: new chunks are pending (sent by `roxi ingest`); sleeping embedders look at once."""

NAME = "notify"
HELP = "tell the embedders that new work is pending"


def execute(arbiter, msg: dict) -> dict:
    arbiter.publish("embedder", "work")
    return {"notified": True}
