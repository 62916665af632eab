"""Which protocol each field device of a live run speaks, from the scenario's ``[live]`` table: the one plan
the field simulator and the live twin both follow.

MQTT is the default for every device and the only transport of the feeder's own load meters. EV chargers
may speak OCPP 2.0.1 (station id = asset id). Any DER may instead report through its participant's OpenADR
VEN (and take its setpoints from it). With OpenADR in the scenario, every participant that owns DERs runs a
VEN, so it hears the DR events and prices even if all its devices speak MQTT.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twin.live.canonical import Transport

if TYPE_CHECKING:
    from twin.inputs import RunInputs
    from twin.scenario import OpenAdrSpec, Scenario

__all__ = ["FieldPlan"]


@dataclass(frozen=True, kw_only=True)
class FieldPlan:
    transport: Mapping[str, Transport]  # every device id (DERs and meters) → its transport
    participant: Mapping[str, str]  # DER device id → participant id
    vens: Mapping[str, tuple[str, ...]]  # participant → the devices its VEN reports (empty: events only)
    openadr: OpenAdrSpec | None  # None: no OpenADR in this run

    @classmethod
    def from_scenario(cls, scenario: Scenario, inputs: RunInputs) -> FieldPlan:
        from twin.telemetry import load_device_id

        live = scenario.live
        transport: dict[str, Transport] = {}
        assets = inputs.assets
        kinds = assets["kind"].astype(str)
        owners = assets["participant_id"].astype(str)
        for device_id in assets.index.astype(str):  # the same devices as simulator.fleet_devices
            transport[device_id] = Transport(live.transport_of(kinds[device_id]))
        for index in inputs.net.load.index:
            transport[load_device_id(int(index))] = Transport.MQTT  # the feeder's own meters
        vens: dict[str, tuple[str, ...]] = {}
        if live.uses_openadr:
            for participant in sorted(set(owners)):
                vens[participant] = tuple(sorted(d for d, p in owners.items()
                                                 if p == participant and transport[str(d)] is Transport.OPENADR))
            unknown = sorted(set(live.openadr_spec.opt_out) - set(vens))
            if unknown:
                raise ValueError(f"live.openadr.opt_out: participant {unknown[0]!r} owns no DER in this fleet "
                                 f"(participants: {', '.join(sorted(vens)[:8])}{', ...' if len(vens) > 8 else ''})")
        return cls(transport=transport, participant={str(k): v for k, v in owners.items()}, vens=vens,
                   openadr=live.openadr_spec if live.uses_openadr else None)

    def devices(self, transport: Transport) -> list[str]:
        return sorted(d for d, t in self.transport.items() if t is transport)

    @property
    def ocpp_stations(self) -> dict[str, str]:
        """Charging station id → device id (the same: an EV charger's asset id names its station)."""
        return {d: d for d in self.devices(Transport.OCPP)}

    def ven_of(self, device_id: str) -> str:
        return self.participant[device_id]
