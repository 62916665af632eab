"""Benchmark: live closed-loop latency, telemetry publish → the resulting setpoint publish, and ingest rate.

Run by hand:  python bench/bench_live_latency.py [--devices 100 1000] [--speed 300] [--hours 1.5]
The closed loop at scale (issue 16), under the shared lock:
    flock /tmp/gridtwin-bench.lock .venv/bin/python bench/bench_live_latency.py --devices 1000 --speed 1 \
        --step 1min --hours 0.1 --publish-every 1s --policies scada,depin --telemetry-qos 0

Per fleet size it builds a CIGRE LV scenario whose fleet is N batteries (plus the feeder's 15 native-load
meters), starts a private mosquitto (``start_broker``), runs the live twin in this process (``LiveTwin`` with
the PeakShaver as the controlling policy: it sends every battery a setpoint every interval) and the field
devices in subprocesses of at most 250 MQTT sessions each (paho's select() loop breaks above 1,024 fds).
Latency per (interval, device) = the twin's Unix time publishing that device's setpoint − the device's Unix
time publishing its telemetry of the interval (same machine, same clock): it includes the broker, signature
checks, the archive commit, waiting for the whole fleet's telemetry, the engine step and command signing.
The sustained ingest rate is accepted telemetry over the span of its receive times (from the archive).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Device sessions per simulator process (each process drives its sessions from one SessionPool thread).
MAX_SESSIONS_PER_PROCESS = 600

#: The policies a run can put in the loop: the rule-based shaver, the central SCADA optimizer, the DePIN agents.
POLICIES: dict[str, dict[str, Any]] = {
    "shaver": {"name": "shaver", "target": "controllers.baseline:PeakShaver",
               "kwargs": {"threshold_mw": 0.05, "charge_below_mw": 0.5}},
    "scada": {"name": "scada", "mode": "central", "target": "controllers.optimizing:OptimizingController",
              "kwargs": {"network": False}},
    "depin": {"name": "depin", "mode": "agents", "target": "controllers.depin:NetworkAdmm"},
}


def _scenario_dict(fleet_csv: Path, *, hours: float, publish_every: str, step: str = "15min",
                   horizon: str = "1h", policies: tuple[str, ...] = ("shaver",)) -> dict[str, Any]:
    start = pd.Timestamp("2016-06-06T10:00:00Z")
    end = start + pd.Timedelta(hours=hours)
    end = start + ((end - start) // pd.Timedelta(step)) * pd.Timedelta(step)  # whole intervals
    return {
        "name": "bench-live", "seed": 11, "feeder": "cigre-lv", "step": step,
        "start": start.isoformat(), "end": end.isoformat(),
        "horizon": horizon, "fleet": {"csv": str(fleet_csv)},
        "controllers": [POLICIES[p] for p in policies],
        "_publish_every": publish_every,
    }


def _uptime() -> str:
    import subprocess

    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _write_fleet(n: int, path: Path) -> None:
    import grids

    net = grids.load_feeder("cigre-lv")
    buses = [int(b) for b in net.load.bus]
    rows = ["asset_id,kind,bus,participant_id,p_max_mw,e_max_mwh,eta_charge,eta_discharge,soc_min,soc_max,"
            "soc_init,s_max_mva,v2g,flex_window"]
    for i in range(n):
        rows.append(f"bat-{i:05d},battery,{buses[i % len(buses)]},p-{i:05d},0.005,0.02,0.95,0.95,0.1,0.9,0.5,"
                    "0.0055,false,0min")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def _parse(data: dict[str, Any]) -> Any:
    from twin.scenario import parse_scenario

    data = {k: v for k, v in data.items() if not k.startswith("_")}
    return parse_scenario(data, source="bench scenario")


def _device_process(data: dict[str, Any], device_ids: list[str], credentials: str, speed: float,
                    ready: Any, go: Any, results: Any, telemetry_qos: int = 1) -> None:
    from twin.inputs import build_inputs
    from twin.live.simulator import LiveCredentials, run_devices

    scenario = _parse(data)
    creds = LiveCredentials.from_file(credentials)
    start_box: dict[str, float] = {}

    def on_ready(_sim: Any) -> None:
        ready.put(len(device_ids))
        start_box["at"] = go.get()

    report = run_devices(
        scenario, broker_host=creds.host, broker_port=creds.port, credentials=creds, speed=speed,
        publish_every=pd.Timedelta(data["_publish_every"]), inputs=build_inputs(scenario), device_ids=device_ids,
        start_at=lambda: start_box["at"], on_ready=on_ready, telemetry_qos=telemetry_qos,
    )
    results.put({"telemetry_wall": {(t.isoformat(), d): w for (t, d), w in report.telemetry_wall.items()},
                 "command_wall": {(t.isoformat(), d): w for (t, d), w in report.command_wall.items()},
                 "published": report.total_published, "refused": report.commands_refused})


@dataclass(frozen=True)
class Result:
    devices: int
    processes: int
    speed: float
    interval_wall_s: float
    publish_every: str
    intervals: int
    samples: int
    latency_p50_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    round_trip_p50_ms: float  # telemetry publish → the command arrives at the device
    round_trip_p99_ms: float
    telemetry_published: int
    telemetry_archived: int
    ingest_msg_per_s: float
    commands_refused: int
    step_s_median: float  # the twin's engine step (every policy) + setpoint signing/publishing per interval
    flush_s_median: float  # writing the interval to the run store
    step_s_max: float = float("nan")
    #: The same, without the first interval (which also builds every policy's optimization problems).
    latency_p50_steady_ms: float = float("nan")
    latency_p99_steady_ms: float = float("nan")
    policies: str = "shaver"
    #: The controlling policy's step + its setpoints signed and published (it steps before its shadows).
    lead_s_median: float = float("nan")
    control: str = "shaver"
    telemetry_qos: int = 1
    #: The twin's backlog (live table): simulated seconds past the next interval's start when an interval was
    #: done (0 = kept up), messages waiting for the ingest, telemetry seqs missing at the end.
    behind_s_max: float = float("nan")
    ingest_queue_max: int = -1
    seq_missing: int = -1


def bench(n: int, *, speed: float, hours: float, publish_every: str, root: Path, step: str = "15min",
          horizon: str = "1h", policies: tuple[str, ...] = ("shaver",), control: str = "shaver",
          telemetry_qos: int = 1) -> Result:
    from twin.inputs import build_inputs
    from twin.live.live_run import LIVE_DIR, LiveTwin, load_operator_key, read_live_table
    from twin.live.signing import KeyRegistry
    from twin.live.simulator import LiveCredentials, fleet_devices, start_broker

    folder = root / f"n{n}"
    folder.mkdir(parents=True)
    _write_fleet(n, folder / "fleet.csv")
    data = _scenario_dict(folder / "fleet.csv", hours=hours, publish_every=publish_every, step=step,
                          horizon=horizon, policies=policies)
    scenario = _parse(data)
    inputs = build_inputs(scenario)
    devices = sorted(fleet_devices(inputs))
    setup = start_broker(scenario, out=folder / "provision", inputs=inputs)
    ctx = mp.get_context("spawn")
    ready, go, results = ctx.Queue(), ctx.Queue(), ctx.Queue()
    k = math.ceil(len(devices) / MAX_SESSIONS_PER_PROCESS)
    chunks = [devices[i::k] for i in range(k)]
    procs = [ctx.Process(target=_device_process, args=(data, chunk, str(setup.credentials_path), speed, ready, go,
                                                       results, telemetry_qos)) for chunk in chunks]
    twin = LiveTwin(scenario=scenario, credentials=LiveCredentials.from_file(setup.credentials_path),
                    keys=KeyRegistry.from_file(setup.keys_path), operator_key=load_operator_key(setup.operator_key_path),
                    control=control, speed=speed, out=folder / "run", inputs=inputs, deadline=0.45)
    try:
        twin.start()
        for proc in procs:
            proc.start()
        for _ in procs:
            ready.get(timeout=300)
        start_at = time.time() + 1.0
        twin.anchor_at(start_at)  # the twin keeps its own clock, anchored where the devices' is
        for _ in procs:
            go.put(start_at)
        result = twin.run()
        outs = [results.get(timeout=300) for _ in procs]
        for proc in procs:
            proc.join(60)
    finally:
        twin.close()
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        setup.broker.stop()
    telemetry_wall: dict[tuple[str, str], float] = {}
    device_cmd_wall: dict[tuple[str, str], float] = {}
    for out in outs:
        telemetry_wall.update(out["telemetry_wall"])
        device_cmd_wall.update(out["command_wall"])
    latencies, round_trips, steady = [], [], []
    first_interval = min((t for t, _ in result.command_wall), default=None)
    for (t, device_id), wall in result.command_wall.items():
        key = (t.isoformat(), device_id)
        if key in telemetry_wall:
            latencies.append(wall - telemetry_wall[key])
            if t != first_interval:  # the first interval also builds every policy's problems
                steady.append(wall - telemetry_wall[key])
        if key in device_cmd_wall and key in telemetry_wall:
            round_trips.append(device_cmd_wall[key] - telemetry_wall[key])
    with sqlite3.connect(folder / "run" / LIVE_DIR / "telemetry.sqlite") as db:
        archived, first, last = db.execute(
            "SELECT COUNT(*), MIN(received_at), MAX(received_at) FROM raw_messages "
            "WHERE channel='telemetry' AND verdict='accepted'").fetchone()
    live = read_live_table(folder / "run")
    span = (pd.Timestamp(last) - pd.Timestamp(first)).total_seconds()
    lat = np.array(latencies) * 1000.0
    rt = np.array(round_trips) * 1000.0
    return Result(
        devices=len(devices), processes=k, speed=speed, interval_wall_s=scenario.step.total_seconds() / speed,
        publish_every=publish_every, intervals=result.intervals, samples=len(lat),
        latency_p50_ms=float(np.percentile(lat, 50)), latency_p99_ms=float(np.percentile(lat, 99)),
        latency_max_ms=float(lat.max()),
        latency_p50_steady_ms=float(np.percentile(np.array(steady) * 1000.0, 50)) if steady else float("nan"),
        latency_p99_steady_ms=float(np.percentile(np.array(steady) * 1000.0, 99)) if steady else float("nan"),
        round_trip_p50_ms=float(np.percentile(rt, 50)) if len(rt) else float("nan"),
        round_trip_p99_ms=float(np.percentile(rt, 99)) if len(rt) else float("nan"),
        telemetry_published=sum(o["published"] for o in outs), telemetry_archived=int(archived),
        ingest_msg_per_s=archived / span if span > 0 else float("nan"),
        commands_refused=sum(o["refused"] for o in outs),
        step_s_median=float(live["step_s"].median()), flush_s_median=float(live["flush_s"].median()),
        step_s_max=float(live["step_s"].max()), policies=",".join(policies), control=control,
        lead_s_median=float(live["lead_s"].median()),
        telemetry_qos=telemetry_qos, behind_s_max=float(live["behind_s"].max()),
        ingest_queue_max=int(live["ingest_queue"].max()), seq_missing=int(live["seq_missing"].iloc[-1]),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[100, 1000], help="batteries per run")
    parser.add_argument("--speed", type=float, default=300.0, help="simulated seconds per wall second")
    parser.add_argument("--hours", type=float, default=1.5, help="simulated hours per run")
    parser.add_argument("--publish-every", default="15min", help="telemetry period (simulated)")
    parser.add_argument("--step", default="15min", help="control interval (simulated)")
    parser.add_argument("--horizon", default="1h", help="the optimizers' look-ahead")
    parser.add_argument("--policies", default="shaver", help=f"comma-separated, from {', '.join(POLICIES)}")
    parser.add_argument("--control", default=None, help="the policy that commands the devices (default: first)")
    parser.add_argument("--telemetry-qos", type=int, default=1, choices=(0, 1))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_live_latency.json")
    args = parser.parse_args()
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        parser.error(f"--policies={args.policies!r}: expected some of {', '.join(POLICIES)}")
    control = args.control or policies[0]
    if control not in policies:
        parser.error(f"--control={control!r} is not one of --policies {policies}")
    uptime_before = _uptime()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-live-") as tmp:
        for n in args.devices:
            res = bench(n, speed=args.speed, hours=args.hours, publish_every=args.publish_every, root=Path(tmp),
                        step=args.step, horizon=args.horizon, policies=policies, control=control,
                        telemetry_qos=args.telemetry_qos)
            print(json.dumps(asdict(res)), flush=True)
            rows.append(asdict(res))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                                "platform": platform.platform(), "uptime_before": uptime_before,
                                                "uptime_after": _uptime()},
                                    "argv": sys.argv[1:], "results": rows}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
