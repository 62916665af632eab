"""Benchmark: sustained live-ingest rate (msg/s) through a private mosquitto, signature checks and archive included.

Run by hand:  python bench/bench_ingest.py [--devices 100 1000] [--messages 20000]

For each fleet size the script starts its own broker (twin.live.broker.MosquittoBroker), connects the devices
from publisher processes (each device its own MQTT session, as in the field), has them pre-sign their
telemetry, then releases them all at once and times until the ingest has verified, judged and committed every
message (SQLite WAL, synchronous=FULL, PUBACK after commit). It also times the Ingestor alone, fed the same
kind of messages in memory, to show how much of the cost is the broker path.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from twin.live.broker import BrokerCredentials, MosquittoBroker
from twin.live.device import DeviceClient
from twin.live.ingest import Ingestor, MqttIngest, RawMessage
from twin.live.messages import Channel, DeviceAddress
from twin.live.signing import KeyRegistry, new_private_key, private_key_b64, private_key_from_b64

_KEYS: dict[str, str] = {}  # device_id -> base64 private key, random per run (as provisioning makes them)


def _key(device_id: str):  # type: ignore[no-untyped-def]
    if device_id not in _KEYS:
        _KEYS[device_id] = private_key_b64(new_private_key())
    return private_key_from_b64(_KEYS[device_id])


@dataclass(frozen=True)
class Result:
    devices: int
    messages: int
    publish_s: float
    ingest_s: float
    ingest_msg_per_s: float
    ingestor_only_msg_per_s: float
    #: Per CPU-second of the ingest process: robust to other load on the machine.
    ingestor_only_msg_per_cpu_s: float
    missing_seqs: int
    archived: int


def _fleet(n: int) -> list[DeviceAddress]:
    kinds = ("battery", "pv", "ev_charger", "flex_load")
    return [DeviceAddress(site=f"site{i // 50}", kind=kinds[i % 4], device_id=f"d{i:05d}") for i in range(n)]  # type: ignore[arg-type]


def _publisher(devices, passwords, keys, host, port, per_device, ready, go, report):  # type: ignore[no-untyped-def]
    """One publisher process: many device sessions, pre-signed payloads, then a burst on ``go``."""
    _KEYS.update(keys)  # the parent provisioned the keys; a spawned process starts with none
    clients = []
    for device, password in zip(devices, passwords, strict=True):
        client = DeviceClient(
            address=device, private_key=_key(device.device_id),
            credentials=BrokerCredentials(username=device.device_id, password=password), host=host, port=port,
            keepalive_s=60,
        )
        client.connect(now=datetime.now(UTC), timeout_s=60)
        clients.append(client)
    start = datetime.now(UTC)
    payloads = [
        [c.telemetry_payload(ts=start + timedelta(seconds=k), p_kw=1.0, q_kvar=0.1, e_imp_kwh=k * 0.01, e_exp_kwh=0.0)
         for k in range(per_device)]
        for c in clients
    ]
    ready.put(len(clients))
    go.wait()
    t0 = time.perf_counter()
    infos = [c.publish(channel=Channel.TELEMETRY, payload=payloads[i][k])
             for k in range(per_device) for i, c in enumerate(clients)]
    for info in infos:
        info.wait_for_publish(300)
    report.put(time.perf_counter() - t0)
    for c in clients:
        c.close(now=datetime.now(UTC), timeout_s=60)


def _ingestor_only_rate(devices: list[DeviceAddress], keys: KeyRegistry, n: int, workdir: Path) -> tuple[float, float]:
    start = datetime.now(UTC)
    clients = [DeviceClient(address=d, private_key=_key(d.device_id),
                            credentials=BrokerCredentials(username=d.device_id, password="-"), host="-", port=0)
               for d in devices]
    messages = []
    for k in range(n // len(devices)):
        for c in clients:
            payload = c.telemetry_payload(ts=start + timedelta(seconds=k), p_kw=1.0, q_kvar=0.1, e_imp_kwh=k * 0.01,
                                          e_exp_kwh=0.0)
            messages.append(RawMessage(topic=c.address.topic(Channel.TELEMETRY), payload=payload, received_at=start))
    ingestor = Ingestor.open(workdir / "offline.db", keys=keys)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(messages), 100):  # the broker's 100 in-flight messages bound a live batch
            ingestor.ingest_batch(messages[i:i + 100])
        return len(messages) / (time.perf_counter() - t0), len(messages) / (time.process_time() - c0)
    finally:
        ingestor.close()


def run(n_devices: int, total_messages: int, *, publishers: int) -> Result:
    devices = _fleet(n_devices)
    per_device = max(1, total_messages // n_devices)
    total = per_device * n_devices
    keys = KeyRegistry()
    for d in devices:
        keys.add(device_id=d.device_id, public_key=_key(d.device_id).public_key())
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-") as tmp, MosquittoBroker(devices=devices) as broker:
        workdir = Path(tmp)
        offline_rate, offline_cpu_rate = _ingestor_only_rate(devices, keys, total, workdir)
        ingestor = Ingestor.open(workdir / "live.db", keys=keys)
        ingest = MqttIngest(ingestor=ingestor, host=broker.host, port=broker.port,
                            credentials=broker.twin_credentials, client_id="bench-ingest")
        ctx = mp.get_context("spawn")  # never fork a process that already runs paho threads
        ready, report, go = ctx.Queue(), ctx.Queue(), ctx.Event()
        procs = []
        try:
            ingest.start()
            for p in range(publishers):
                share = devices[p::publishers]
                proc = ctx.Process(target=_publisher, args=(
                    share, [broker.credentials(d.device_id).password for d in share],
                    {d.device_id: _KEYS[d.device_id] for d in share}, broker.host, broker.port,
                    per_device, ready, go, report))
                proc.start()
                procs.append(proc)
            connected = sum(ready.get(timeout=300) for _ in procs)
            assert connected == n_devices
            # Wait for the online statuses to drain so the timed window holds telemetry only.
            ingest.wait_until(lambda s: s.received >= n_devices, timeout_s=60)
            baseline = ingest.stats().by_verdict.get("accepted", 0)
            t0 = time.perf_counter()
            go.set()
            stats = ingest.wait_until(lambda s: s.by_verdict.get("accepted", 0) - baseline >= total,
                                      timeout_s=600, poll_s=0.01)
            ingest_s = time.perf_counter() - t0
            publish_s = max(report.get(timeout=600) for _ in procs)
        finally:
            for proc in procs:
                proc.join(120)
            ingest.stop()
            with ingest.locked() as ing:
                archived = ing.archive.count(verdict="accepted", channel="telemetry")
            ingestor.close()
    return Result(devices=n_devices, messages=total, publish_s=round(publish_s, 3), ingest_s=round(ingest_s, 3),
                  ingest_msg_per_s=round(total / ingest_s), ingestor_only_msg_per_s=round(offline_rate),
                  ingestor_only_msg_per_cpu_s=round(offline_cpu_rate),
                  missing_seqs=stats.total_missing, archived=archived)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--messages", type=int, default=20_000, help="total telemetry messages per fleet size")
    parser.add_argument("--devices-per-publisher", type=int, default=250,
                        help="device sessions per publisher process (paho's select() loop needs each process to "
                             "stay under 1024 file descriptors, 3 per session)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/bench_ingest.json"))
    args = parser.parse_args()
    results = []
    for n in args.devices:
        result = run(n, args.messages, publishers=-(-n // args.devices_per_publisher))
        results.append(result)
        print(f"{result.devices:>5} devices  {result.messages:>6} msgs  ingest {result.ingest_msg_per_s:>6} msg/s "
              f"({result.ingest_s:.2f} s; publishers done after {result.publish_s:.2f} s)  "
              f"Ingestor alone {result.ingestor_only_msg_per_s} msg/s ({result.ingestor_only_msg_per_cpu_s} per CPU-s)  "
              f"missing {result.missing_seqs}  "
              f"archived {result.archived}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "load_average": os.getloadavg()},
        "results": [asdict(r) for r in results],
    }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
