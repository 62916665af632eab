"""Test helper: the IEEE European LV feeder built in OpenDSS (dss-python) from the data pandapower ships.

The circuit is written from the same tables the twin uses (pandapower's ``ieee_european_lv_asymmetric`` as the
catalog and ``twin.grid.three_phase.prepare_three_phase_net`` leave them): one OpenDSS bus per pandapower bus,
lines by their sequence impedances, the Dyn transformer, and the external grid as a source that is ideal in the
positive sequence (as pandapower's) with pandapower's short-circuit impedance ``1.1 U² / S_sc`` in the negative
and zero sequence. Loads are single-phase, phase to earth, constant PQ at any voltage (``model=1``, ``vminpu=0``).
Nothing is downloaded: the data are the installed package's.
"""

from __future__ import annotations

import numpy as np
import pandapower as pp

__all__ = ["OpenDssFeeder"]


class OpenDssFeeder:
    """An OpenDSS circuit of a prepared pandapower LV feeder with one single-phase load per (bus, phase)."""

    def __init__(self, net: pp.pandapowerNet) -> None:
        import dss  # test dependency only

        self._engine = dss.DSS
        self._engine.AllowForms = False
        self._text = self._engine.Text
        self._net = net
        self._build()

    def _cmd(self, line: str) -> None:
        self._text.Command = line

    def _build(self) -> None:
        net = self._net
        eg = net.ext_grid.iloc[0]
        hv_kv = float(net.bus.at[eg["bus"], "vn_kv"])
        z = 1.1 * hv_kv**2 / float(eg["s_sc_max_mva"])
        x = z / np.sqrt(1 + float(eg["rx_max"]) ** 2)
        r = float(eg["rx_max"]) * x
        x0 = float(eg["x0x_max"]) * x
        r0 = float(eg["r0x0_max"]) * x0
        self._cmd("clear")
        self._cmd(f"new circuit.feeder basekv={hv_kv} pu={float(eg['vm_pu'])} angle={float(eg['va_degree'])} "
                  f"phases=3 bus1=b{int(eg['bus'])} Z1=[1e-9, 1e-9] Z0=[{r0}, {x0}] Z2=[{r}, {x}]")
        for idx, tr in net.trafo.iterrows():
            z_pct = float(tr["vk_percent"])
            r_pct = float(tr["vkr_percent"])
            x_pct = float(np.sqrt(z_pct**2 - r_pct**2))
            kva = float(tr["sn_mva"]) * 1e3
            self._cmd(f"new transformer.t{idx} phases=3 windings=2 buses=[b{int(tr['hv_bus'])}, "
                      f"b{int(tr['lv_bus'])}.1.2.3.0] conns=[delta, wye] kvs=[{float(tr['vn_hv_kv'])}, "
                      f"{float(tr['vn_lv_kv'])}] kvas=[{kva}, {kva}] xhl={x_pct} %rs=[{r_pct / 2}, {r_pct / 2}] "
                      f"%noloadloss={float(tr['pfe_kw']) / kva * 100} %imag={float(tr['i0_percent'])}")
        for idx, ln in net.line.iterrows():
            self._cmd(f"new line.l{idx} phases=3 bus1=b{int(ln['from_bus'])} bus2=b{int(ln['to_bus'])} "
                      f"length={float(ln['length_km'])} units=km r1={float(ln['r_ohm_per_km'])} "
                      f"x1={float(ln['x_ohm_per_km'])} r0={float(ln['r0_ohm_per_km'])} "
                      f"x0={float(ln['x0_ohm_per_km'])} c1={float(ln['c_nf_per_km'])} "
                      f"c0={float(ln['c0_nf_per_km'])}")
        lv_kv = float(net.bus["vn_kv"].min())
        self._kv_phase = lv_kv / np.sqrt(3)
        self._load_names: dict[tuple[int, int], str] = {}
        bus_kv = net.bus["vn_kv"].to_numpy(dtype=float)
        for position, bus in enumerate(net.bus.index):
            if bus == eg["bus"]:
                continue
            for phase in range(3):
                name = f"ld{bus}_{phase}"
                self._load_names[(position, phase)] = name
                self._cmd(f"new load.{name} phases=1 bus1=b{bus}.{phase + 1} kv={bus_kv[position] / np.sqrt(3)} "
                          f"kw=0 kvar=0 model=1 vminpu=0.0 vmaxpu=10.0")
        self._cmd(f"set voltagebases=[{hv_kv}, {lv_kv}]")
        self._cmd("calcvoltagebases")
        self._cmd("set maxiterations=100 tolerance=1e-10")

    def solve(self, p_mw: np.ndarray, q_mvar: np.ndarray) -> np.ndarray:
        """Phase-to-earth voltage phasors (pu of vn/√3) ``[bus, phase]`` for one snapshot ``p_mw[bus, phase]``."""
        circuit = self._engine.ActiveCircuit
        for (position, phase), name in self._load_names.items():
            circuit.Loads.Name = name
            circuit.Loads.kW = float(p_mw[position, phase]) * 1e3
            circuit.Loads.kvar = float(q_mvar[position, phase]) * 1e3
        self._cmd("solve mode=snapshot")
        if not circuit.Solution.Converged:
            raise RuntimeError("OpenDSS did not converge")
        names = [n.lower() for n in circuit.AllNodeNames]
        volts = np.asarray(circuit.AllBusVolts).reshape(-1, 2)
        phasors = volts[:, 0] + 1j * volts[:, 1]
        lookup = dict(zip(names, phasors, strict=True))
        vn = self._net.bus["vn_kv"].to_numpy(dtype=float) * 1e3 / np.sqrt(3)
        out = np.full((len(self._net.bus), 3), np.nan, dtype=complex)
        for position, bus in enumerate(self._net.bus.index):
            for phase in range(3):
                value = lookup.get(f"b{bus}.{phase + 1}")
                if value is not None:
                    out[position, phase] = value / vn[position]
        return out
