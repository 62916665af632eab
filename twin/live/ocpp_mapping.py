"""OCPP 2.0.1 payloads ⇄ canonical live telemetry: pure functions, no I/O.

In: a ``meterValue`` list (of MeterValues or TransactionEvent) becomes one canonical telemetry sample per
timestamp. Measurands (totals only; per-phase values are ignored): ``Power.Active.Import`` / ``.Export`` → p_kw
(load convention: import positive), ``Power.Reactive.Import`` / ``.Export`` → q_kvar,
``Energy.Active.Import.Register`` / ``.Export.Register`` → e_imp_kwh / e_exp_kwh, ``SoC`` → soc_pct. Units W,
kW, Wh, kWh, var, kvar, Percent with ``multiplier`` (a power of ten) are converted; a sampled value without a
measurand is, as OCPP says, the import energy register in Wh. Reactive power and the export register default
to 0 when a charger does not measure them (a V1G charger exports nothing); active power and the import
register are required.

Out: a setpoint schedule (the controller's, as the device holds it: one value per interval) becomes a
``TxProfile`` (absolute, in W, one ``chargingSchedulePeriod`` per interval) for ``SetChargingProfile``. OCPP 2.0.1 limits
charging only: a discharge setpoint is sent as limit 0 and the caller is told (``ProfileRequest.clipped``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from twin.live.canonical import telemetry_from_values
from twin.live.messages import MessageError, TelemetryPayload

__all__ = ["ProfileRequest", "describe_profile", "meter_value_samples", "parse_ocpp_time", "remaining_periods_kw",
           "tx_profile"]

#: measurand → (canonical quantity, sign)
_MEASURANDS: dict[str, tuple[str, float]] = {
    "Power.Active.Import": ("p_kw", 1.0),
    "Power.Active.Export": ("p_kw", -1.0),
    "Power.Reactive.Import": ("q_kvar", 1.0),
    "Power.Reactive.Export": ("q_kvar", -1.0),
    "Energy.Active.Import.Register": ("e_imp_kwh", 1.0),
    "Energy.Active.Export.Register": ("e_exp_kwh", 1.0),
    "SoC": ("soc_pct", 1.0),
}
#: unit → (canonical unit it converts to, factor)
_UNITS: dict[str, dict[str, float]] = {
    "p_kw": {"W": 1e-3, "kW": 1.0},
    "q_kvar": {"var": 1e-3, "kvar": 1.0, "varh": 1e-3},
    "e_imp_kwh": {"Wh": 1e-3, "kWh": 1.0},
    "e_exp_kwh": {"Wh": 1e-3, "kWh": 1.0},
    "soc_pct": {"Percent": 1.0},
}
_DEFAULT_UNIT = {"p_kw": "W", "q_kvar": "var", "e_imp_kwh": "Wh", "e_exp_kwh": "Wh", "soc_pct": "Percent"}
_OPTIONAL_ZERO = ("q_kvar", "e_exp_kwh")


def parse_ocpp_time(value: Any, *, field: str) -> datetime:
    """An OCPP dateTime (RFC 3339 with an offset); ``MessageError`` names the field and the value."""
    if not isinstance(value, str):
        raise MessageError(f"field {field!r} value {value!r} is not a date-time string")
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise MessageError(f"field {field!r} value {value!r} is not an RFC 3339 date-time") from None
    if ts.tzinfo is None:
        raise MessageError(f"field {field!r} value {value!r} has no UTC offset")
    return ts


def _value(sampled: Mapping[str, Any], *, where: str) -> tuple[str, float] | None:
    measurand = sampled.get("measurand", "Energy.Active.Import.Register")
    if sampled.get("phase") is not None or measurand not in _MEASURANDS:
        return None
    quantity, sign = _MEASURANDS[measurand]
    unit_of_measure = sampled.get("unitOfMeasure") or {}
    unit = unit_of_measure.get("unit", _DEFAULT_UNIT[quantity])
    factor = _UNITS[quantity].get(unit)
    if factor is None:
        allowed = ", ".join(_UNITS[quantity])
        raise MessageError(f"field '{where}.unitOfMeasure.unit' value {unit!r} is not a unit of {measurand} "
                           f"(expected one of {allowed})")
    multiplier = unit_of_measure.get("multiplier", 0)
    value = sampled.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MessageError(f"field '{where}.value' value {value!r} is not a number")
    scaled = float(value) * (10.0 ** int(multiplier)) if multiplier else float(value)
    return quantity, sign * scaled * factor if factor != 1.0 else sign * scaled


def meter_value_samples(device_id: str, meter_values: Sequence[Mapping[str, Any]], *,
                        field: str = "meterValue") -> list[TelemetryPayload | MessageError]:
    """One canonical sample per ``meterValue`` entry (in order), or the error that entry has."""
    out: list[TelemetryPayload | MessageError] = []
    for i, entry in enumerate(meter_values):
        where = f"{field}[{i}]"
        try:
            ts = parse_ocpp_time(entry.get("timestamp"), field=f"{where}.timestamp")
            values: dict[str, float] = {}
            for j, sampled in enumerate(entry.get("sampledValue") or ()):
                found = _value(sampled, where=f"{where}.sampledValue[{j}]")
                if found is not None:
                    quantity, value = found
                    values[quantity] = values.get(quantity, 0.0) + value
            for quantity in _OPTIONAL_ZERO:
                values.setdefault(quantity, 0.0)
            out.append(telemetry_from_values(device_id, ts=ts, values=values))
        except MessageError as exc:
            out.append(MessageError(f"{where}: {exc}"))
    return out


@dataclass(frozen=True, kw_only=True)
class ProfileRequest:
    """A ``SetChargingProfile`` request for one charger: what goes on the wire, and what was changed."""

    evse_id: int
    profile: dict[str, Any]  # snake_case, as the ocpp library's ``call.SetChargingProfile`` takes it
    limit_w: tuple[float, ...]
    clipped: bool  # a discharge setpoint was sent as 0 (OCPP 2.0.1 has no discharge limit)


def remaining_periods_kw(plan_mw: np.ndarray, *, held_from: datetime, at: datetime,
                         step: timedelta) -> list[tuple[int, float]]:
    """What is left at interval ``at`` of a plan held since interval ``held_from`` (MW per interval, load
    convention): one (seconds from ``at``, kW) period per interval; empty once the plan ran out."""
    rest = np.asarray(plan_mw, dtype=float)[max(0, (at - held_from) // step):]
    step_s = int(step.total_seconds())
    return [(k * step_s, kw) for k, kw in enumerate((rest * 1000.0).tolist())]


def tx_profile(*, profile_id: int, transaction_id: str, start: datetime, periods_kw: Sequence[tuple[int, float]],
               valid_to: datetime, evse_id: int = 1) -> ProfileRequest:
    """A TxProfile that follows ``periods_kw`` — (seconds from ``start``, kW) pairs, the first at 0, offsets
    increasing — until ``valid_to`` (the setpoint's expiry): one ``chargingSchedulePeriod`` per pair. Limits are
    in W (``chargingRateUnit`` W throughout) with one decimal, as the schema allows."""
    offsets = [offset for offset, _ in periods_kw]
    if not offsets or offsets[0] != 0 or any(b <= a for a, b in zip(offsets, offsets[1:])):
        raise ValueError(f"periods_kw={list(periods_kw)!r}: the first period must start at offset 0 and the "
                         "offsets must increase")
    limits = tuple(round(max(kw, 0.0) * 1000.0, 1) for _, kw in periods_kw)
    clipped = any(kw < 0 for _, kw in periods_kw)
    schedule = {
        "id": profile_id,
        "start_schedule": _rfc3339(start),
        "duration": max(1, int((valid_to - start).total_seconds())),
        "charging_rate_unit": "W",
        "charging_schedule_period": [{"start_period": int(offset), "limit": limit}
                                     for (offset, _), limit in zip(periods_kw, limits, strict=True)],
    }
    profile = {
        "id": profile_id, "stack_level": 0, "charging_profile_purpose": "TxProfile",
        "charging_profile_kind": "Absolute", "valid_from": _rfc3339(start), "valid_to": _rfc3339(valid_to),
        "transaction_id": transaction_id, "charging_schedule": [schedule],
    }
    return ProfileRequest(evse_id=evse_id, profile=profile, limit_w=limits, clipped=clipped)


def describe_profile(request: ProfileRequest) -> str:
    """One line for the archive: the TxProfile's periods as sent (W from offset s) and its validity."""
    schedule = request.profile["charging_schedule"][0]
    periods = ", ".join(f"{p['limit']:g} W from {p['start_period']} s" for p in schedule["charging_schedule_period"])
    return (f"TxProfile {request.profile['id']} from {schedule['start_schedule']} until "
            f"{request.profile['valid_to']}: {periods}")


def _rfc3339(ts: datetime) -> str:
    return ts.isoformat(timespec="microseconds").replace("+00:00", "Z")
