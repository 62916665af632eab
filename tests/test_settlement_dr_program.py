"""Settlement from a DR program register: only events the VTN actually issued are settled, and for an
economic event only participants that opted in before the interval take part. The worked interval of
``test_settlement_engine`` (alice delivers 10 kWh, earns 5.00, owes a 7.30 penalty; the pool shares 0.25)."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest

import twin.settlement
from twin.settlement.contracts import EventKind, SettlementConfig
from twin.settlement.dr_program import DrProgram, DrProgramError, IssuedEvent, Opt, OptResponse
from twin.settlement.settle import Settlement

try:
    from test_settlement_engine import EVENT_START, Q, history, meters
except ImportError:  # tests/ collected as a package
    from tests.test_settlement_engine import EVENT_START, Q, history, meters

EXAMPLE = Path(twin.settlement.__file__).parent / "example_settlement.toml"


def _config(program: Path) -> SettlementConfig:
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))["settlement"]
    data["events"] = []  # nothing planned: the program's events are the only ones
    data["dr_program"] = str(program)
    return SettlementConfig.from_mapping(data)


def _issue(program: DrProgram, *, kind: EventKind = EventKind.ECONOMIC, event_id: str = "ev-1") -> None:
    program.issue(IssuedEvent(event_id=event_id, start=EVENT_START, end=EVENT_START + pd.Timedelta("4h"), kind=kind,
                              signal="SIMPLE level 1", source="scenario", issued_at=EVENT_START - pd.Timedelta("1h"),
                              targets=("alice", "bob")))


def _opt(program: DrProgram, who: str, opt: Opt, *, minutes_before: int = 30) -> None:
    program.record_opt(OptResponse(event_id="ev-1", participant=who, opt=opt,
                                   received_at=EVENT_START - pd.Timedelta(minutes=minutes_before)))


def _settle(tmp_path: Path, program_path: Path):  # type: ignore[no-untyped-def]
    settlement = Settlement.for_run(tmp_path / "run", config=_config(program_path), run_id="run-1")
    try:
        return settlement.settle_interval(start=EVENT_START, end=EVENT_START + Q, meters=meters(),
                                          load_history_kw=history())
    finally:
        settlement.close()


def _rules(result) -> dict[tuple[str, str], Decimal]:  # type: ignore[no-untyped-def]
    return {(e.key.participant, e.key.rule): next(p.amount for p in e.postings if p.account != "operator"
                                                   and not p.account.startswith("pool"))
            for e in result.entries if e.key.rule in ("capacity", "performance", "penalty")}


@pytest.fixture()
def program(tmp_path: Path):  # type: ignore[no-untyped-def]
    register = DrProgram.open(tmp_path / "program.sqlite")
    yield register
    register.close()


def test_an_event_nobody_issued_is_not_settled(tmp_path: Path, program: DrProgram) -> None:
    result = _settle(tmp_path, program.path)
    assert result.event is None
    assert set(_rules(result)) == {("alice", "capacity")}  # the capacity payment is not an event payment


def test_an_opted_in_participant_is_settled_for_the_issued_event(tmp_path: Path, program: DrProgram) -> None:
    _issue(program)
    _opt(program, "alice", Opt.IN)
    _opt(program, "bob", Opt.IN)
    result = _settle(tmp_path, program.path)
    assert result.event is not None and result.event.event_id == "ev-1"
    got = _rules(result)
    assert got[("alice", "performance")] == Decimal("5") and got[("alice", "penalty")] == Decimal("-7.3")
    pool = next(e for e in result.entries if e.key.rule == "reward_pool")
    assert {p.account for p in pool.postings} == {"pool:flex", "participant:alice", "participant:bob"}


def test_opting_out_of_an_economic_event_means_no_payment_no_penalty_no_pool_share(
        tmp_path: Path, program: DrProgram) -> None:
    _issue(program)
    _opt(program, "alice", Opt.IN, minutes_before=60)
    _opt(program, "alice", Opt.OUT, minutes_before=30)  # the latest answer counts
    _opt(program, "bob", Opt.IN)
    result = _settle(tmp_path, program.path)
    got = _rules(result)
    assert ("alice", "performance") not in got and ("alice", "penalty") not in got
    assert got[("alice", "capacity")] == Decimal("0.080645")
    pool = next(e for e in result.entries if e.key.rule == "reward_pool")
    assert {p.account: p.amount for p in pool.postings} == {"pool:flex": Decimal("-0.25"),
                                                            "participant:bob": Decimal("0.25")}


def test_an_answer_after_the_interval_began_counts_from_the_next_one(tmp_path: Path, program: DrProgram) -> None:
    _issue(program)
    _opt(program, "alice", Opt.IN, minutes_before=-5)  # arrived 5 minutes into the interval
    got = _rules(_settle(tmp_path, program.path))
    assert ("alice", "performance") not in got


def test_an_emergency_event_binds_committed_participants_whatever_they_answered(
        tmp_path: Path, program: DrProgram) -> None:
    _issue(program, kind=EventKind.EMERGENCY)
    _opt(program, "alice", Opt.OUT)
    got = _rules(_settle(tmp_path, program.path))
    assert got[("alice", "performance")] == Decimal("5") and got[("alice", "penalty")] == Decimal("-7.3")


def test_the_register_refuses_contradictions(program: DrProgram) -> None:
    _issue(program)
    assert program.issue(IssuedEvent(event_id="ev-1", start=EVENT_START, end=EVENT_START + pd.Timedelta("4h"),
                                     kind=EventKind.ECONOMIC, signal="x", source="scenario",
                                     issued_at=EVENT_START, targets=())) is False  # the same event again
    with pytest.raises(DrProgramError, match="overlaps event 'ev-1'"):
        _issue(program, event_id="ev-2")
    with pytest.raises(DrProgramError, match="never issued"):
        program.record_opt(OptResponse(event_id="ev-9", participant="alice", opt=Opt.IN, received_at=EVENT_START))
    with pytest.raises(DrProgramError, match="no such register"):
        DrProgram.open(program.path.with_name("missing.sqlite"), create=False)
