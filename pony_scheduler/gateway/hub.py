"""The event hub: takes the scheduler's events off the Unix socket and fans them out to
every `GET /api/events` subscriber.

Each event gets an id `<instance>-<sequence>`; a client that reconnects with
`Last-Event-ID` gets what it missed from a bounded history, as long as this gateway
instance still holds it.  A subscriber too slow to keep up is disconnected rather than
allowed to grow memory without bound; it reconnects and catches up the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from pony_scheduler.events import timestamp

log = logging.getLogger("pony_scheduler.gateway")

HISTORY = 1000  # events kept for Last-Event-ID replay
SUBSCRIBER_BACKLOG = 1000  # events queued for one slow client before it is dropped
MAX_LINE = 1 << 20  # one event line; anything longer is not from our scheduler


@dataclass(eq=False)  # identity semantics: subscribers live in a set
class Subscriber:
    limit: int = SUBSCRIBER_BACKLOG
    items: deque[dict[str, Any]] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    closed: bool = False
    overflowed: bool = False

    def push(self, event: dict[str, Any]) -> None:
        if self.closed:
            return
        if len(self.items) >= self.limit:
            self.closed = self.overflowed = True
        else:
            self.items.append(event)
        self.wakeup.set()

    def close(self) -> None:
        self.closed = True
        self.wakeup.set()

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next event; None after `timeout` seconds of silence.  EOFError once closed
        (events queued before a normal close are still delivered)."""
        if not self.items:
            if self.closed:
                raise EOFError
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), timeout)
        if self.overflowed:
            raise EOFError
        if self.items:
            return self.items.popleft()
        if self.closed:
            raise EOFError
        return None


@dataclass
class SchedulerLink:
    """One scheduler process connected to the socket."""

    pid: int | None = None
    hostname: str | None = None
    version: str | None = None
    connected_at: str = field(default_factory=timestamp)
    last_heartbeat: float | None = None  # our monotonic clock: immune to clock skew
    last_heartbeat_at: str | None = None
    last_event_at: str | None = None
    said_goodbye: bool = False

    def describe(self, now: float) -> dict[str, Any]:
        age = None if self.last_heartbeat is None else round(now - self.last_heartbeat, 3)
        return {
            "pid": self.pid,
            "hostname": self.hostname,
            "version": self.version,
            "connectedAt": self.connected_at,
            "lastHeartbeatAt": self.last_heartbeat_at,
            "lastHeartbeatAgeSeconds": age,
            "lastEventAt": self.last_event_at,
        }


class EventHub:
    def __init__(self, history: int = HISTORY) -> None:
        self.instance = secrets.token_hex(4)
        self._sequence = 0
        self._history: deque[dict[str, Any]] = deque(maxlen=history)
        self._subscribers: set[Subscriber] = set()
        self._links: dict[int, SchedulerLink] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self.last_disconnect: dict[str, Any] | None = None
        self.bad_lines = 0
        self.closing = False

    # -- fan-out -------------------------------------------------------------------------
    def publish(
        self, type: str, data: dict[str, Any], when: str | None = None, source: str = "scheduler"
    ) -> dict[str, Any]:
        self._sequence += 1
        event = {
            "id": f"{self.instance}-{self._sequence}",
            "type": type,
            "timestamp": when or timestamp(),
            "source": source,
            "data": data,
        }
        self._history.append(event)
        for subscriber in list(self._subscribers):
            subscriber.push(event)
            if subscriber.overflowed:
                log.warning(
                    "Dropped an event subscriber that fell %d events behind", subscriber.limit
                )
                self._subscribers.discard(subscriber)
        return event

    def subscribe(self, last_event_id: str | None = None) -> Subscriber:
        subscriber = Subscriber()
        for event in self._missed(last_event_id):
            subscriber.items.append(event)
        self._subscribers.add(subscriber)
        return subscriber

    def _missed(self, last_event_id: str | None) -> list[dict[str, Any]]:
        if not last_event_id:
            return []
        instance, _, sequence = last_event_id.strip().rpartition("-")
        if instance != self.instance:
            # The client saw an earlier gateway: everything this one holds is news to it.
            return list(self._history)
        try:
            seen = int(sequence)
        except ValueError:
            return []
        return [event for event in self._history if int(event["id"].rpartition("-")[2]) > seen]

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    # -- the scheduler side ---------------------------------------------------------------
    def scheduler_status(self) -> dict[str, Any]:
        now = time.monotonic()
        links = [link.describe(now) for link in self._links.values()]
        ages = [
            link["lastHeartbeatAgeSeconds"]
            for link in links
            if link["lastHeartbeatAgeSeconds"] is not None
        ]
        return {
            "connected": bool(links),
            "lastHeartbeatAgeSeconds": min(ages, default=None),
            "schedulers": links,
            "lastDisconnect": self.last_disconnect,
        }

    async def handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One scheduler connection: newline-delimited JSON until EOF.  Only a process of
        our own user (or root) may send events (the socket is 0600 besides)."""
        from pony_scheduler.gateway.auth import peer_credentials, trusted_uid

        peer = peer_credentials(writer.transport)
        if peer is not None and not trusted_uid(peer[1]):
            log.warning("Refused events from PID %d (uid %d): not our user", peer[0], peer[1])
            writer.close()
            return
        key = id(writer)
        link = self._links[key] = SchedulerLink()
        self._writers.add(writer)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # longer than MAX_LINE (the reader's limit)
                    log.warning(
                        "Event line longer than %d bytes; closing that connection", MAX_LINE
                    )
                    break
                except ConnectionError:
                    break
                if not line.endswith(b"\n"):
                    break  # EOF, perhaps in the middle of a line the sender will resend
                event = self._parse(line)
                if event is not None:
                    self._receive(link, *event)
        finally:
            self._writers.discard(writer)
            self._links.pop(key, None)
            self._goodbye(link)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _parse(self, line: bytes) -> tuple[str, str | None, dict[str, Any]] | None:
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
                raise ValueError("not an object with a string 'type'")
            data = obj.get("data", {})
            if not isinstance(data, dict):
                raise ValueError("'data' is not an object")
            when = obj.get("timestamp")
        except ValueError as exc:
            self.bad_lines += 1
            if self.bad_lines <= 10 or self.bad_lines % 1000 == 0:  # never flood the log
                log.warning("Ignored a malformed event line (%s): %.80r", exc, line)
            return None
        return obj["type"], str(when) if isinstance(when, str | int | float) else None, data

    def _receive(
        self, link: SchedulerLink, type: str, when: str | None, data: dict[str, Any]
    ) -> None:
        link.last_event_at = timestamp()
        if type == "connect":
            link.pid = data.get("pid") if isinstance(data.get("pid"), int) else None
            link.hostname, link.version = data.get("hostname"), data.get("version")
            log.info("Scheduler connected (PID %s)", link.pid)
            if data.get("dropped"):
                log.warning(
                    "Scheduler dropped %s events while the gateway was unreachable", data["dropped"]
                )
        elif type == "heartbeat":
            link.last_heartbeat, link.last_heartbeat_at = time.monotonic(), link.last_event_at
        elif type == "disconnect":
            link.said_goodbye = True
            log.info("Scheduler disconnected (PID %s)", link.pid)
        self.publish(type, data, when)

    def _goodbye(self, link: SchedulerLink) -> None:
        self.last_disconnect = {"pid": link.pid, "at": timestamp(), "clean": link.said_goodbye}
        if not link.said_goodbye and link.pid is not None and not self.closing:
            # Killed, crashed, or we are shutting down: say so, since it could not.
            log.info("Lost the connection to the scheduler (PID %s)", link.pid)
            self.publish(
                "disconnect", {"pid": link.pid, "reason": "connection lost"}, source="gateway"
            )

    # -- shutdown --------------------------------------------------------------------------
    def close(self) -> None:
        """End every stream: SSE subscribers and scheduler connections (they reconnect)."""
        self.closing = True
        for subscriber in list(self._subscribers):
            subscriber.close()
        self._subscribers.clear()
        for writer in list(self._writers):
            writer.close()
