"""notify: tell the embedders something changed: new work (`roxi ingest`; the indexer
hears of it too, for chunks whose vectors it copies), or that processing was paused or
resumed (the flag itself lives in the store)."""

from roxi_mp.errors import BadInput

NAME = "notify"
HELP = "tell the embedders that new work is pending, or that processing was paused/resumed"

#: what a notification may say
EVENTS = ("work", "pause", "resume")


def execute(arbiter, msg: dict) -> dict:
    event = msg.get("event", "work")
    if event not in EVENTS:
        raise BadInput(f"notify takes one of {', '.join(EVENTS)}, not {event!r}")
    if event == "work":
        arbiter.publish_work()  # the indexer too: chunks it copies rather than an embedder buys
    elif event == "resume":
        arbiter.resume_processing()  # suspended embedders start again if chunks are pending
    else:
        arbiter.publish("embedder", event)
    return {"notified": event}
