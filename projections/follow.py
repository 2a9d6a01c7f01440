"""Keep read models live: catch up, then wait for the log to grow, forever.

Wake-ups come from the storage engine (PostgreSQL LISTEN/NOTIFY, SQLite polling);
the catch-up itself is always a read of the log from the view's tracked position,
so a lost notification only delays a view, it never corrupts it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from projections.base import ReadEntries, View, ViewDatabase, catch_up, prepare

log = logging.getLogger(__name__)


class Follower:
    def __init__(
        self,
        db: ViewDatabase,
        views: Sequence[View],
        read: ReadEntries,
        wait_for_append: Callable[[float], None],
        *,
        poll_s: float = 1.0,
    ) -> None:
        self.db = db
        self.views = list(views)
        self.read = read
        self.wait_for_append = wait_for_append
        self.poll_s = poll_s
        self.positions: dict[str, int] = {}
        self.caught_up = threading.Condition()

    def step(self) -> None:
        for view in self.views:
            self.positions[view.name] = catch_up(self.db, view, self.read)
        with self.caught_up:
            self.caught_up.notify_all()

    def run(self, stop: threading.Event) -> None:
        for view in self.views:
            prepare(self.db, view, self.read)
        while not stop.is_set():
            try:
                self.step()
            except Exception:  # keep following; the next step retries from the tracked position
                log.exception("projection step failed; retrying")
                stop.wait(self.poll_s)
                continue
            self.wait_for_append(self.poll_s)

    def wait_until(self, position: int, timeout: float) -> bool:
        """Block until every view has applied ``position`` (read-your-writes)."""
        with self.caught_up:
            return self.caught_up.wait_for(
                lambda: all(self.positions.get(v.name, 0) >= position for v in self.views), timeout
            )
