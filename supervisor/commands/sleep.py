"""sleep: ask roles (all, or one kind or name) to enter deep sleep now."""

NAME = "sleep"
HELP = "deep sleep now: the query server unmaps the vectors, embedders unload their model"


def execute(arbiter, msg: dict) -> dict:
    role = msg.get("role")
    return {"asked": arbiter.sleep_roles(str(role) if role else None, wake=False)}
