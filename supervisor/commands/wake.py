"""wake: prewarm roles (all, or one kind or name): map the vectors, load the model."""

NAME = "wake"
HELP = "wake now (prewarm): the query server maps the vectors, embedders load their model"


def execute(arbiter, msg: dict) -> dict:
    role = msg.get("role")
    return {"asked": arbiter.sleep_roles(str(role) if role else None, wake=True)}
