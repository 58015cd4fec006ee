"""stop: stop one role by hand (`role`), or everything in order and then the supervisor.

A role stopped by hand stays stopped (no automatic restart) until `restart`. A full stop
answers at once without waiting for the children: the caller watches the data
directory's lock, which the supervisor releases as its very last act.
"""

import os

NAME = "stop"
HELP = "stop ROLE by hand, or every role in order and then the supervisor"


def execute(arbiter, msg: dict) -> dict:
    role = msg.get("role")
    if role:
        return {"stopped": arbiter.stop_role(str(role))}
    arbiter.begin_shutdown("stop command")
    return {"stopping": True, "pid": os.getpid()}  # the status pid: no need to count the store
