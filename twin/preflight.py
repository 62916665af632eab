"""Everything ``run`` checks before it steps, in one place: ``gridtwin validate`` and ``twin.run.run_scenario``
both call ``prepare_run``, so a scenario that validates is one that starts (validate == run by construction).

Static checks (types, units, NaN and infinity, ordered ranges, the period and its grid, faults and DR events
inside it) are pydantic validators in ``twin.scenario``; reading what the scenario names (feeder, fleet and
telemetry files, the period of the data) is ``twin.inputs.build_inputs``. This module adds what needs the
feeder and the fleet (fault and settlement participants, monitored buses, the baselines' history) and the
plug-in targets: a class implementing the protocol its mode needs, whose constructor takes the keyword
arguments — checked without calling the target, by the same functions ``controllers.api.load_controller``
uses. Every failure is a ``ScenarioError`` naming key and value.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from controllers.api import check_plugin_kwargs, resolve_plugin
from grids.fleet import participant_id_for_load
from twin.inputs import RunInputs, build_inputs
from twin.scenario import ControllerEntry, Scenario, ScenarioError

__all__ = ["check_against_feeder", "check_plugin", "check_plugins", "prepare_run"]

def prepare_run(scenario: Scenario) -> RunInputs:
    """Check the plug-ins, build the run's inputs and check the scenario against them; what ``run`` does
    before its first interval, and all that ``validate`` does."""
    check_plugins(scenario)
    inputs = build_inputs(scenario)
    check_against_feeder(scenario, inputs)
    return inputs


def check_plugins(scenario: Scenario) -> None:
    for i, entry in enumerate(scenario.controllers):
        check_plugin(entry, where=f"controllers[{i}]")


def check_plugin(entry: ControllerEntry, *, where: str = "controllers") -> None:
    """The target resolves to a class implementing the protocol its mode calls (``controllers.api.
    resolve_plugin``) and its constructor accepts the entry's keyword arguments (``check_plugin_kwargs``).
    The module is imported; the target itself is never called."""
    target = entry.target
    protocol = "agent" if entry.mode == "agents" else "controller"
    try:
        cls = resolve_plugin(target, protocol=protocol)
    except ValueError as exc:
        hint = ""
        other = "controller" if protocol == "agent" else "agent"
        try:
            resolve_plugin(target, protocol=other)
            hint = f"; it implements the {other} protocol: use mode = " + \
                ("'agents'" if other == "agent" else "'ideal' or 'central'")
        except Exception:  # noqa: BLE001 — only a hint
            pass
        raise ScenarioError(f"{where}.target={target!r} (mode {entry.mode!r}): {exc}{hint}") from None
    except Exception as exc:  # noqa: BLE001 — a plug-in module that fails on import is the user's input
        module_name = target.partition(":")[0]
        raise ScenarioError(f"{where}.target={target!r}: importing module {module_name!r} raised "
                            f"{type(exc).__name__}: {exc}") from None
    try:
        check_plugin_kwargs(cls, entry.kwargs, target=target)
    except ValueError as exc:
        raise ScenarioError(f"{where}.kwargs={dict(entry.kwargs)!r}: {exc}") from None


def _listed(names: Iterable[Any], limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", … ({len(names)} in all)" if len(names) > limit else "")


def check_against_feeder(scenario: Scenario, inputs: RunInputs) -> None:
    """Names in the scenario that must exist on the feeder or in the fleet: fault participants (owners of
    DERs), monitored buses, settlement participants (every metered household), and the load history the
    DR baselines look back on."""
    owners = sorted(inputs.assets["participant_id"].astype(str).unique(), key=_natural)
    for i, fault in enumerate(scenario.faults):
        unknown = [p for p in fault.participants if p not in owners]
        if unknown:
            raise ScenarioError(f"faults[{i}].participants: {unknown[0]!r} is not a participant with DERs on feeder "
                                f"{scenario.feeder!r} (participants: {_listed(owners)})")
        if fault.share is not None and not owners:
            raise ScenarioError(f"faults[{i}].share={fault.share!r}: the fleet on feeder {scenario.feeder!r} has no "
                                "participants to choose from")
    buses = scenario.network.monitored_buses
    if not isinstance(buses, str):
        unknown_buses = [b for b in buses if b not in inputs.net.bus.index]
        if unknown_buses:
            raise ScenarioError(f"network.monitored_buses: {unknown_buses[0]!r} is not a bus of feeder "
                                f"{scenario.feeder!r} (buses: {_listed(inputs.net.bus.index.tolist())})")
    config = scenario.settlement_config()
    if config is None:
        return
    metered = set(owners) | {participant_id_for_load(int(i)) for i in inputs.net.load.index}
    named = [(f"settlement.contracts[{i}].participant", [c.participant]) for i, c in enumerate(config.contracts)]
    named += [(f"settlement.communities[{i}].members", list(c.members)) for i, c in enumerate(config.communities)]
    named += [(f"settlement.reward_pools[{i}].members", list(p.members)) for i, p in enumerate(config.reward_pools)]
    for key, people in named:
        unknown = [p for p in people if p not in metered]
        if unknown:
            raise ScenarioError(f"{key}: {unknown[0]!r} is not a participant of feeder {scenario.feeder!r} "
                                f"(participants: {_listed(sorted(metered, key=_natural))})")
    if config.events:
        from twin.engine.metering import settlement_history_kw

        try:
            settlement_history_kw(scenario, inputs)
        except ValueError as exc:
            raise ScenarioError(f"settlement.events[0].start={config.events[0].start.isoformat()!r}: {exc}") from None


def _natural(name: str) -> tuple[str, int]:
    head, _, tail = name.rpartition("-")
    return (head, int(tail)) if tail.isdigit() else (name, -1)
