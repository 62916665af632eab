"""Key performance indicators of one policy's run, computed from its recorded tables.

Energy is integrated over each interval's length (``step``), never with a hidden step size. EV energy
unmet counts what cars that left during the run still needed *and* what cars still plugged in at the end
are owed (``ev_unmet_at_end_mwh``, replayed from the recorded charger power), so a policy that defers
charging past the end of the run never looks cheaper for free.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from controllers.api import NetworkLimits
from twin.records.recorder import PolicyRecords

__all__ = ["Kpis", "compute_kpis", "ev_energy_owed_at_end_mwh", "kpi_table", "KPI_LABELS"]

KPI_LABELS: dict[str, str] = {
    "energy_cost_eur": "Energy cost [EUR]",
    "energy_imported_mwh": "Energy imported [MWh]",
    "energy_exported_mwh": "Energy exported [MWh]",
    "peak_import_mw": "Peak import [MW]",
    "losses_mwh": "Losses [MWh]",
    "voltage_violation_bus_intervals": "Voltage violations [bus-intervals]",
    "overload_element_intervals": "Overloads [element-intervals]",
    "ev_unmet_mwh": "EV energy unmet [MWh]",
    "ev_unmet_at_end_mwh": "of which owed to EVs still plugged in at the end [MWh]",
    "pv_curtailed_mwh": "PV curtailed [MWh]",
    "flex_unserved_mwh": "Flex energy past deadline [MWh]",
    "non_converged_intervals": "Non-converged power flows",
    "clipped_setpoints": "Clipped setpoints",
    "compute_ms_per_step": "Controller time [ms/step]",
    "messages": "Messages",
    "kbytes": "Traffic [kB]",
    "central_kbytes": "Participant data at a central point [kB]",
    "controller_offline_intervals": "Intervals without a controller",
    "operator_cost_eur": "Operator pays participants [EUR]",
    "participant_earnings_eur": "Participants earn [EUR]",
}


@dataclass(frozen=True)
class Kpis:
    energy_cost_eur: float
    energy_imported_mwh: float
    energy_exported_mwh: float
    peak_import_mw: float
    losses_mwh: float
    voltage_violation_bus_intervals: int
    overload_element_intervals: int
    #: Energy cars did not get: still needed at departure during the run, plus ``ev_unmet_at_end_mwh``.
    ev_unmet_mwh: float
    #: Energy still owed at the end of the run to cars plugged in then (NaN when the sessions are not known).
    ev_unmet_at_end_mwh: float
    pv_curtailed_mwh: float
    flex_unserved_mwh: float
    non_converged_intervals: int
    clipped_setpoints: int
    compute_ms_per_step: float
    messages: int
    kbytes: float
    central_kbytes: float
    controller_offline_intervals: int
    operator_cost_eur: float
    participant_earnings_eur: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def ev_energy_owed_at_end_mwh(records: PolicyRecords, *, ev_sessions: pd.DataFrame, assets: pd.DataFrame) -> float:
    """Energy still owed (MWh) at the end of the run to the EVs plugged in then.

    Replays each such session on the recorded charger power as the device physics does: plugged in at its
    arrival, the need falls by ``charge × eta_charge × h − discharge / eta_discharge × h`` per interval and
    never below zero. A session counts when it arrived before the end and leaves after it.
    """
    index = records.asset_p_mw.index
    if len(index) == 0 or len(ev_sessions) == 0:
        return 0.0
    end = index[-1] + records.step
    hours = records.step / pd.Timedelta("1h")
    open_at_end = ev_sessions[(ev_sessions["arrival"] < end) & (ev_sessions["departure"] > end)]
    owed = 0.0
    for session in open_at_end.itertuples(index=False):
        asset = str(session.asset_id)
        if asset not in records.asset_p_mw.columns:
            continue
        row = assets.loc[session.asset_id]
        p = records.asset_p_mw.loc[index >= session.arrival, asset].to_numpy(float)
        stored = np.maximum(p, 0.0) * float(row["eta_charge"]) - np.maximum(-p, 0.0) / float(row["eta_discharge"])
        delta = stored * hours
        need = float(session.energy_mwh)
        for d in delta:
            need = max(need - d, 0.0)
        owed += need
    return owed


def compute_kpis(records: PolicyRecords, *, limits: NetworkLimits = NetworkLimits(),
                 ev_sessions: pd.DataFrame | None = None, assets: pd.DataFrame | None = None) -> Kpis:
    """KPIs of one policy. With the run's ``ev_sessions`` and ``assets`` the energy still owed to EVs plugged
    in at the end is counted in ``ev_unmet_mwh`` (and shown alone as ``ev_unmet_at_end_mwh``); without them
    (a live view) only the sessions that ended are counted and ``ev_unmet_at_end_mwh`` is NaN."""
    s = records.summary
    hours = records.step / pd.Timedelta("1h")
    p = s["p_head_mw"]
    vm = records.vm_pu.to_numpy(float)
    with np.errstate(invalid="ignore"):
        v_viol = int(np.sum((vm < limits.v_min_pu) | (vm > limits.v_max_pu)))
        loadings = np.hstack([records.line_loading_percent.to_numpy(float), records.trafo_loading_percent.to_numpy(float)])
        overloads = int(np.sum(loadings > limits.loading_max_percent))
    known = ev_sessions is not None and assets is not None
    at_end = ev_energy_owed_at_end_mwh(records, ev_sessions=ev_sessions, assets=assets) if known else float("nan")
    departed = float(s["ev_unmet_mwh"].sum())
    return Kpis(
        energy_cost_eur=float(s["cost_eur"].sum()),
        energy_imported_mwh=float(p.clip(lower=0).sum() * hours),
        energy_exported_mwh=float((-p).clip(lower=0).sum() * hours),
        peak_import_mw=float(p.max()) if len(p) else float("nan"),
        losses_mwh=float(s["losses_mw"].sum() * hours),
        voltage_violation_bus_intervals=v_viol,
        overload_element_intervals=overloads,
        ev_unmet_mwh=departed + (at_end if known else 0.0),
        ev_unmet_at_end_mwh=at_end,
        pv_curtailed_mwh=float(s["pv_curtailed_mwh"].sum()),
        flex_unserved_mwh=float(s["flex_unserved_mwh"].sum()),
        non_converged_intervals=int((~s["converged"].astype(bool)).sum()),
        clipped_setpoints=int(s["n_clipped"].sum()),
        compute_ms_per_step=float(s["compute_s"].mean() * 1e3) if len(s) else 0.0,
        messages=int(s["messages"].sum()),
        kbytes=float(s["bytes"].sum() / 1e3),
        central_kbytes=float(s["central_bytes"].sum() / 1e3),
        controller_offline_intervals=int((~s["controller_online"].astype(bool)).sum()),
        operator_cost_eur=float(-s["operator_eur"].sum()) + 0.0,  # + 0.0 turns -0.0 into 0.0
        participant_earnings_eur=float(s["participants_eur"].sum()),
    )


def kpi_table(kpis: dict[str, Kpis]) -> pd.DataFrame:
    """KPI × policy, rows in KPI_LABELS order."""
    return pd.DataFrame({name: k.as_dict() for name, k in kpis.items()}).reindex(list(KPI_LABELS))
