"""Which login each Gradio session belongs to: a session's state is its login's alone.

Gradio keeps per-session state (the UI's history, what the page shows) under a
`session_hash` the browser makes up and sends with every event, and it trusts
whoever sends it: knowing a session hash was enough to read that session's history
and to add to it. Here a session is bound to the first login (namespace) that
uses it, and requests of any other are refused.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any

# GET routes that name the session in their path: `heartbeat/<hash>`, `stream/<hash>/...`.
IN_PATH = ("heartbeat/", "stream/")


class SessionOwners:
    """The login each Gradio session hash was first used by; bounded, oldest first out.

    Thread-safety: used from the event loop only. Memory: at most `capacity`
    entries of a hash and a name (a few hundred bytes each).

    A session whose binding was dropped (more than `capacity` sessions were used
    since) while Gradio still holds state for it is refused to everyone: its state
    cannot be proven anyone's, and the page's next load makes a new session.
    Without a login (`namespace` None) nothing is bound: Gradio refuses such
    requests itself where a login is needed, and a bound session is refused to them.
    """

    def __init__(self, blocks: Any, capacity: int) -> None:
        self.blocks = blocks
        self.capacity = capacity
        self._owners: OrderedDict[str, str] = OrderedDict()

    def admits(self, session: str, namespace: str | None) -> bool:
        """Whether `namespace` may use `session`; binds an unknown session to it."""
        owner = self._owners.get(session)
        if owner is not None:
            self._owners.move_to_end(session)
            return owner == namespace
        if self._gradio_holds(session):
            return False
        if namespace is not None:
            self._owners[session] = namespace
            if len(self._owners) > self.capacity:
                self._owners.popitem(last=False)
        return True

    def _gradio_holds(self, session: str) -> bool:
        queue = self.blocks._queue
        return (
            session in self.blocks.state_holder.session_data
            or session in queue.pending_messages_per_session
            or session in queue.pending_event_ids_session
        )


def session_of(method: str, route: str, query: dict[str, list[str]], body: bytes | None) -> str | None:
    """The session hash a Gradio request names (`route` is its path after
    `/gradio_api/`): in the path, the query, or a JSON body; None if it names none."""
    for prefix in IN_PATH:
        if method == "GET" and route.startswith(prefix):
            return route[len(prefix) :].split("/", 1)[0] or None
    if query.get("session_hash"):
        return query["session_hash"][-1]
    if body:
        try:
            fields = json.loads(body)
        except ValueError:
            return None
        session = fields.get("session_hash") if isinstance(fields, dict) else None
        return session if isinstance(session, str) else None
    return None
