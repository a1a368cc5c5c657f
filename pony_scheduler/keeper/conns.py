"""The keeper's side of keeper.sock: connections, framing, and what each request does.

Every connection is checked with SO_PEERCRED (unix(7)): only processes of the keeper's
own uid may talk to it.  A connection says `hello` first; the one with role "scheduler"
receives the events (started, outcome); a newer scheduler supersedes an older one (the
older gets `superseded` and is closed).  Other connections ("control": `pb` commands,
tests) only ask and get answers.  Writes never block the keeper: what a slow reader has
not taken waits in its buffer (a reader more than MAX_BUFFER behind is dropped; the
outcomes it missed are still pending and come with the next welcome).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from pony_scheduler import __version__
from pony_scheduler.keeper.protocol import (
    MAX_LINE,
    PROTOCOL,
    LeaseTerms,
    ProtocolError,
    signal_number,
)
from pony_scheduler.keeper.wire import (
    decode,
    encode,
    held_to_json,
    launch_from_json,
    outcome_to_json,
)

if TYPE_CHECKING:
    from pony_scheduler.keeper.server import Keeper

MAX_BUFFER = 256 * 1024 * 1024
RECV_BYTES = 1 << 20
# Every connection reads into this one buffer (the keeper has one thread): recv(1 MiB)
# allocated a fresh megabyte each time, an mmap, mremap and munmap per request.
_recv_view = memoryview(bytearray(RECV_BYTES))
# Schedulers remembered as having used no other keeper (the latest ones): a successor
# asks about its predecessors, the last few at most.
SOLE_KEEPER_OF_MAX = 64


class Conn:
    __slots__ = ("closing", "peer_pid", "rbuf", "role", "scheduler_id", "sock", "wbuf", "writing")

    def __init__(self, sock: socket.socket, peer_pid: int) -> None:
        self.sock = sock
        self.peer_pid = peer_pid
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.role = ""  # "" until hello
        self.scheduler_id = ""
        self.closing = False  # close once wbuf is sent
        self.writing = False  # registered for EPOLLOUT

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, message: dict[str, Any]) -> None:
        self.wbuf += encode(message)

    def flush(self) -> bool:
        """Send what waits; True when everything went out."""
        while self.wbuf:
            try:
                sent = self.sock.send(self.wbuf)
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:
                self.wbuf.clear()
                self.closing = True
                return True
            del self.wbuf[:sent]
        return True


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def accept(keeper: Keeper, listener: socket.socket) -> Conn | None:
    try:
        sock, _ = listener.accept()
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EINTR):
            keeper.log.warning("accept on keeper.sock failed: %s", exc.strerror)
        return None
    pid, uid, _ = peer_credentials(sock)
    if uid != os.getuid():
        keeper.log.warning(
            "Refused a connection from PID %d (uid %d): only uid %d may use the keeper",
            pid,
            uid,
            os.getuid(),
        )
        sock.close()
        return None
    sock.setblocking(False)
    return Conn(sock, pid)


def receive(keeper: Keeper, conn: Conn) -> None:
    """Read what is there and act on each complete line."""
    try:
        got = conn.sock.recv_into(_recv_view)
    except (BlockingIOError, InterruptedError):
        return
    except OSError:
        got = 0
    if not got:
        keeper.close_conn(conn)
        return
    conn.rbuf += _recv_view[:got]
    while not conn.closing:
        end = conn.rbuf.find(b"\n")
        if end < 0:
            if len(conn.rbuf) > MAX_LINE:
                _fail(conn, f"message longer than {MAX_LINE} bytes")
            return
        line = conn.rbuf[:end]
        del conn.rbuf[: end + 1]
        try:
            handle(keeper, conn, decode(line))
        except ProtocolError as exc:
            _fail(conn, str(exc))
        except Exception:  # a bug must not take the runs of everyone down with it
            keeper.log.exception("Request from PID %d failed", conn.peer_pid)
            _fail(conn, "internal error in the keeper (see keeper.log)")


def _fail(conn: Conn, message: str) -> None:
    conn.send({"type": "error", "message": message})
    conn.closing = True


def handle(keeper: Keeper, conn: Conn, m: dict[str, Any]) -> None:
    kind = m["type"]
    req = m.get("req")
    reply: dict[str, Any] | None = None
    if not conn.role and kind != "hello":
        raise ProtocolError("say hello first")
    if kind == "hello":
        reply = _hello(keeper, conn, m)
    elif kind == "launch":
        if conn.role != "scheduler":
            raise ProtocolError("only the scheduler connection may launch")
        keeper.launch(launch_from_json(m), conn)
    elif kind == "ack":
        ids = m.get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise ProtocolError("ack needs ids: a list of outcome ids")
        keeper.ack(ids)
    elif kind == "renewed":
        if conn.role != "scheduler":
            raise ProtocolError("only the scheduler connection renews leases")
        keeper.renewals.scheduler_renewed(time.monotonic())
    elif kind == "kill":
        reply = _kill(keeper, m)
    elif kind == "held":
        reply = {"type": "held", "runs": [held_to_json(r.held()) for r in keeper.live_runs()]}
    elif kind == "query":
        run = keeper.runs.get(_run_id(m))
        reply = {"type": "held", "runs": [held_to_json(run.held())] if run else []}
    elif kind == "drain":
        grace = m.get("grace_s", 0)
        if not isinstance(grace, int | float) or isinstance(grace, bool) or grace < 0:
            raise ProtocolError("drain needs grace_s: seconds, 0 or more")
        keeper.drain(float(grace), str(m.get("by") or "the scheduler's drain"), conn)
        reply = {"type": "draining", "runs": len(keeper.runs)}
    elif kind == "exit":
        keeper.exit_requested = True
        keeper.log.info("Exit requested (PID %d): exiting once no run is held", conn.peer_pid)
        reply = {"type": "exiting", "runs": len(keeper.runs)}
    elif kind == "status":
        reply = keeper.status_json()
    else:
        raise ProtocolError(f"unknown message type {kind!r}")
    if reply is not None:
        if req is not None:
            reply["req"] = req
        conn.send(reply)


def _retire(keeper: Keeper, m: dict[str, Any]) -> None:
    """A scheduler of a newer version, speaking a newer protocol, wants this home (an
    upgrade): this keeper exits as soon as its runs have ended and their outcomes are in
    the journal, which the newer scheduler's keeper then reads (the journal's format is
    versioned apart from the protocol).  Until then its runs go on, their leases renewed."""
    if not keeper.retiring:
        keeper.retiring = True
        keeper.log.info(
            "A scheduler of a newer version (%s) wants this home: this keeper exits once "
            "its %d run(s) have ended, leaving their outcomes in keeper.journal for the "
            "next keeper",
            str(m.get("client") or "protocol " + str(m.get("protocol")))[:80],
            len(keeper.runs),
        )


def _hello(keeper: Keeper, conn: Conn, m: dict[str, Any]) -> dict[str, Any]:
    if m.get("protocol") != PROTOCOL:
        conn.closing = True
        wanted = m.get("protocol")
        if m.get("role") == "scheduler" and isinstance(wanted, int) and wanted > PROTOCOL:
            _retire(keeper, m)
        return {
            "type": "unsupported",
            "protocol": PROTOCOL,
            "version": __version__,
            "runs": len(keeper.runs),
            "retiring": keeper.retiring,
            "message": f"this keeper (pony-scheduler {__version__}, PID {os.getpid()}) "
            f"speaks protocol {PROTOCOL}, not {wanted!r}",
        }
    role = m.get("role")
    if role not in ("scheduler", "control"):
        raise ProtocolError("hello needs role 'scheduler' or 'control'")
    if role == "scheduler" and keeper.retiring:
        keeper.retiring = False  # a scheduler of ours after all (a downgrade): stay
        keeper.log.info("A scheduler of this keeper's protocol connected: not retiring")
    conn.role = role
    conn.scheduler_id = str(m.get("scheduler_id") or "")
    lease = _lease_terms(m.get("lease")) if role == "scheduler" else None
    # The database without its password, from this version's schedulers (an older one
    # sends none: not checked, as before; its URL may hold a password for keeper.json).
    shown = str(m.get("db_shown") or "") if lease is not None else ""
    if shown and (keeper.runs or keeper.unacked) and keeper.dbtag.conflicts(shown):
        conn.closing = True  # runs and outcomes of another database (dbtag.py)
        return {
            "type": "other_database",
            "db_shown": keeper.dbtag.shown,  # without its password
            "runs": len(keeper.runs),
            "outcomes": len(keeper.unacked),
            "pid": os.getpid(),
        }
    if shown:
        keeper.dbtag.adopt(shown)
    if role == "scheduler":
        if m.get("first_keeper") is True and conn.scheduler_id:
            keeper.sole_keeper_of[conn.scheduler_id] = None
            while len(keeper.sole_keeper_of) > SOLE_KEEPER_OF_MAX:
                del keeper.sole_keeper_of[next(iter(keeper.sole_keeper_of))]
        keeper.take_scheduler(conn, lease)
    return {
        "type": "welcome",
        "protocol": PROTOCOL,
        "version": __version__,
        "keeper_id": keeper.keeper_id,
        "pid": os.getpid(),
        "containment": keeper.cg.mode,
        "runs": [held_to_json(r.held()) for r in keeper.live_runs()],
        "outcomes": [outcome_to_json(o) for o in keeper.unacked.values()]
        if role == "scheduler"
        else [],
        "sole_keeper_of": list(keeper.sole_keeper_of) if role == "scheduler" else [],
        "renews": lease is not None,
        "stands_in": lease is not None,
    }


def _lease_terms(value: Any) -> LeaseTerms | None:
    """The hello's `lease` {db, lease_s}: what renewing the runs' leases needs."""
    if value is None:
        return None
    try:
        return LeaseTerms(value["db"], value["lease_s"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"bad lease terms in hello: {exc}") from None


def _kill(keeper: Keeper, m: dict[str, Any]) -> dict[str, Any]:
    try:
        signum = signal_number(m.get("signal", "TERM"))
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None
    by = str(m.get("by") or "a kill request")
    run = keeper.runs.get(_run_id(m))
    if run is None or run.done:
        return {"type": "kill_result", "held": False}
    keeper.log.info("Run %d: kill with signal %d, by %s", run.run_id, signum, by)
    run.stop("killed", f"killed by {by}", signum, by)
    return {"type": "kill_result", "held": True}


def _run_id(m: dict[str, Any]) -> int:
    run_id = m.get("run_id")
    if not isinstance(run_id, int) or isinstance(run_id, bool):
        raise ProtocolError("run_id must be a whole number")
    return run_id


def close_quietly(conn: Conn) -> None:
    with contextlib.suppress(OSError):
        conn.sock.close()
