"""Property-based fuzzing of the scenario and telemetry parsers (hypothesis): random mutations of valid inputs
never produce a traceback; they are accepted, or refused with an error that names a field (exit 2 on the CLI).

Bounded and deterministic (``derandomize=True``, no deadline) so it neither flakes on a loaded machine nor
changes between CI runs.
"""

from __future__ import annotations

import copy
import json
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from twin.cli import app
from twin.preflight import prepare_run
from twin.scenario import ScenarioError, parse_scenario
from twin.telemetry import TelemetryError, read_telemetry, validate_telemetry

FUZZ = settings(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

VALID: dict[str, Any] = {
    "name": "fuzz",
    "seed": 3,
    "feeder": "cigre-lv",
    "start": "2016-06-06T00:00:00Z",
    "end": "2016-06-06T01:00:00Z",
    "step": "15min",
    "horizon": "2h",
    "setpoint_ttl": "30min",
    "fleet": {"pv_penetration": 0.5, "battery_share": 0.5, "ev_share": 0.3, "flex_share": 0.2},
    "tariff": {"offpeak_eur_per_mwh": 180.0, "peak_eur_per_mwh": 400.0, "peak_hours": [17, 21],
               "feed_in_eur_per_mwh": 60.0},
    "limits": {"v_min_pu": 0.95, "v_max_pu": 1.05, "loading_max_percent": 100.0},
    "power_flow": {"engine": "pandapower"},
    "comms": {"rounds": 4, "round_period": "2s", "backhaul": {"latency": "2s", "loss": 0.0},
              "mesh": {"latency": "100ms", "loss": 0.05}},
    "network": {"sensitivities": False, "refresh": "15min", "monitored_buses": "assets"},
    "forecast": {"kind": "noisy", "noise": 0.1},
    "faults": [{"kind": "message_loss", "start": "2016-06-06T00:15:00Z", "end": "2016-06-06T00:45:00Z", "loss": 0.1},
               {"kind": "false_telemetry", "start": "2016-06-06T00:00:00Z", "end": "2016-06-06T00:30:00Z",
                "participants": ["p-1"], "scale": 2.0}],
    "settlement": {
        "events": [{"start": datetime(2016, 6, 6, 0, 15, tzinfo=timezone.utc),
                    "end": datetime(2016, 6, 6, 0, 45, tzinfo=timezone.utc)}],
        "contracts": [{"participant": "p-1", "rules": [{"kind": "capacity_payment", "committed_kw": "5",
                                                         "price_per_kw_month": "4.00"}]}],
        "communities": [{"name": "village", "members": ["p-1", "p-2"], "grid_buy_per_kwh": "0.30",
                         "feed_in_per_kwh": "0.06"}],
    },
    "controllers": [{"name": "none", "target": "controllers.baseline:NoControl"},
                    {"name": "shaver", "target": "controllers.baseline:PeakShaver", "kwargs": {"shave_fraction": 0.8}}],
}

#: Values a hurried or hostile author might write anywhere.
ODD = st.one_of(
    st.sampled_from([0, -1, 1, 15, 2**63, -(2**70), 0.0, -0.5, 1.5, 1e308, math.nan, math.inf, -math.inf, True, False,
                     "", " ", "15", "15min", "-15min", "36500d", "1ns", "nan", "inf", "now", "soon", "2016-13-01",
                     "2016-06-06T00:07:00Z", "2030-01-01T00:00:00Z", "p-999", "os:system", "x:y", ":", "../..",
                     "é\u0000\u202e", "controllers.baseline:NoControl", [], [1, "a"], {}, {"a": {"b": math.nan}},
                     [{"kind": "nope"}], datetime(2016, 6, 6, tzinfo=timezone.utc), datetime(1970, 1, 1)]),
    st.text(max_size=12),
    st.integers(min_value=-10**6, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path inside a TOML-like value (dict keys and list positions)."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += paths(v, (*prefix, i))
    return out


ALL_PATHS = paths(VALID)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[dict[str, Any], tuple[Any, ...]]:
    """VALID with one to three mutations: a value replaced, a key deleted or an unknown key added."""
    data = copy.deepcopy(VALID)
    touched: tuple[Any, ...] = ()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(ALL_PATHS))
        parent: Any = data
        try:
            for part in path[:-1]:
                parent = parent[part]
            leaf = path[-1]
            action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
            if action == "replace":
                parent[leaf] = draw(ODD)
            elif action == "delete":
                del parent[leaf]
            elif isinstance(parent, dict):
                parent[draw(st.sampled_from(["bateries", "stepp", "x", "start_utc"]))] = draw(ODD)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
        touched = path
    return data, touched


def names_a_field(message: str) -> bool:
    """An error line of the form ``  key: …`` or ``key=value …`` / ``key[0].x=…``."""
    return bool(re.search(r"(^|\n|: )\s*[A-Za-z_][\w.\[\]]*(:|=| =) ", message))


@settings(FUZZ, max_examples=400)
@given(mutated())
def test_scenario_mutations_are_accepted_or_refused_naming_a_field(case: tuple[dict[str, Any], tuple[Any, ...]]) -> None:
    data, _ = case
    try:
        parse_scenario(data, source="fuzz.toml")
    except ScenarioError as exc:
        message = str(exc)
        assert message.startswith("fuzz.toml: ")
        assert names_a_field(message), message


@settings(FUZZ, max_examples=25)
@given(mutated())
def test_scenario_mutations_that_parse_are_prepared_or_refused_naming_a_field(
        case: tuple[dict[str, Any], tuple[Any, ...]]) -> None:
    """What parses goes on through every check run makes before it steps (feeder, files, plug-ins)."""
    data, _ = case
    try:
        scenario = parse_scenario(data, source="fuzz.toml")
    except ScenarioError:
        return
    try:
        prepare_run(scenario)
    except ScenarioError as exc:
        assert names_a_field(str(exc)), str(exc)


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in data.items())


runner = CliRunner()


@settings(FUZZ, max_examples=30)
@given(case=mutated(), cut=st.integers(0, 3000), junk=st.sampled_from(["", "=", "[[", "\"", "\u00ff", "]\n[x"]))
def test_cli_validate_never_shows_a_traceback(tmp_path: Path, case: tuple[dict[str, Any], tuple[Any, ...]], cut: int,
                                              junk: str) -> None:
    data, _ = case
    try:
        text = toml_document(data)
    except (TypeError, OverflowError):
        return
    text = text[:cut] + junk + text[cut:] if junk else text
    path = tmp_path / "fuzz.toml"
    path.write_bytes(text.encode("utf-8", errors="surrogatepass") if junk != "\u00ff" else text.encode("latin-1",
                                                                                                       "replace"))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code in (0, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    if result.exit_code == 2:
        assert "error:" in result.output and str(path.name) in result.output


# ------------------------------------------------------------------------------------------------ telemetry

GOOD_ROWS = [
    ["2016-06-01T00:00:00Z", "load-0", "p_kw", "1.5", "good", "1"],
    ["2016-06-01T00:00:00Z", "load-0", "q_kvar", "0.5", "good", "1"],
    ["2016-06-01T00:15:00Z", "load-0", "p_kw", "1.25", "estimated", "2"],
    ["2016-06-01T00:15:00Z", "sgen-1", "p_kw", "-3", "", "7"],
]
HEADER = ["ts", "device_id", "quantity", "value", "quality", "seq"]
CELLS = st.one_of(st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e400", "true", "False", "1,5", "0x10", "2.5",
                                   "-0", "9" * 30, "2016-06-01", "2016-06-01T00:00:00", "2016-06-01T00:00:00+25:00",
                                   "load-7", "p_mw", "great", "rejected", "\"", "é", " 1 "]),
                  st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=8))


@st.composite
def csv_files(draw: st.DrawFn) -> str:
    header = list(HEADER)
    rows = [list(r) for r in GOOD_ROWS]
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["cell", "cell", "cell", "dup", "drop_col", "swap", "extra"]))
        if action == "cell":
            rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, len(header) - 1))] = draw(CELLS)
        elif action == "dup":
            rows.append(list(rows[draw(st.integers(0, len(rows) - 1))]))
        elif action == "drop_col" and len(header) > 1:
            j = draw(st.integers(0, len(header) - 1))
            header.pop(j)
            for r in rows:
                r.pop(j)
        elif action == "swap":
            i, j = draw(st.integers(0, len(header) - 1)), draw(st.integers(0, len(header) - 1))
            header[i], header[j] = header[j], header[i]
        elif action == "extra":
            header.append(draw(st.sampled_from(["note", "value", "ts"])))
            for r in rows:
                r.append("x")

    def line(cells: list[str]) -> str:
        return ",".join('"' + c.replace('"', '""') + '"' if any(ch in c for ch in ',"\n\r') else c for c in cells)

    return "\n".join([line(header)] + [line(r) for r in rows]) + "\n"


def telemetry_error_is_named(message: str, source: str) -> bool:
    return message.startswith(source) and bool(re.search(r"field '\w+'|column|header|rows \d+ and \d+|UTF-8|CSV", message))


@settings(FUZZ, max_examples=300)
@given(csv_files())
def test_telemetry_csv_mutations_are_read_or_refused_naming_the_file_row_and_field(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.csv"
    path.write_text(text, encoding="utf-8")
    try:
        frame = read_telemetry(path, known_devices={"load-0", "sgen-1"})
    except TelemetryError as exc:
        assert telemetry_error_is_named(str(exc), str(path)), str(exc)
        return
    assert list(frame.columns) == HEADER
    assert str(frame["ts"].dtype) == "datetime64[us, UTC]" and frame["value"].dtype == np.float64
    assert not np.isinf(frame["value"]).any()


COLUMN_VALUES = st.one_of(
    st.lists(st.booleans(), min_size=3, max_size=3),
    st.lists(st.integers(-(2**40), 2**40), min_size=3, max_size=3),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=3, max_size=3),
    st.lists(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)), min_size=3,
             max_size=3),
    st.just(list(pd.to_datetime(["2016-06-01T00:00Z"] * 3, utc=True))),
    st.just(list(pd.to_datetime(["2016-06-01T00:00"] * 3))),
    st.just([pd.Timedelta("1h")] * 3),
    st.just([1 + 2j] * 3),
)


@settings(FUZZ, max_examples=300)
@given(column=st.sampled_from(HEADER), values=COLUMN_VALUES)
def test_telemetry_frames_of_any_dtype_are_read_or_refused_naming_the_field(column: str, values: list[Any]) -> None:
    frame = pd.DataFrame({"ts": pd.to_datetime(["2016-06-01T00:00Z", "2016-06-01T00:15Z", "2016-06-01T00:30Z"],
                                               utc=True),
                          "device_id": "load-0", "quantity": "p_kw", "value": [1.0, 2.0, 3.0], "quality": "good",
                          "seq": [1, 2, 3]})
    try:
        frame[column] = pd.Series(values, dtype=object).infer_objects() if column != "ts" else values
    except (TypeError, ValueError):
        return
    try:
        out = validate_telemetry(frame, source="fuzz.parquet")
    except TelemetryError as exc:
        assert telemetry_error_is_named(str(exc), "fuzz.parquet"), str(exc)
        return
    assert out["value"].dtype == np.float64 and out["seq"].dtype == np.int64


@pytest.mark.parametrize("seed", range(3))
def test_fuzz_strategies_generate_what_they_say(seed: int) -> None:
    """A test that cannot fail is a defect: the mutations do produce refusals (checked on fixed draws)."""
    assert parse_scenario(VALID, source="fuzz.toml").name == "fuzz"
    with pytest.raises(ScenarioError):
        parse_scenario({**VALID, "step": [15, "min", seed]}, source="fuzz.toml")
