"""Talking to the keeper of a home: what the scheduler (and `pb`) call.

    client = KeeperClient.connect(home, scheduler_id)   # starts the keeper if needed
    client.welcome.runs, client.welcome.outcomes         # what it holds, what it finished
    client.launch(Launch(...))                           # answered by events
    selector.register(client.fileno(), EVENT_READ)       # then, when readable:
    for event in client.read_events(): ...               # Started | Outcome | Refused | ...
    client.ack([outcome.id, ...])                        # once recorded in the database
    client.drain(30); ...; client.release_exit()         # `pb scheduler stop`

Selector-friendly, no thread: fileno() is the connection's socket; read_events() never
blocks and returns what has arrived, already decoded.  Calls that wait for an answer
(connect, held, is_held, status, kill) read until it comes, keeping the events that
arrive meanwhile for the next read_events() - so call read_events() after them even if
the selector did not wake (the scheduler's loop can simply call it on every iteration;
with nothing there it costs one recv that fails with EAGAIN).

Errors: KeeperError and its kinds below (PonyError: the CLI shows them as one line).
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pony_scheduler import __version__
from pony_scheduler.errors import PonyError
from pony_scheduler.keeper.journal import KeeperRunning, mark_recorded, read_journal
from pony_scheduler.keeper.protocol import (
    MAX_LINE,
    PROTOCOL,
    Event,
    Held,
    KeeperStatus,
    Launch,
    LeaseTerms,
    ProtocolError,
    Welcome,
    signal_number,
)
from pony_scheduler.keeper.starting import StartBusy, StartFailed, dial, start_keeper
from pony_scheduler.keeper.wire import (
    decode,
    encode,
    event_from_json,
    held_from_json,
    launch_to_json,
    outcome_from_json,
)

__all__ = [
    "KeeperClient",
    "KeeperError",
    "KeeperGone",
    "KeeperRunning",
    "KeeperStartError",
    "ProtocolMismatch",
    "ensure_keeper",
    "mark_recorded",
    "read_journal",
]

RECV_BYTES = 256 * 1024  # per read; a big welcome takes several
REPLY_TIMEOUT_S = 30.0  # a keeper that answers nothing for this long is hung
START_TIMEOUT_S = 30.0


class KeeperError(PonyError):
    """The keeper could not be reached, started or understood."""


class KeeperGone(KeeperError):
    """The connection ended: the keeper exited or died (or superseded us)."""


class KeeperStartError(KeeperError):
    """A keeper was started and reported failure; the message has its reason."""


class OtherDatabase(KeeperError):
    """The keeper holds runs or outcomes of another database than this scheduler's
    (`db_shown`: its URL without a password, as its scheduler showed it): they are
    recorded only by a scheduler of that database (keeper/dbtag.py)."""

    def __init__(self, db_shown: str, runs: int, outcomes: int, pid: int) -> None:
        super().__init__(f"the run keeper (PID {pid}) holds runs of another database")
        self.db_shown, self.runs, self.outcomes, self.pid = db_shown, runs, outcomes, pid


class ProtocolMismatch(KeeperError):
    """The keeper speaks another protocol version (an older or newer pony-scheduler):
    this scheduler cannot adopt its runs.  Stop them (or let them finish and the keeper
    exit), or run the matching version."""


class KeeperClient:
    """One connection to the keeper of `home`.  Not thread-safe: use it from one thread
    (the scheduler's loop)."""

    def __init__(self, sock: socket.socket, home: Path, role: str) -> None:
        self.home = home
        self.role = role
        self._sock = sock
        self._rbuf = bytearray()
        # recv_into this (allocated once): recv(1 MiB) allocated a fresh megabyte (an
        # mmap, mremap and munmap) per read.
        self._recv = memoryview(bytearray(RECV_BYTES))
        self._events: list[Event] = []
        self._replies: list[dict[str, Any]] = []
        self._acks: list[str] = []
        self._req = 0
        self._eof = False
        self.welcome: Welcome = Welcome(PROTOCOL, "", "", 0, "", (), ())

    # ---------------------------------------------------------------- connecting
    @classmethod
    def connect(
        cls,
        home: Path,
        scheduler_id: str = "",
        *,
        role: str = "scheduler",
        start: bool = True,
        containment: str | None = None,
        idle_exit_s: float | None = None,
        timeout_s: float = START_TIMEOUT_S,
        first_keeper: bool = False,
        lease: LeaseTerms | None = None,
    ) -> KeeperClient:
        """Connect to the keeper of `home`, starting one if none runs (start=True) and
        saying hello.  role "scheduler": this connection receives the events, and the
        welcome carries the pending outcomes (a previous scheduler connection is
        superseded); "control": ask and command only.  containment / idle_exit_s are used
        only when a keeper is started (default: $PONYBUNNY_CONTAINMENT or auto; 5 s).
        first_keeper: this scheduler has handed runs to no other keeper (its first
        connection since it started); the keeper then lists it in welcome.sole_keeper_of.
        `lease` (scheduler role): what the keeper needs to renew its runs' leases while
        no scheduler is connected; welcome.renews says whether it will.
        Raises ProtocolMismatch, KeeperStartError, KeeperError (not running with
        start=False, or no answer within timeout_s)."""
        home = Path(home).absolute()
        deadline = time.monotonic() + timeout_s
        last = ""
        while True:
            try:
                client = cls(dial(home), home, role)
                client._hello(scheduler_id, deadline, first_keeper, lease)
                return client
            except (FileNotFoundError, ConnectionRefusedError, KeeperGone) as exc:
                last = str(exc)
            if not start:
                raise KeeperError(f"no keeper runs in {home}")
            if time.monotonic() >= deadline:
                raise KeeperError(
                    f"no keeper answered in {home} within {timeout_s:g}s"
                    + (f" ({last})" if last else "")
                )
            try:
                start_keeper(home, containment, idle_exit_s, deadline)
            except StartFailed as exc:
                raise KeeperStartError(str(exc)) from None
            except StartBusy as exc:
                raise KeeperError(str(exc)) from None

    def _hello(
        self, scheduler_id: str, deadline: float, first_keeper: bool, lease: LeaseTerms | None
    ) -> None:
        hello: dict[str, Any] = {
            "type": "hello",
            "protocol": PROTOCOL,
            "role": self.role,
            "scheduler_id": scheduler_id,
            "first_keeper": first_keeper,
            "client": f"pony-scheduler {__version__}",
        }
        if lease is not None:
            from pony_scheduler.store.engine import safe_url  # a scheduler: SQLAlchemy is in

            hello["lease"] = {"db": lease.db, "lease_s": lease.lease_s}
            hello["db_shown"] = safe_url(lease.db)  # for a refusal's message (dbtag.py)
        reply = self._request(
            hello,
            ("welcome", "unsupported", "other_database"),
            deadline,
        )
        if reply["type"] == "other_database":
            self.close()
            raise OtherDatabase(
                str(reply.get("db_shown") or "?"),
                int(reply["runs"]),
                int(reply["outcomes"]),
                int(reply["pid"]),
            )
        if reply["type"] == "unsupported":
            self.close()
            then = (
                f"it exits once its {reply.get('runs')} run(s) have ended (it has been "
                "told), leaving their outcomes to the next keeper: start again then"
                if reply.get("retiring") is True
                else "let its runs end (or stop them) and it exits"
            )
            raise ProtocolMismatch(
                f"{reply.get('message', 'the keeper speaks another protocol')}; this "
                f"pony-scheduler {__version__} speaks protocol {PROTOCOL}: {then}, or run "
                "the matching version"
            )
        try:
            self.welcome = Welcome(
                protocol=int(reply["protocol"]),
                version=str(reply["version"]),
                keeper_id=str(reply["keeper_id"]),
                pid=int(reply["pid"]),
                containment=str(reply["containment"]),
                runs=tuple(held_from_json(r) for r in reply["runs"]),
                outcomes=tuple(
                    outcome_from_json({**o, "type": "outcome"}) for o in reply["outcomes"]
                ),
                sole_keeper_of=tuple(str(s) for s in reply.get("sole_keeper_of", ())),
                renews=reply.get("renews") is True,
                stands_in=reply.get("stands_in") is True,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeeperError(f"the keeper's welcome makes no sense: {exc}") from None

    # ---------------------------------------------------------------- commands
    def fileno(self) -> int:
        return self._sock.fileno()

    def renewed(self) -> None:
        """Tell the keeper this scheduler has just renewed its runs' leases: a keeper
        that has not heard so for a third of the lease renews them itself (the scheduler
        is stopped or hung; keeper/renewal.py).  No answer; nothing is sent to a keeper
        too old to take it (welcome.stands_in)."""
        if self.welcome.stands_in:
            self._send(self._take_acks() + encode({"type": "renewed"}))

    def launch(self, launch: Launch) -> None:
        """Ask for a run; the answer comes as events: Started (once it has run
        STARTED_DELAY_S) and then its Outcome, or only an Outcome (a short run; ending
        not_started when it could not start), or Refused."""
        self._send(self._take_acks() + encode(launch_to_json(launch)))

    def ack(self, ids: Iterable[str]) -> None:
        """Outcomes recorded durably: the keeper forgets them (and compacts its journal).
        Sent with the next launch or request, or by the next read_events() - one message
        instead of two when a scheduler records outcomes and then launches."""
        self._acks.extend(ids)

    def _take_acks(self) -> bytes:
        if not self._acks:
            return b""
        ids, self._acks = self._acks, []
        return encode({"type": "ack", "ids": ids})

    def kill(self, run_id: int, signal: str | int = "TERM", by: str = "") -> bool:
        """Stop run `run_id`'s whole tree with `signal` (SIGKILL follows after the grace);
        its outcome says `killed` and "killed by {by}" (e.g. "pb runs kill by uid 0
        (root)").  False when the keeper does not hold the run.  ValueError for an
        unknown signal."""
        signum = signal_number(signal)
        reply = self._request(
            {"type": "kill", "run_id": run_id, "signal": signum, "by": by}, ("kill_result",)
        )
        return bool(reply.get("held"))

    def held(self) -> list[Held]:
        """The runs the keeper holds now (authoritative for "is it still running")."""
        reply = self._request({"type": "held"}, ("held",))
        return [held_from_json(r) for r in reply["runs"]]

    def is_held(self, run_id: int) -> Held | None:
        """The run if the keeper holds it, else None."""
        reply = self._request({"type": "query", "run_id": run_id}, ("held",))
        runs = [held_from_json(r) for r in reply["runs"]]
        return runs[0] if runs else None

    def status(self) -> KeeperStatus:
        r = self._request({"type": "status"}, ("status",))
        try:
            return KeeperStatus(
                pid=int(r["pid"]),
                version=str(r["version"]),
                protocol=int(r["protocol"]),
                keeper_id=str(r["keeper_id"]),
                started_at=str(r["started_at"]),
                home=str(r["home"]),
                containment=str(r["containment"]),
                containment_note=str(r.get("containment_note", "")),
                controllers=tuple(str(c) for c in r.get("controllers", [])),
                runs=int(r["runs"]),
                unacked=int(r["unacked"]),
                unjournaled=int(r["unjournaled"]),
                journal_bytes=int(r["journal_bytes"]),
                journal_error=str(r.get("journal_error", "")),
                draining=bool(r["draining"]),
                exiting=bool(r["exiting"]),
                drain_ends=bool(r.get("drain_ends", False)),
                clients=int(r["clients"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeeperError(f"the keeper's status makes no sense: {exc}") from None

    def drain(self, grace_s: float, by: str = "") -> None:
        """Take no new runs; after grace_s seconds stop those still running (SIGTERM,
        SIGKILL after the kill grace): their outcomes say `stopped`, "stopped by {by}".
        A second drain with a shorter grace hastens it (a second SIGTERM: 0)."""
        self._request({"type": "drain", "grace_s": grace_s, "by": by}, ("draining",))

    def release_exit(self, timeout_s: float = 10.0) -> bool:
        """Tell the keeper it may exit once it holds no run (its pending outcomes stay in
        the journal); wait up to timeout_s for it to go.  True when it has gone."""
        self._request({"type": "exit"}, ("exiting",))
        deadline = time.monotonic() + timeout_s
        while not self._eof:
            if not self._wait_readable(deadline):
                return False
            self._receive()
        return True

    def read_events(self) -> list[Event]:
        """Events that have arrived, never blocking.  Raises KeeperGone once the
        connection has ended and nothing is left to read."""
        if self._acks and not self._eof:
            self._send(self._take_acks())
        if not self._eof:
            self._receive()
        events, self._events = self._events, []
        if not events and self._eof:
            raise KeeperGone(f"the keeper of {self.home} closed the connection")
        return events

    def close(self) -> None:
        """Close the connection (acknowledgements not sent yet are sent first)."""
        with contextlib.suppress(KeeperError):
            if self._acks and not self._eof:
                self._send(self._take_acks(), timeout_s=1.0)
        with contextlib.suppress(OSError):
            self._sock.close()

    # ---------------------------------------------------------------- plumbing
    def _send(self, data: bytes, timeout_s: float = REPLY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        view = memoryview(data)
        while view:
            try:
                sent = self._sock.send(view)
            except (BlockingIOError, InterruptedError):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise KeeperError(
                        f"the keeper has not read for {timeout_s:g}s; is it hung?"
                    ) from None
                select.select([], [self._sock], [], remaining)
                continue
            except OSError as exc:
                self._eof = True
                raise KeeperGone(f"the keeper of {self.home} is gone ({exc.strerror})") from None
            view = view[sent:]

    def _receive(self) -> None:
        """Read what is there (non-blocking) and decode complete lines."""
        while True:
            try:
                got = self._sock.recv_into(self._recv)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                got = 0
            if not got:
                self._eof = True
                break
            self._rbuf += self._recv[:got]
            if got < RECV_BYTES:
                break
        while (end := self._rbuf.find(b"\n")) >= 0:
            line = self._rbuf[:end]
            del self._rbuf[: end + 1]
            try:
                self._take(decode(line))
            except ProtocolError as exc:
                raise KeeperError(f"the keeper sent something unreadable: {exc}") from None
        if len(self._rbuf) > MAX_LINE:
            raise KeeperError("the keeper sent a message longer than the protocol allows")

    def _take(self, message: dict[str, Any]) -> None:
        event = event_from_json(message)
        if event is not None:
            self._events.append(event)
        else:
            self._replies.append(message)

    def _request(
        self, message: dict[str, Any], kinds: tuple[str, ...], deadline: float | None = None
    ) -> dict[str, Any]:
        self._req += 1
        message["req"] = self._req
        self._send(self._take_acks() + encode(message))
        deadline = deadline if deadline is not None else time.monotonic() + REPLY_TIMEOUT_S
        while True:
            for reply in self._replies:
                if reply.get("req") == self._req or reply["type"] == "error":
                    self._replies.remove(reply)
                    if reply["type"] == "error":
                        raise KeeperError(
                            f"the keeper refused a request: {reply.get('message', '?')}"
                        )
                    if reply["type"] not in kinds:
                        raise KeeperError(f"unexpected answer {reply['type']!r}")
                    return reply
            if self._eof:
                raise KeeperGone(f"the keeper of {self.home} closed the connection")
            if not self._wait_readable(deadline):
                raise KeeperError(f"the keeper did not answer {message['type']!r} in time")
            self._receive()

    def _wait_readable(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        ready, _, _ = select.select([self._sock], [], [], remaining)
        return bool(ready)


# -------------------------------------------------------------------- starting a keeper
def ensure_keeper(
    home: Path,
    *,
    containment: str | None = None,
    idle_exit_s: float | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> KeeperClient:
    """A control connection to the keeper of `home`, started if none runs (see
    KeeperClient.connect).  Concurrent calls, from any number of processes, leave
    exactly one keeper: starts are serialized by HOME/.keeper.start.lock and the keeper
    itself holds keeper.pid locked."""
    return KeeperClient.connect(
        home, role="control", containment=containment, idle_exit_s=idle_exit_s, timeout_s=timeout_s
    )
