"""Replayed telemetry: validation messages, alignment by hand, stale/missing marking, file round trips, the
profile <-> telemetry inverse and the SimBench year export."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from grids import feeder_profiles, load_feeder
from twin.telemetry import (
    TELEMETRY_COLUMNS,
    Quality,
    Quantity,
    TelemetryError,
    align_to_step,
    export_simbench,
    load_telemetry,
    profiles_to_telemetry,
    read_telemetry,
    telemetry_to_profiles,
    validate_telemetry,
    write_telemetry,
)

SIMBENCH_CODE = "1-LV-rural1--0-sw"
QUARTER = pd.Timedelta("15min")
HEADER = "ts,device_id,quantity,value,quality,seq\n"


@pytest.fixture(scope="module")
def simbench_net():
    return load_feeder("simbench:" + SIMBENCH_CODE)


def write_csv(tmp_path: Path, *rows: str) -> Path:
    path = tmp_path / "telemetry.csv"
    path.write_text(HEADER + "".join(row + "\n" for row in rows))
    return path


GOOD_ROW = "2016-06-01T00:00:00Z,load-0,p_kw,1.5,good,1"


def test_reads_a_good_csv_in_canonical_form(tmp_path: Path) -> None:
    path = write_csv(tmp_path, GOOD_ROW, "2016-06-01T01:00:00+01:00,load-1,q_kvar,-0.25,estimated,2")
    df = read_telemetry(path, known_devices={"load-0", "load-1"})
    assert tuple(df.columns) == TELEMETRY_COLUMNS
    assert str(df["ts"].dtype) == "datetime64[us, UTC]"
    assert df["ts"].tolist() == [pd.Timestamp("2016-06-01T00:00Z")] * 2  # +01:00 converted to UTC
    assert df["value"].tolist() == [1.5, -0.25]
    assert df["quality"].tolist() == ["good", "estimated"]
    assert df["seq"].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("bad_row", "field", "value"),
    [
        ("2016-13-01T00:00:00Z,load-0,p_kw,1.5,good,2", "ts", "2016-13-01T00:00:00Z"),
        ("yesterday,load-0,p_kw,1.5,good,2", "ts", "yesterday"),
        ("2016-06-01T00:15:00,load-0,p_kw,1.5,good,2", "ts", "2016-06-01T00:15:00"),  # no UTC offset
        ("2016-06-01T00:15:00Z,load-7,p_kw,1.5,good,2", "device_id", "load-7"),
        ("2016-06-01T00:15:00Z,load-0,p_mw,1.5,good,2", "quantity", "p_mw"),
        ("2016-06-01T00:15:00Z,load-0,p_kw,1.5kW,good,2", "value", "1.5kW"),
        ("2016-06-01T00:15:00Z,load-0,p_kw,inf,good,2", "value", "inf"),
        ("2016-06-01T00:15:00Z,load-0,p_kw,1.5,great,2", "quality", "great"),
        ("2016-06-01T00:15:00Z,load-0,p_kw,1.5,good,2.5", "seq", "2.5"),
    ],
)
def test_each_bad_field_names_row_field_and_value(tmp_path: Path, bad_row: str, field: str, value: str) -> None:
    path = write_csv(tmp_path, GOOD_ROW, GOOD_ROW.replace(",1", ",3"), bad_row)
    with pytest.raises(TelemetryError) as info:
        read_telemetry(path, known_devices={"load-0"})
    message = str(info.value)
    assert "row 3:" in message and f"field {field!r}" in message and repr(value) in message


def test_nan_values_are_kept_as_missing(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        GOOD_ROW,
        "2016-06-01T00:15:00Z,load-0,p_kw,,good,2",
        "2016-06-01T00:30:00Z,load-0,p_kw,NaN,,3",
        "2016-06-01T00:45:00Z,load-0,p_kw,nan,rejected,4",
    )
    df = read_telemetry(path)
    assert len(df) == 4
    assert df["quality"].tolist() == ["good", "missing", "missing", "rejected"]
    assert df["value"].isna().tolist() == [False, True, True, True]


def test_optional_columns_default(tmp_path: Path) -> None:
    path = tmp_path / "minimal.csv"
    path.write_text("ts,device_id,quantity,value\n2016-06-01T00:00:00Z,pv-0001,p_kw,-3.0\n")
    df = read_telemetry(path)
    assert df["quality"].tolist() == ["good"] and df["seq"].tolist() == [0]


def test_missing_column_and_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("ts,device_id,value\n2016-06-01T00:00:00Z,load-0,1\n")
    with pytest.raises(TelemetryError, match="quantity"):
        read_telemetry(path)
    with pytest.raises(TelemetryError, match="'.txt'"):
        read_telemetry(tmp_path / "t.txt")


def long_frame(rows: list[tuple[str, str, float, str]], quantity: str = "p_kw") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ts": pd.to_datetime([r[0] for r in rows], utc=True, format="ISO8601").as_unit("us"),
            "device_id": [r[1] for r in rows],
            "quantity": quantity,
            "value": [r[2] for r in rows],
            "quality": [r[3] for r in rows],
            "seq": range(len(rows)),
        }
    )


def test_alignment_means_samples_in_each_interval_by_hand() -> None:
    df = long_frame(
        [
            ("2016-06-01T00:00Z", "a", 1.0, "good"),
            ("2016-06-01T00:05Z", "a", 2.0, "good"),
            ("2016-06-01T00:14:59.999999Z", "a", 6.0, "good"),  # still in [00:00, 00:15)
            ("2016-06-01T00:15Z", "a", 4.0, "good"),  # starts the next interval
            ("2016-06-01T00:20Z", "a", 100.0, "rejected"),  # never used
            ("2016-06-01T00:00Z", "b", 10.0, "estimated"),
            ("2016-06-01T00:30Z", "b", 20.0, "good"),
            ("2016-06-01T00:31Z", "b", 30.0, "estimated"),
        ]
    )
    aligned = align_to_step(df, quantity=Quantity.P_KW, start="2016-06-01", end="2016-06-01T00:45Z", step=QUARTER)
    assert list(aligned.values.columns) == ["a", "b"]
    assert list(aligned.values.index) == list(pd.date_range("2016-06-01T00:00Z", periods=3, freq="15min"))
    assert aligned.values["a"].tolist() == [3.0, 4.0, 4.0]  # (1+2+6)/3, 4, then carried forward
    assert aligned.values["b"].tolist() == [10.0, 10.0, 25.0]  # (20+30)/2
    assert aligned.quality["a"].tolist() == ["good", "good", "stale"]
    assert aligned.quality["b"].tolist() == ["estimated", "stale", "good"]


def test_stale_for_up_to_max_fill_intervals_then_missing() -> None:
    df = long_frame([("2016-06-01T00:00Z", "a", 5.0, "good"), ("2016-06-01T02:00Z", "a", 7.0, "good")])
    aligned = align_to_step(
        df, quantity="p_kw", start="2016-06-01", end="2016-06-01T02:30Z", step=QUARTER, max_fill=4
    )
    # 00:00 measured; 00:15-01:00 carried (4 intervals); 01:15-01:45 missing; 02:00 measured; 02:15 carried.
    expected = ["good"] + ["stale"] * 4 + ["missing"] * 3 + ["good", "stale"]
    assert aligned.quality["a"].tolist() == expected
    values = aligned.values["a"]
    assert values.iloc[:5].tolist() == [5.0] * 5 and values.iloc[5:8].isna().all()
    assert values.iloc[8:].tolist() == [7.0, 7.0]


def test_samples_before_start_feed_stale_values_and_devices_can_be_forced() -> None:
    window = dict(quantity="p_kw", start="2016-06-02", end="2016-06-02T01:00Z", step=QUARTER, max_fill=2)
    # 23:15 may be carried to 23:30 and 23:45 only: nothing reaches midnight.
    aligned = align_to_step(long_frame([("2016-06-01T23:15Z", "a", 2.0, "good")]), **window)
    assert aligned.quality["a"].tolist() == ["missing"] * 4
    # 23:30 is carried to 23:45 and 00:00 (two intervals), then runs out.
    aligned = align_to_step(long_frame([("2016-06-01T23:30Z", "a", 2.0, "good")]), devices=["a", "ghost"], **window)
    assert aligned.quality["a"].tolist() == ["stale", "missing", "missing", "missing"]
    assert aligned.values["a"].iloc[0] == 2.0
    assert aligned.quality["ghost"].tolist() == ["missing"] * 4


def test_alignment_to_an_hour_of_a_quarter_hour_series() -> None:
    rows = [(f"2016-06-01T00:{m:02d}Z", "a", v, "good") for m, v in zip((0, 15, 30, 45), (1.0, 2.0, 3.0, 6.0))]
    aligned = align_to_step(
        long_frame(rows), quantity="p_kw", start="2016-06-01", end="2016-06-01T01:00Z", step=pd.Timedelta("1h")
    )
    assert aligned.values["a"].tolist() == [3.0]


def sample_frame() -> pd.DataFrame:
    df = long_frame(
        [
            ("2016-06-01T00:00:00.123456Z", "load-0", 0.1 + 0.2, "good"),
            ("2016-06-01T00:00:00.123456Z", "sgen-1", -1e-9, "estimated"),
            ("2016-06-01T00:15:00Z", "load-0", float("nan"), "missing"),
            ("2016-06-01T00:30:00Z", "pv-0001,roof", 123456.789, "rejected"),  # a comma in an id
        ]
    )
    df["quantity"] = ["p_kw", "q_kvar", "p_kw", "soc_pct"]
    return df


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_round_trip_is_exact(tmp_path: Path, suffix: str) -> None:
    df = sample_frame()
    path = tmp_path / f"t{suffix}"
    write_telemetry(df, path)
    pd.testing.assert_frame_equal(read_telemetry(path), df, check_exact=True)


def test_parquet_stores_microsecond_utc_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    write_telemetry(sample_frame(), path)
    assert str(pq.read_schema(path).field("ts").type) == "timestamp[us, tz=UTC]"


def test_csv_uses_iso_utc_stamps(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    write_telemetry(sample_frame().iloc[:1], path)
    expected = "2016-06-01T00:00:00.123456Z,load-0,p_kw,0.30000000000000004,good,0"
    assert path.read_text().splitlines() == [HEADER.strip(), expected]


def test_profiles_to_telemetry_uses_load_convention(simbench_net) -> None:
    profiles = feeder_profiles(simbench_net, start="2016-06-01T12:00Z", end="2016-06-01T13:00Z")
    long = profiles_to_telemetry(profiles, simbench_net)
    n_devices = 2 * len(simbench_net.load) + len(simbench_net.sgen)  # 13 x (p, q) + 4 x p = 30 series
    assert len(long) == 4 * n_devices
    at_noon = long[long["ts"] == pd.Timestamp("2016-06-01T12:00Z")].set_index(["device_id", "quantity"])["value"]
    assert at_noon[("load-0", "p_kw")] == pytest.approx(profiles.load_p_mw.iloc[0, 0] * 1e3)
    assert at_noon[("load-0", "q_kvar")] == pytest.approx(profiles.load_q_mvar.iloc[0, 0] * 1e3)
    assert at_noon[("sgen-0", "p_kw")] == pytest.approx(-profiles.sgen_p_mw.iloc[0, 0] * 1e3)
    assert profiles.sgen_p_mw.iloc[0, 0] > 0  # producing at noon, so its telemetry is negative
    assert (long["quality"] == Quality.GOOD).all()
    # seq counts quarter hours since 2016-01-01: 1 June 12:00 is 152 x 96 + 48.
    assert long["seq"].iloc[0] == 152 * 96 + 48


def test_telemetry_to_profiles_inverts_profiles_to_telemetry(simbench_net, tmp_path: Path) -> None:
    profiles = feeder_profiles(simbench_net, start="2016-06-01", end="2016-06-02")
    path = tmp_path / "day.parquet"
    write_telemetry(profiles_to_telemetry(profiles, simbench_net), path)
    back = telemetry_to_profiles(
        read_telemetry(path), simbench_net, start="2016-06-01", end="2016-06-02", step=QUARTER,
        pv_per_mwp=profiles.pv_per_mwp, flex_per_mw=profiles.flex_per_mw,
    )
    for field in ("load_p_mw", "load_q_mvar", "sgen_p_mw"):
        pd.testing.assert_frame_equal(getattr(back, field), getattr(profiles, field), rtol=1e-12)
    assert back.step == QUARTER


def test_telemetry_to_profiles_names_a_gap(simbench_net) -> None:
    profiles = feeder_profiles(simbench_net, start="2016-06-01", end="2016-06-01T03:00Z")
    long = profiles_to_telemetry(profiles, simbench_net)
    gap = (long["device_id"] == "sgen-2") & (long["ts"] >= pd.Timestamp("2016-06-01T01:00Z"))
    with pytest.raises(TelemetryError, match=r"'sgen-2'.*2016-06-01T02:00:00\+00:00"):
        telemetry_to_profiles(
            long[~gap], simbench_net, start="2016-06-01", end="2016-06-01T03:00Z", step=QUARTER,
            pv_per_mwp=profiles.pv_per_mwp, flex_per_mw=profiles.flex_per_mw, max_fill=4,
        )


def test_export_simbench_writes_the_whole_year(tmp_path: Path, simbench_net) -> None:
    path = tmp_path / "year.parquet"
    rows = export_simbench(SIMBENCH_CODE, path)
    series = 2 * len(simbench_net.load) + len(simbench_net.sgen)  # 13 loads x (p, q) + 4 sgens x p
    assert rows == 35_136 * series == 1_054_080
    metadata = pq.read_metadata(path)
    assert metadata.num_rows == rows
    first = pq.read_table(path, columns=["ts", "device_id"]).slice(0, 1).to_pylist()[0]
    assert first["device_id"] == "load-0" and first["ts"] == pd.Timestamp("2016-01-01T00:00Z")


# ------------------------------------------------------------------------------------ issue 15: duplicates,
# dtypes, unknown devices; every error names the file, the row and the field.


def test_a_repeated_message_is_dropped_and_counted(tmp_path: Path) -> None:
    # Rows 1 and 3 are the same message received twice; row 2 shares the seq but is another quantity.
    path = write_csv(tmp_path, GOOD_ROW, "2016-06-01T00:00:00Z,load-0,q_kvar,0.5,good,1", GOOD_ROW)
    read = load_telemetry(path, known_devices={"load-0"})
    assert read.rows_read == 3 and read.duplicates_dropped == 1
    assert read.frame["quantity"].tolist() == ["p_kw", "q_kvar"]
    assert read.frame["value"].tolist() == [1.5, 0.5]


@pytest.mark.parametrize(
    ("second", "field", "shown"),
    [
        ("2016-06-01T00:00:00Z,load-0,p_kw,2.5,good,1", "value", "1.5 and 2.5"),
        ("2016-06-01T00:15:00Z,load-0,p_kw,1.5,good,1", "ts", "'2016-06-01T00:00:00+00:00' and '2016-06-01T00:15:00+00:00'"),
        ("2016-06-01T00:00:00Z,load-0,p_kw,1.5,estimated,1", "quality", "'good' and 'estimated'"),
    ],
)
def test_a_repeated_seq_with_another_value_names_both_rows(tmp_path: Path, second: str, field: str, shown: str) -> None:
    path = write_csv(tmp_path, GOOD_ROW, "2016-06-01T00:15:00Z,load-0,p_kw,9.0,good,2", second)
    with pytest.raises(TelemetryError) as info:
        read_telemetry(path)
    message = str(info.value)
    assert str(path) in message and "rows 1 and 3" in message
    assert "device 'load-0' quantity 'p_kw' seq 1" in message and f"field {field!r}: {shown}" in message


def test_booleans_and_other_non_numbers_are_refused(tmp_path: Path) -> None:
    frame = pd.DataFrame({"ts": pd.to_datetime(["2016-06-01T00:00Z", "2016-06-01T00:15Z"], utc=True),
                          "device_id": "load-0", "quantity": "p_kw", "value": [True, False], "seq": [1, 2]})
    path = tmp_path / "bools.parquet"
    frame.to_parquet(path)
    with pytest.raises(TelemetryError, match=rf"{path}: row 1: field 'value': value True is a boolean, not a number"):
        read_telemetry(path)
    mixed = frame.assign(value=pd.Series([1.0, True], dtype=object))
    with pytest.raises(TelemetryError, match=r"row 2: field 'value': value True is a boolean"):
        validate_telemetry(mixed, source="mixed")
    stamps = frame.assign(value=frame["ts"])
    with pytest.raises(TelemetryError, match=r"row 1: field 'value': .* has dtype datetime64\[.*\], not a number"):
        validate_telemetry(stamps, source="stamps")
    with pytest.raises(TelemetryError, match=r"row 1: field 'seq': value True is a boolean, not an integer"):
        validate_telemetry(frame.assign(value=1.0, seq=[True, False]), source="seqs")
    text = write_csv(tmp_path, "2016-06-01T00:00:00Z,load-0,p_kw,true,good,1")
    with pytest.raises(TelemetryError, match=r"row 1: field 'value': value 'true' is not a number"):
        read_telemetry(text)
    huge = write_csv(tmp_path, "2016-06-01T00:00:00Z,load-0,p_kw,1.0,good,1e30")
    with pytest.raises(TelemetryError, match=r"row 1: field 'seq': value '1e30' is not an integer"):
        read_telemetry(huge)


def test_unknown_devices_are_an_error_unless_ignored_and_counted(tmp_path: Path) -> None:
    path = write_csv(tmp_path, GOOD_ROW, "2016-06-01T00:00:00Z,meter-9,p_kw,3.0,good,1",
                     "2016-06-01T00:15:00Z,meter-9,p_kw,3.0,good,2")
    with pytest.raises(TelemetryError) as info:
        read_telemetry(path, known_devices={"load-0"})
    assert f"{path}: row 2: field 'device_id': value 'meter-9' is not a device" in str(info.value)
    read = load_telemetry(path, known_devices={"load-0"}, unknown_devices="ignore")
    assert read.unknown_rows_ignored == 2 and read.unknown_devices == ("meter-9",)
    assert read.frame["device_id"].tolist() == ["load-0"]


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    latin = tmp_path / "latin.csv"
    latin.write_bytes("ts,device_id,quantity,value,qualité\n".encode("latin-1"))
    with pytest.raises(TelemetryError, match=rf"{latin}: not UTF-8 text"):
        read_telemetry(latin)
    with pytest.raises(TelemetryError, match=r"nope.parquet: no such telemetry file"):
        read_telemetry(tmp_path / "nope.parquet")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(TelemetryError, match=rf"{broken}: not a readable Parquet file"):
        read_telemetry(broken)
    twice = tmp_path / "twice.csv"
    twice.write_text("ts,device_id,quantity,value,value\n", encoding="utf-8")
    with pytest.raises(TelemetryError, match=r"header names column 'value' twice"):
        read_telemetry(twice)
