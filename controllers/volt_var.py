"""IEEE 1547-2018 Category B volt-var: the autonomous reactive-power behaviour of inverters.

One implementation for everyone who needs it: the twin's devices when they run on their own default, and
edge agents acting alone. Load convention: q_mvar = -share * s_max_mva (a positive share injects vars).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from controllers.api import AssetKind

__all__ = ["VOLT_VAR_Q_SHARE", "VOLT_VAR_V_PU", "volt_var_q_mvar", "volt_var_q_share"]


#: The curve's breakpoints: voltage (pu) and reactive-power injection as a share of rated S.
VOLT_VAR_V_PU = np.array([0.92, 0.98, 1.02, 1.08])
VOLT_VAR_Q_SHARE = np.array([0.44, 0.0, 0.0, -0.44])


def volt_var_q_share(vm_pu: np.ndarray | float) -> np.ndarray:
    """Reactive power *injection* as a share of rated S: +0.44 at V <= 0.92, 0 on 0.98..1.02, -0.44 at
    V >= 1.08, linear in between (REFERENCES.md). Positive injects vars and raises the voltage."""
    v = np.asarray(vm_pu, dtype=float)
    return np.interp(v, VOLT_VAR_V_PU, VOLT_VAR_Q_SHARE)


def volt_var_q_mvar(assets: pd.DataFrame, vm_pu: pd.Series) -> pd.Series:
    """Each asset's volt-var setpoint (Mvar, load convention) from the voltage at its bus (``vm_pu`` by bus;
    an unknown voltage counts as 1 pu). Only inverters (PV, batteries) make reactive power."""
    inverter = assets["kind"].astype(str).isin([AssetKind.PV, AssetKind.BATTERY]).to_numpy()
    vm = vm_pu.reindex(assets["bus"]).to_numpy(float)
    share = volt_var_q_share(np.nan_to_num(vm, nan=1.0))
    return pd.Series(np.where(inverter, -share * assets["s_max_mva"].to_numpy(float), 0.0), index=assets.index)
