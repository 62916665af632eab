"""Benchmark: ``gridtwin devices`` as a fleet of N simulated devices (own broker account, own random key, one
MQTT session with a Last Will each), every device reporting once a second; delivered rate and memory per device.

    flock /tmp/gridtwin-bench.lock .venv/bin/python bench/bench_devices.py --devices 10000 --processes 2 --minutes 2

Writes a CIGRE LV scenario whose fleet is N batteries (1-minute steps, speed 1: simulated time is wall time),
provisions it with ``start_broker`` (as ``gridtwin broker`` does), runs the real CLI ``gridtwin devices
--publish-every 1s --telemetry-qos 0 --processes P`` and counts what mosquitto delivers to a subscriber of its own
(``mosquitto_sub``, a C client, so the count costs the field almost nothing). Reports delivered telemetry per
second (offered: N msg/s), the sessions' memory per device as the CLI reports it, and the machine's load.
Writes ``bench/results/bench_devices.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from bench_live_latency import _uptime, _write_fleet  # noqa: E402  (bench scripts are not a package)


def _scenario_toml(fleet_csv: Path, *, minutes: int) -> str:
    start = pd.Timestamp("2016-06-06T10:00:00Z")
    end = start + pd.Timedelta(minutes=minutes)
    return "\n".join([
        'name = "bench-devices"', "seed = 5", 'feeder = "cigre-lv"', f'start = "{start.isoformat()}"',
        f'end = "{end.isoformat()}"', 'step = "1min"', 'horizon = "15min"', "", "[fleet]", f'csv = "{fleet_csv}"', "",
        "[[controllers]]", 'name = "shaver"', 'target = "controllers.baseline:PeakShaver"', "",
    ]) + "\n"


def _count_telemetry(host: str, port: int, user: str, password: str, counts: list[int], stop: threading.Event,
                     started: threading.Event) -> subprocess.Popen[bytes]:
    sub = subprocess.Popen(["mosquitto_sub", "-h", host, "-p", str(port), "-u", user, "-P", password,
                            "-t", "der/+/+/+/telemetry", "-q", "0"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL)

    def read() -> None:
        assert sub.stdout is not None
        started.set()
        while not stop.is_set():
            chunk = sub.stdout.read1(1 << 16)
            if not chunk:
                break
            counts.append(chunk.count(b"\n"))
            counts_at.append(time.time())

    counts_at: list[float] = []
    threading.Thread(target=read, daemon=True).start()
    sub.counts_at = counts_at  # type: ignore[attr-defined]
    return sub


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000, help="batteries (plus the feeder's 15 load meters)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--minutes", type=int, default=2, help="simulated = wall minutes the fleet reports")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_devices.json")
    args = parser.parse_args()
    if args.devices < 1 or args.processes < 1 or args.minutes < 1:
        parser.error("--devices, --processes and --minutes must be at least 1")
    from twin.live.simulator import start_broker
    from twin.scenario import load_scenario

    uptime_before = _uptime()
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-devices-") as tmp:
        root = Path(tmp)
        _write_fleet(args.devices, root / "fleet.csv")
        scenario_path = root / "scenario.toml"
        scenario_path.write_text(_scenario_toml(root / "fleet.csv", minutes=args.minutes), encoding="utf-8")
        scenario = load_scenario(scenario_path)
        t0 = time.perf_counter()
        setup = start_broker(scenario, out=root / "provision")
        provision_s = time.perf_counter() - t0
        broker = setup.broker
        counts: list[int] = []
        stop, started = threading.Event(), threading.Event()
        twin = broker.twin_credentials
        sub = _count_telemetry(broker.host, broker.port, twin.username, twin.password, counts, stop, started)
        started.wait(10)
        try:
            t1 = time.time()
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            cli = subprocess.run(
                [str(Path(sys.executable).with_name("gridtwin")), "devices", str(scenario_path), "--broker",
                 f"mqtt://{broker.host}:{broker.port}", "--credentials", str(setup.credentials_path), "--speed", "1",
                 "--publish-every", "1s", "--telemetry-qos", "0", "--processes", str(args.processes)],
                capture_output=True, text=True, timeout=3600 + args.minutes * 120)
            wall = time.time() - t1
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the CLI and its device processes, reaped
            cpu_s = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
        finally:
            stop.set()
            sub.terminate()
            sub.wait(10)
            broker.stop()
        if cli.returncode != 0:
            print(cli.stdout, cli.stderr, file=sys.stderr)
            return 1
        at = sub.counts_at  # type: ignore[attr-defined]
        per_second: dict[int, int] = {}
        for n, when in zip(counts, at, strict=False):
            per_second[int(when)] = per_second.get(int(when), 0) + n
        seconds = sorted(per_second)
        steady = [per_second[s] for s in seconds[2:-2]] or [per_second[s] for s in seconds]
        line = cli.stdout.strip().splitlines()[-1]
        kb = re.search(r"([\d.]+) kB per device", line)
        result: dict[str, Any] = {
            "devices": args.devices + 15, "processes": args.processes, "minutes": args.minutes,
            "offered_msg_per_s": args.devices + 15, "delivered_total": sum(counts),
            "delivered_msg_per_s_median": sorted(steady)[len(steady) // 2] if steady else 0,
            "delivered_msg_per_s_min": min(steady) if steady else 0,
            "seconds_reporting": len(seconds), "cli_wall_s": round(wall, 1), "provision_s": round(provision_s, 1),
            "kb_per_device": float(kb.group(1)) if kb else None, "cli_report": line,
            # The field's own CPU (the devices' processes; not the broker's or the counter's): the load-proof figure.
            "field_cpu_s": round(cpu_s, 1),
            "field_cpu_us_per_message": round(1e6 * cpu_s / sum(counts), 1) if sum(counts) else None,
        }
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "uptime_before": uptime_before, "uptime_after": _uptime()},
        "argv": sys.argv[1:], "result": result}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
