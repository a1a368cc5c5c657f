"""Lease renewal while no scheduler is connected, and the clock in `pb scheduler status`:
the pure parts (what the renewer accepts, what the keeper asks it to renew, how the
offset reads)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from pony_scheduler.cli.service import clock_line
from pony_scheduler.keeper.protocol import LeaseTerms
from pony_scheduler.keeper.renewal import Renewals
from pony_scheduler.scheduler.renew import parse_request


def test_the_renewer_reads_the_lease_and_run_epoch_pairs() -> None:
    assert parse_request(b'{"lease_s": 60, "runs": [[3, 1], [9, 4]]}') == (60.0, [(3, 1), (9, 4)])
    assert parse_request(b'{"lease_s": 20.5, "runs": []}') == (20.5, [])


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b"not json",
        b'{"runs": []}',
        b'{"lease_s": true, "runs": []}',
        b'{"lease_s": -1, "runs": []}',
        b'{"lease_s": 60, "runs": {}}',
        b'{"lease_s": 60, "runs": [[1]]}',
        b'{"lease_s": 60, "runs": [[1, "2"]]}',
        b'{"lease_s": 60, "runs": [[1, false]]}',
    ],
)
def test_the_renewer_refuses_a_request_it_cannot_read(raw: bytes) -> None:
    with pytest.raises(ValueError):
        parse_request(raw)


@pytest.mark.parametrize(
    "db, lease",
    [
        ("", 60),
        ("sqlite:///x", 0),
        ("sqlite:///x", -5),
        ("sqlite:///x", float("inf")),
        ("a\0b", 60),
    ],
)
def test_lease_terms_are_checked(db: str, lease: float) -> None:
    with pytest.raises(ValueError):
        LeaseTerms(db, lease)


def keeper(scheduler: object = None, **changes: Any) -> Any:
    runs = {7: SimpleNamespace(run_id=7, launch=SimpleNamespace(token="3"))}
    unacked = {
        "k-1": SimpleNamespace(run_id=5, token="2"),
        "k-2": SimpleNamespace(run_id=6, token="not-an-epoch"),
    }
    fields: dict[str, Any] = dict(
        scheduler=scheduler,
        exit_requested=False,
        runs=runs,
        unacked=unacked,
        log=logging.getLogger("test"),
    )
    return SimpleNamespace(**{**fields, **changes})


def test_the_keeper_renews_held_runs_and_outcomes_only_while_no_scheduler_is_there() -> None:
    renewals = Renewals(keeper())
    assert renewals.wanted() == []  # no terms: a scheduler too old to give them
    renewals.scheduler_came(LeaseTerms("sqlite:///db", 60))
    assert renewals.wanted() == [(5, 2), (7, 3)]  # held run 7, outcome of run 5
    renewals.gone.add(5)  # the database no longer has it running
    assert renewals.wanted() == [(7, 3)]
    connected = Renewals(keeper(scheduler=object()))
    connected.scheduler_came(LeaseTerms("sqlite:///db", 60))
    assert connected.wanted() == [] and not connected.busy()
    exiting = Renewals(keeper(exit_requested=True))
    exiting.scheduler_came(LeaseTerms("sqlite:///db", 60))
    assert exiting.wanted() == []


def test_the_first_renewal_comes_a_twelfth_of_the_lease_after_the_scheduler_left() -> None:
    renewals = Renewals(keeper())
    renewals.scheduler_came(LeaseTerms("sqlite:///db", 60))
    renewals.scheduler_left(1000.0)
    assert renewals.next_wake() == 1005.0
    assert renewals.busy()


@pytest.mark.parametrize(
    "meta, shown",
    [
        ({}, None),
        ({"clockOffsetS": None}, None),
        ({"clockOffsetS": 0.3}, "in step with the database's (within 2s)"),
        ({"clockOffsetS": -2.0}, "in step with the database's (within 2s)"),
        (
            {"clockOffsetS": -65.2},
            "1m 5s ahead of the database's: leases and due times follow "
            "the database's clock; check this host's time sync",
        ),
        (
            {"clockOffsetS": 3600.0},
            "1h behind the database's: leases and due times follow "
            "the database's clock; check this host's time sync",
        ),
    ],
)
def test_status_shows_the_clock_offset(meta: dict[str, Any], shown: str | None) -> None:
    assert clock_line(meta) == shown


def test_a_launchs_start_by_travels_and_is_checked() -> None:
    from pony_scheduler.keeper.protocol import Launch
    from pony_scheduler.keeper.wire import decode, encode, launch_from_json, launch_to_json

    launch = Launch(5, ("true",), "/h/runs/j/5.log", start_by=1234.5)
    assert launch_from_json(decode(encode(launch_to_json(launch))[:-1])) == launch
    assert Launch(5, ("true",), "/h/runs/j/5.log").start_by is None
    with pytest.raises(ValueError, match="start_by"):
        Launch(5, ("true",), "/h/runs/j/5.log", start_by=-1.0)
