"""Replayed telemetry: the canonical long format (DESIGN.md §7), its file I/O and validation, alignment to
the twin's step, and the conversion between exogenous profiles and telemetry.

Long format, one measurement per row: ``ts`` (tz-aware UTC, microseconds), ``device_id`` (str), ``quantity``
(a ``Quantity`` value), ``value`` (float), ``quality`` (a ``Quality`` value), ``seq`` (int, the device's
message counter; the quantities a device reports together share one ``seq``).

Device ids for feeder elements are ``"load-<pandapower load index>"`` and ``"sgen-<pandapower sgen index>"``;
fleet assets report under their ``asset_id``. Values follow the load convention like everything inside the
twin: a feeder generator's ``p_kw`` is *negative* while it produces (its pandapower ``sgen.p_mw`` is positive).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pandapower as pp
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from grids.catalog import SIMBENCH_PREFIX, load_feeder
from grids.profiles import DATA_END, DATA_START, ExogenousProfiles, feeder_profiles, utc_timestamp

__all__ = [
    "AlignedTelemetry",
    "TelemetryFile",
    "Quality",
    "Quantity",
    "TELEMETRY_COLUMNS",
    "TelemetryError",
    "align_to_step",
    "export_simbench",
    "load_device_id",
    "load_telemetry",
    "profiles_to_telemetry",
    "read_telemetry",
    "sgen_device_id",
    "telemetry_to_profiles",
    "validate_telemetry",
    "write_telemetry",
]


class Quantity(StrEnum):
    """What a row measures; the unit is in the name. Energies are cumulative register readings."""

    P_KW = "p_kw"
    Q_KVAR = "q_kvar"
    V_PU = "v_pu"
    SOC_PCT = "soc_pct"
    E_IMP_KWH = "e_imp_kwh"
    E_EXP_KWH = "e_exp_kwh"


class Quality(StrEnum):
    """How far a value can be trusted.

    ``good``: measured by the device for this time and accepted. ``estimated``: not measured but computed
    (state estimation, a model, interpolation). ``stale``: an older measurement carried forward because no
    fresh one arrived. ``missing``: no value (``value`` is NaN). ``rejected``: received but failed a check (bad
    signature, implausible); kept for the archive, never used.
    """

    GOOD = "good"
    ESTIMATED = "estimated"
    STALE = "stale"
    MISSING = "missing"
    REJECTED = "rejected"


TELEMETRY_COLUMNS: tuple[str, ...] = ("ts", "device_id", "quantity", "value", "quality", "seq")
_REQUIRED = ("ts", "device_id", "quantity", "value")
_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("us", tz="UTC")),
        ("device_id", pa.string()),
        ("quantity", pa.string()),
        ("value", pa.float64()),
        ("quality", pa.string()),
        ("seq", pa.int64()),
    ]
)
_PARQUET_SUFFIXES = {".parquet", ".pq"}
_CSV_SUFFIXES = {".csv"}
_NAN_TOKENS = {"", "nan", "na", "n/a", "null", "none"}
_HAS_OFFSET = re.compile(r"(Z|[+-]\d{2}(:?\d{2})?)$", re.IGNORECASE)
_QUANTITIES = frozenset(q.value for q in Quantity)
_QUALITIES = frozenset(q.value for q in Quality)
_USABLE = (Quality.GOOD.value, Quality.ESTIMATED.value)


class TelemetryError(ValueError):
    """Bad telemetry; the message names the row, the field and the value."""


def load_device_id(index: int) -> str:
    return f"load-{index}"


def sgen_device_id(index: int) -> str:
    return f"sgen-{index}"


# ----------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TelemetryFile:
    """A validated telemetry file: the canonical ``frame`` and what was left out of it, counted.

    ``duplicates_dropped``: rows identical to an earlier row with the same (device_id, quantity, seq) — the
    same message received twice. ``unknown_rows_ignored`` / ``unknown_devices``: rows (and the distinct ids)
    of devices the feeder does not have, when told to ignore them.
    """

    frame: pd.DataFrame
    source: str
    rows_read: int
    duplicates_dropped: int = 0
    unknown_rows_ignored: int = 0
    unknown_devices: tuple[str, ...] = ()


def read_telemetry(
    path: str | os.PathLike[str],
    *,
    known_devices: Collection[str] | None = None,
    unknown_devices: str = "error",
) -> pd.DataFrame:
    """Read a CSV or Parquet telemetry file (by suffix) and validate it (see ``validate_telemetry``).

    Rows are numbered from 1 in file order (for CSV, row ``n`` is on line ``n + 1``, after the header).
    """
    return load_telemetry(path, known_devices=known_devices, unknown_devices=unknown_devices).frame


def load_telemetry(
    path: str | os.PathLike[str],
    *,
    known_devices: Collection[str] | None = None,
    unknown_devices: str = "error",
) -> TelemetryFile:
    """``read_telemetry`` with the counts of what was dropped (identical duplicates, ignored devices)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _PARQUET_SUFFIXES | _CSV_SUFFIXES:
        raise TelemetryError(f"{path}: unknown telemetry file suffix {path.suffix!r}; use .csv or .parquet")
    if not path.is_file():
        raise TelemetryError(f"{path}: no such telemetry file")
    if suffix in _PARQUET_SUFFIXES:
        try:
            raw = pd.read_parquet(path)
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise TelemetryError(f"{path}: not a readable Parquet file ({exc})") from None
    else:
        raw = _read_csv_text(path)
    return _validate(raw, known_devices=known_devices, unknown_devices=unknown_devices, source=str(path))


def _read_csv_text(path: Path) -> pd.DataFrame:
    """Every column as text, so a bad value is reported exactly as written (pyarrow: ~10x pandas' speed)."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
    except UnicodeDecodeError as exc:
        raise TelemetryError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start} "
                             "of the header); save the file as UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise TelemetryError(f"{path}: cannot read the header ({exc})") from None
    if not header:
        raise TelemetryError(f"{path}: empty file; expected a header {list(TELEMETRY_COLUMNS)}")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise TelemetryError(f"{path}: header names column {repeated[0]!r} twice")
    try:
        table = pacsv.read_csv(
            path,
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in header}, strings_can_be_null=False
            ),
        )
    except (pa.ArrowInvalid, OSError) as exc:
        raise TelemetryError(f"{path}: not a readable CSV file ({exc})") from None
    return table.to_pandas()


def validate_telemetry(
    raw: pd.DataFrame,
    *,
    known_devices: Collection[str] | None = None,
    unknown_devices: str = "error",
    source: str = "telemetry",
) -> pd.DataFrame:
    """Check ``raw`` and return it in canonical form (columns TELEMETRY_COLUMNS, ``ts`` as UTC microseconds).

    Timestamps keep microseconds (finer digits are truncated). Raises ``TelemetryError`` naming the source,
    the first bad row (numbered from 1), its field and value: a timestamp that does not parse or has no UTC
    offset, an unknown quantity or quality, a non-numeric, boolean or infinite value, a non-integer ``seq``,
    and two rows with the same (device_id, quantity, seq) that differ in any field (both rows are named).
    Identical repeats of a row are dropped (counted by ``load_telemetry``). With ``known_devices``, a row of
    any other device is an error (``unknown_devices="error"``) or is left out (``"ignore"``).
    ``quality`` and ``seq`` are optional: quality defaults to ``good`` and seq to the row number. A NaN
    value (empty, ``nan``, ``null``) is kept, and marked ``missing`` unless it was ``rejected``: nothing
    received is dropped.
    """
    return _validate(raw, known_devices=known_devices, unknown_devices=unknown_devices, source=source).frame


def _validate(
    raw: pd.DataFrame, *, known_devices: Collection[str] | None, unknown_devices: str, source: str
) -> TelemetryFile:
    if unknown_devices not in ("error", "ignore"):
        raise TelemetryError(f"unknown_devices={unknown_devices!r} must be 'error' or 'ignore'")
    missing = [c for c in _REQUIRED if c not in raw.columns]
    if missing:
        raise TelemetryError(f"{source}: missing columns {missing}; expected {list(TELEMETRY_COLUMNS)}")
    raw = raw.reset_index(drop=True)
    ts = _parse_ts(raw["ts"], source)
    device_id = _checked_text(
        raw["device_id"], lambda d: isinstance(d, str) and d != "", source, "device_id", "is not a non-empty string"
    )
    quantity = _checked_text(
        raw["quantity"], _QUANTITIES.__contains__, source, "quantity", f"is not a known quantity {sorted(_QUANTITIES)}"
    )
    value = _parse_values(raw["value"], source)
    if "quality" in raw.columns:
        given = raw["quality"].astype(object).where(raw["quality"].notna(), "").replace("", Quality.GOOD.value)
        quality = _checked_text(
            given, _QUALITIES.__contains__, source, "quality", f"is not a known quality {sorted(_QUALITIES)}"
        )
    else:
        quality = np.full(len(raw), Quality.GOOD.value, dtype=object)
    nan_kept = np.isnan(value) & (quality != Quality.REJECTED.value)
    quality = np.where(nan_kept, Quality.MISSING.value, quality).astype(object)
    seq = _parse_seq(raw["seq"], source) if "seq" in raw.columns else np.arange(len(raw), dtype="int64")
    frame = pd.DataFrame(
        {"ts": ts, "device_id": device_id, "quantity": quantity, "value": value, "quality": quality, "seq": seq}
    )
    repeats = _identical_repeats(frame, source) if "seq" in raw.columns else np.zeros(len(frame), dtype=bool)
    unknown = np.zeros(len(frame), dtype=bool)
    ignored: tuple[str, ...] = ()
    if known_devices is not None:
        known = frozenset(known_devices)
        codes, uniques = pd.factorize(frame["device_id"])
        unknown = ~np.fromiter((u in known for u in uniques), dtype=bool, count=len(uniques))[codes]
        if unknown.any() and unknown_devices == "error":
            _fail_at(int(np.flatnonzero(unknown)[0]), raw["device_id"], source, "device_id",
                     "is not a device of this feeder or fleet (set telemetry.unknown_devices = \"ignore\" "
                     "to leave such rows out)")
        ignored = tuple(sorted(set(frame["device_id"][unknown])))
    keep = ~(repeats | unknown)
    kept = frame[keep].reset_index(drop=True) if not keep.all() else frame
    return TelemetryFile(frame=kept, source=source, rows_read=len(frame), duplicates_dropped=int(repeats.sum()),
                         unknown_rows_ignored=int((unknown & ~repeats).sum()), unknown_devices=ignored)


def _identical_repeats(frame: pd.DataFrame, source: str) -> np.ndarray:
    """Rows that repeat an earlier row with the same (device_id, quantity, seq) exactly (True = drop);
    a ``TelemetryError`` naming both rows and the field when a repeat differs."""
    key = ["device_id", "quantity", "seq"]
    dup = frame.duplicated(key, keep=False).to_numpy()
    repeat = np.zeros(len(frame), dtype=bool)
    if not dup.any():
        return repeat
    rows = np.flatnonzero(dup)
    first = frame.iloc[rows][key].assign(_row=rows).groupby(key, sort=False)["_row"].transform("min").to_numpy()
    columns = {"ts": pd.DatetimeIndex(frame["ts"]).asi8, "value": frame["value"].to_numpy(float),
               "quality": frame["quality"].to_numpy(object)}
    for field, column in columns.items():
        a, b = column[rows], column[first]
        same = (a == b) | (np.isnan(a) & np.isnan(b)) if field == "value" else (a == b)
        if not np.all(same):
            i = int(np.flatnonzero(~same)[0])
            j, k = int(first[i]), int(rows[i])
            shown = [_plain(frame[field].iloc[r]) for r in (j, k)]
            raise TelemetryError(
                f"{source}: rows {j + 1} and {k + 1}: device {frame['device_id'].iloc[k]!r} quantity "
                f"{frame['quantity'].iloc[k]!r} seq {frame['seq'].iloc[k]} is reported twice with different field "
                f"{field!r}: {shown[0]!r} and {shown[1]!r}"
            )
    repeat[rows] = rows != first
    return repeat


def _plain(value: Any) -> Any:
    """A value as the user wrote it: Python scalars (numpy's repr is ``np.float64(1.5)``), times in ISO 8601."""
    if isinstance(value, np.generic):
        value = value.item()
    return value.isoformat() if isinstance(value, pd.Timestamp) else value


def _fail_at(i: int, column: pd.Series, source: str, field: str, problem: str) -> None:
    raise TelemetryError(f"{source}: row {i + 1}: field {field!r}: value {_plain(column.iloc[i])!r} {problem}")


def _checked_text(
    column: pd.Series, is_valid: Callable[[Any], bool], source: str, field: str, problem: str
) -> np.ndarray:
    """``column`` as an object array after checking each distinct value once (ids repeat a lot)."""
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    valid = np.fromiter((bool(is_valid(u)) for u in uniques), dtype=bool, count=len(uniques))
    if not valid.all():
        _fail_at(int(np.flatnonzero(~valid[codes])[0]), column, source, field, problem)
    # Plain str values (StrEnum members and numpy strings included), as after a file round trip.
    return np.array([str(u) for u in uniques], dtype=object)[codes]


def _parse_ts(column: pd.Series, source: str) -> pd.DatetimeIndex:
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        return pd.DatetimeIndex(column).tz_convert("UTC").as_unit("us")
    if pd.api.types.is_datetime64_dtype(column.dtype):
        if len(column):
            _fail_at(0, column, source, "ts", "has no time zone; timestamps must be UTC")
    # Parse each distinct stamp once: a feeder's telemetry repeats every stamp for every device.
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    texts = pd.Series(uniques, dtype=object).map(lambda v: v.strip() if isinstance(v, str) else v)
    has_offset = texts.map(lambda v: isinstance(v, str) and bool(_HAS_OFFSET.search(v))).to_numpy(dtype=bool)
    parsed = pd.to_datetime(texts.astype(object).where(has_offset, None), utc=True, format="ISO8601", errors="coerce")
    bad_unique = pd.isna(parsed).to_numpy() | ~has_offset
    if bad_unique.any():
        i = int(np.flatnonzero(bad_unique[codes])[0])
        problem = "is not an ISO 8601 timestamp with a UTC offset (e.g. 2016-01-01T00:00:00Z)"
        text = texts.iloc[codes[i]]
        naive_ok = isinstance(text, str) and not pd.isna(pd.to_datetime(text, format="ISO8601", errors="coerce"))
        if not has_offset[codes[i]] and naive_ok:
            problem = "has no UTC offset; timestamps must be UTC (e.g. 2016-01-01T00:00:00Z)"
        _fail_at(i, column, source, "ts", problem)
    return pd.DatetimeIndex(parsed[codes]).as_unit("us")


def _parse_values(column: pd.Series, source: str) -> np.ndarray:
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        if len(column):
            _fail_at(0, column, source, "value", "is a boolean, not a number")
        return np.zeros(0)
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        value = column.to_numpy(dtype="float64", na_value=np.nan)
    elif dtype == object or pd.api.types.is_string_dtype(dtype):
        text = column.astype(object)
        is_bool = text.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
        if is_bool.any():
            _fail_at(int(np.flatnonzero(is_bool)[0]), column, source, "value", "is a boolean, not a number")
        is_token = text.map(lambda v: v is None or (isinstance(v, float) and np.isnan(v))
                            or (isinstance(v, str) and v.strip().lower() in _NAN_TOKENS))
        text = text.where(~is_token, "nan")
        numeric = text.map(lambda v: isinstance(v, (str, int, float, np.integer, np.floating))).to_numpy(dtype=bool)
        try:
            if not numeric.all():
                raise TypeError("not text or a number")
            # numpy parses text with Python's float(): correctly rounded, unlike pandas' fast to_numeric.
            value = text.to_numpy().astype("float64")
        except (ValueError, TypeError, OverflowError):
            parsed = pd.to_numeric(text.where(numeric, None), errors="coerce")
            bad = (parsed.isna().to_numpy() | ~numeric) & ~is_token.to_numpy(dtype=bool)
            _fail_at(int(np.flatnonzero(bad)[0]) if bad.any() else 0, column, source, "value", "is not a number")
    else:
        if len(column):
            _fail_at(0, column, source, "value", f"has dtype {dtype}, not a number")
        return np.zeros(0)
    if np.isinf(value).any():
        _fail_at(int(np.flatnonzero(np.isinf(value))[0]), column, source, "value", "is not a finite number")
    return value


def _parse_seq(column: pd.Series, source: str) -> np.ndarray:
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype):
        if len(column):
            _fail_at(0, column, source, "seq", "is a boolean, not an integer")
        return np.zeros(0, dtype="int64")
    if pd.api.types.is_integer_dtype(dtype) and not column.isna().any():
        return column.to_numpy(dtype="int64")
    if not (pd.api.types.is_numeric_dtype(dtype) or dtype == object or pd.api.types.is_string_dtype(dtype)) \
            or pd.api.types.is_complex_dtype(dtype):
        if len(column):
            _fail_at(0, column, source, "seq", f"has dtype {dtype}, not an integer")
        return np.zeros(0, dtype="int64")
    values = column.astype(object)
    is_bool = values.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
    if is_bool.any():
        _fail_at(int(np.flatnonzero(is_bool)[0]), column, source, "seq", "is a boolean, not an integer")
    numeric = pd.to_numeric(values.where(values.map(lambda v: isinstance(v, (str, int, float, np.number))), None),
                            errors="coerce").astype("float64")
    with np.errstate(invalid="ignore"):
        bad = (numeric.isna() | (numeric != np.floor(numeric)) | (numeric.abs() >= 2.0**63)).to_numpy(dtype=bool)
    if bad.any():
        _fail_at(int(np.flatnonzero(bad)[0]), column, source, "seq", "is not an integer")
    return numeric.to_numpy().astype("int64")


# ----------------------------------------------------------------------------------------------- writing


def write_telemetry(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write long-format telemetry as Parquet (``ts`` as ``timestamp[us, tz=UTC]``) or CSV, by suffix.

    CSV stamps are ISO 8601 in UTC with microseconds and a ``Z`` (``2016-06-01T00:00:00.000000Z``); values are
    written in the shortest form that reads back to the same float.
    """
    _write_chunks([df], Path(path))


def _write_chunks(chunks: Iterable[pd.DataFrame], path: Path) -> int:
    suffix = path.suffix.lower()
    if suffix not in _PARQUET_SUFFIXES | _CSV_SUFFIXES:
        raise TelemetryError(f"{path}: unknown telemetry file suffix {path.suffix!r}; use .csv or .parquet")
    rows = 0
    if suffix in _PARQUET_SUFFIXES:
        with pq.ParquetWriter(path, _SCHEMA) as writer:
            for chunk in chunks:
                writer.write_table(_to_arrow(chunk))
                rows += len(chunk)
        return rows
    with open(path, "wb") as handle:
        # Our own header: pyarrow quotes header names even when the rows need no quotes.
        handle.write((",".join(TELEMETRY_COLUMNS) + "\n").encode())
        for chunk in chunks:
            table = _to_arrow(chunk)
            # numpy renders UTC with a trailing Z, vectorized (strftime is ~100x slower on a year of rows).
            naive = pd.DatetimeIndex(chunk["ts"]).tz_convert("UTC").tz_localize(None).as_unit("us").to_numpy()
            stamps = pa.array(np.datetime_as_string(naive, unit="us", timezone="UTC"), type=pa.string())
            table = table.set_column(0, "ts", stamps)
            pacsv.write_csv(
                table,
                handle,
                write_options=pacsv.WriteOptions(include_header=False, quoting_style=_csv_quoting(chunk)),
            )
            rows += len(chunk)
    return rows


def _csv_quoting(chunk: pd.DataFrame) -> str:
    # Quote only when some text could break a plain CSV line (an id with a comma); usually none can.
    specials = (",", '"', "\n", "\r")
    texts = (text for column in ("device_id", "quantity", "quality") for text in pd.unique(chunk[column].astype(str)))
    return "needed" if any(c in text for text in texts for c in specials) else "none"


def _to_arrow(df: pd.DataFrame) -> pa.Table:
    missing = [c for c in TELEMETRY_COLUMNS if c not in df.columns]
    if missing:
        raise TelemetryError(f"telemetry frame lacks columns {missing}; expected {list(TELEMETRY_COLUMNS)}")
    ts = pd.DatetimeIndex(df["ts"])
    if ts.tz is None:
        raise TelemetryError("telemetry column 'ts' has no time zone; timestamps must be UTC")
    arrays = [
        pa.array(ts.tz_convert("UTC").as_unit("us"), type=_SCHEMA.field("ts").type),
        pa.array(df["device_id"].astype(str).to_numpy(), type=pa.string()),
        pa.array(df["quantity"].astype(str).to_numpy(), type=pa.string()),
        pa.array(df["value"].to_numpy(dtype="float64"), type=pa.float64()),
        pa.array(df["quality"].astype(str).to_numpy(), type=pa.string()),
        pa.array(df["seq"].to_numpy(dtype="int64"), type=pa.int64()),
    ]
    return pa.Table.from_arrays(arrays, schema=_SCHEMA)


# ----------------------------------------------------------------------------------------------- alignment


@dataclass(frozen=True)
class AlignedTelemetry:
    """One quantity on the twin's grid: index = interval start (UTC, fixed freq), columns = device_id.

    ``values``: mean of the usable samples with ``ts`` in ``[t, t + step)``, else the last such mean carried
    forward (at most ``max_fill`` intervals), else NaN. ``quality`` (same shape, ``Quality`` values): ``good``
    if any good sample fell in the interval, ``estimated`` if only estimated ones did, ``stale`` if carried
    forward, ``missing`` if NaN.
    """

    values: pd.DataFrame
    quality: pd.DataFrame


def align_to_step(
    df: pd.DataFrame,
    *,
    quantity: Quantity | str,
    start: Any,
    end: Any,
    step: pd.Timedelta,
    max_fill: int = 4,
    devices: Sequence[str] | None = None,
) -> AlignedTelemetry:
    """Put one ``quantity`` of long-format telemetry on the grid ``[start, end)`` with ``step``.

    Usable samples are those with quality ``good`` or ``estimated`` and a value; ``stale`` input rows are
    ignored (this function does its own carrying forward), as are ``missing`` and ``rejected`` ones. Samples
    up to ``max_fill`` steps before ``start`` may feed a stale value into the first intervals. Columns are
    ``devices`` if given (absent ones are all missing), else every device reporting ``quantity`` in ``df``.
    """
    quantity = Quantity(quantity)
    start_ts, end_ts = utc_timestamp(start, name="start"), utc_timestamp(end, name="end")
    step = pd.Timedelta(step)
    if step <= pd.Timedelta(0) or not end_ts > start_ts:
        raise TelemetryError(f"need step > 0 and end > start; got step={step}, start={start_ts}, end={end_ts}")
    if max_fill < 0:
        raise TelemetryError(f"max_fill={max_fill!r} must be >= 0")
    of_quantity = df[df["quantity"] == quantity.value]
    columns = pd.Index(sorted(of_quantity["device_id"].unique()) if devices is None else list(devices), dtype=object)
    columns.name = "device_id"
    lookback = start_ts - max_fill * step
    n_lookback = max_fill
    n_out = int(-(-(end_ts - start_ts) // step))
    ts = pd.DatetimeIndex(of_quantity["ts"])
    usable = (
        of_quantity["quality"].isin(_USABLE).to_numpy()
        & of_quantity["value"].notna().to_numpy()
        & (ts >= lookback)
        & (ts < start_ts + n_out * step)
    )
    samples = of_quantity[usable]
    bins = ((pd.DatetimeIndex(samples["ts"]) - lookback) // step).to_numpy()
    grouped = samples.assign(bin=bins, is_good=samples["quality"].eq(Quality.GOOD.value)).groupby(
        ["bin", "device_id"], sort=True
    )
    positions = pd.RangeIndex(n_lookback + n_out)
    mean = grouped["value"].mean().unstack("device_id").reindex(index=positions, columns=columns)
    n_good = grouped["is_good"].sum().unstack("device_id").reindex(index=positions, columns=columns)
    measured = mean.notna()
    filled = mean.ffill(limit=max_fill) if max_fill > 0 else mean
    quality = pd.DataFrame(Quality.MISSING.value, index=positions, columns=columns, dtype=object)
    quality = quality.mask(filled.notna() & ~measured, Quality.STALE.value)
    quality = quality.mask(measured, Quality.ESTIMATED.value)
    quality = quality.mask(measured & (n_good > 0), Quality.GOOD.value)
    index = pd.date_range(start_ts, periods=n_out, freq=step, name="time")
    values = filled.iloc[n_lookback:].set_axis(index).astype("float64")
    return AlignedTelemetry(values=values, quality=quality.iloc[n_lookback:].set_axis(index))


# ----------------------------------------------------------------------------------------------- profiles


def profiles_to_telemetry(profiles: ExogenousProfiles, net: pp.pandapowerNet) -> pd.DataFrame:
    """Long-format telemetry of the feeder's loads (``p_kw``, ``q_kvar``) and sgens (``p_kw``, negative when
    producing: load convention), quality ``good``. ``seq`` counts steps since 2016-01-01T00:00Z, the data
    epoch, so windows exported separately never reuse a seq. Rows are ordered by time; within a time come
    every load's ``p_kw``, then every load's ``q_kvar``, then every sgen's ``p_kw``, in element-index order.
    """
    for name, frame, element in (
        ("load_p_mw", profiles.load_p_mw, net.load),
        ("load_q_mvar", profiles.load_q_mvar, net.load),
        ("sgen_p_mw", profiles.sgen_p_mw, net.sgen),
    ):
        if not frame.columns.equals(element.index):
            raise TelemetryError(f"profiles.{name} columns do not match the net's element index")
    load_ids = [load_device_id(int(i)) for i in net.load.index]
    sgen_ids = [sgen_device_id(int(i)) for i in net.sgen.index]
    device = np.array(load_ids + load_ids + sgen_ids, dtype=object)
    quantity = np.array(
        [Quantity.P_KW.value] * len(load_ids) + [Quantity.Q_KVAR.value] * len(load_ids)
        + [Quantity.P_KW.value] * len(sgen_ids),
        dtype=object,
    )
    matrix = np.hstack(
        [
            profiles.load_p_mw.to_numpy(dtype="float64") * 1e3,
            profiles.load_q_mvar.to_numpy(dtype="float64") * 1e3,
            profiles.sgen_p_mw.to_numpy(dtype="float64") * -1e3,  # generator output -> load convention
        ]
    )
    index = profiles.index
    n_t, n_k = matrix.shape
    seq = ((index - DATA_START) // profiles.step).to_numpy().astype("int64")
    # Repeat naive UTC datetime64 values: a tz-aware index's to_numpy() would give slow Timestamp objects.
    naive = index.tz_convert("UTC").tz_localize(None).as_unit("us").to_numpy()
    return pd.DataFrame(
        {
            "ts": pd.DatetimeIndex(np.repeat(naive, n_k)).tz_localize("UTC"),
            "device_id": np.tile(device, n_t),
            "quantity": np.tile(quantity, n_t),
            "value": matrix.ravel(),  # row-major: time-major, devices within a time
            "quality": np.full(n_t * n_k, Quality.GOOD.value, dtype=object),
            "seq": np.repeat(seq, n_k),
        }
    )


def telemetry_to_profiles(
    df: pd.DataFrame,
    net: pp.pandapowerNet,
    *,
    start: Any,
    end: Any,
    step: pd.Timedelta,
    pv_per_mwp: pd.Series,
    flex_per_mw: pd.Series,
    max_fill: int = 4,
    source: str = "telemetry",
) -> ExogenousProfiles:
    """Rebuild ``ExogenousProfiles`` for ``net`` from long-format telemetry (the inverse of
    ``profiles_to_telemetry``), aligned with ``align_to_step``. Stale fills are accepted; an interval still
    missing for some device, or shapes that do not cover the grid, raise ``TelemetryError`` (prefixed with
    ``source``, the file's name).
    """
    load_ids = [load_device_id(int(i)) for i in net.load.index]
    sgen_ids = [sgen_device_id(int(i)) for i in net.sgen.index]
    grid = dict(start=start, end=end, step=step, max_fill=max_fill)
    load_p = align_to_step(df, quantity=Quantity.P_KW, devices=load_ids, **grid)
    load_q = align_to_step(df, quantity=Quantity.Q_KVAR, devices=load_ids, **grid)
    sgen_p = align_to_step(df, quantity=Quantity.P_KW, devices=sgen_ids, **grid)
    for aligned, quantity in ((load_p, Quantity.P_KW), (load_q, Quantity.Q_KVAR), (sgen_p, Quantity.P_KW)):
        gaps = aligned.values.isna()
        if gaps.any().any():
            device = gaps.any()[gaps.any()].index[0]
            first = gaps[device].idxmax()
            raise TelemetryError(
                f"{source}: device {device!r} quantity {quantity.value!r}: no value at {first.isoformat()} "
                f"(nor within {max_fill} steps before it)"
            )
    index = load_p.values.index
    shapes = {}
    for name, series in (("pv_per_mwp", pv_per_mwp), ("flex_per_mw", flex_per_mw)):
        shaped = series.reindex(index)
        if shaped.isna().any():
            raise TelemetryError(
                f"{name} has no value at {shaped.index[shaped.isna()][0].isoformat()} of the grid"
            )
        shapes[name] = shaped.rename(name)
    return ExogenousProfiles(
        load_p_mw=(load_p.values / 1e3).set_axis(net.load.index, axis=1),
        load_q_mvar=(load_q.values / 1e3).set_axis(net.load.index, axis=1),
        sgen_p_mw=(sgen_p.values / -1e3).set_axis(net.sgen.index, axis=1),
        pv_per_mwp=shapes["pv_per_mwp"],
        flex_per_mw=shapes["flex_per_mw"],
    )


def export_simbench(code: str, out_path: str | os.PathLike[str]) -> int:
    """Write SimBench feeder ``code``'s whole year (2016, 15 min) of load p/q and sgen p in long format.

    Backs ``gridtwin telemetry export-simbench CODE --out FILE``; the format follows the suffix (.parquet or
    .csv). Written a month at a time so memory stays bounded on large feeders. Returns the number of rows.
    """
    code = code.removeprefix(SIMBENCH_PREFIX)
    net = load_feeder(SIMBENCH_PREFIX + code)
    profiles = feeder_profiles(net, start=DATA_START, end=DATA_END)
    months = pd.date_range(DATA_START, DATA_END, freq="MS")
    chunks = (
        profiles_to_telemetry(profiles.window(a, b), net) for a, b in zip(months[:-1], months[1:], strict=True)
    )
    return _write_chunks(chunks, Path(out_path))
