"""Benchmark: sustained live ingest (msg/s) through a private mosquitto, every signature verified and every
message archived with its verdict, against the broker's own ceiling measured in the same run.

Run by hand (heavy runs under the shared lock):
    flock /tmp/gridtwin-bench.lock .venv/bin/python bench/bench_ingest.py --devices 10000 --rate 10000 --seconds 300

Three measurements on one broker and one fleet (every device its own MQTT account, session and random key):

1. **Broker ceiling**: mosquitto's own C clients, ``mosquitto_pub -l`` as a few devices and one ``mosquitto_sub``
   as the twin, push real signed telemetry (QoS 0) through the broker as fast as it delivers it.
2. **Ingest**: ``--shards`` ingest processes, each owning a share of the fleet (``MqttIngest(devices=...)``, so
   per-device dedupe and sequence state stay in one process), all writing one SQLite archive (WAL,
   synchronous=FULL). Publisher processes drive the device sessions (``SessionPool``: one thread, epoll) and send
   each device's pre-signed telemetry at QoS 0, paced to ``--rate`` msg/s in total, for ``--seconds``. The ingest
   rate is the telemetry archived per second over the run; the timeline shows whether it kept up (backlog =
   published − archived), and sequence gaps count what QoS 0 lost.
3. **Ingestor alone**, in memory: the batched fast path against the per-message reference path (the baseline).

Writes ``bench/results/bench_ingest.json`` with the machine's load (``uptime``) before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from twin.live.broker import BrokerCredentials, MosquittoBroker
from twin.live.device import DeviceClient, encode_payload
from twin.live.ingest import Ingestor, MqttIngest, RawMessage
from twin.live.messages import Channel, DeviceAddress
from twin.live.signing import KeyRegistry, new_private_key, private_key_b64, private_key_from_b64, sign_payload

KINDS = ("battery", "pv", "ev_charger", "flex_load")


def _fleet(n: int) -> list[DeviceAddress]:
    return [DeviceAddress(site=f"site{i // 50:04d}", kind=KINDS[i % 4], device_id=f"d{i:05d}")  # type: ignore[arg-type]
            for i in range(n)]


def _telemetry(device: DeviceAddress, key: Any, *, seq: int, ts: datetime) -> bytes:
    payload = {"device_id": device.device_id, "seq": seq, "ts": ts.isoformat().replace("+00:00", "Z"),
               "p_kw": 1.25 + (seq % 7) * 0.5, "q_kvar": 0.1, "e_imp_kwh": round(seq * 0.01, 6), "e_exp_kwh": 0.0}
    return encode_payload(sign_payload(payload, topic=device.topic(Channel.TELEMETRY), private_key=key))


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _rss_mb() -> float:
    """This process's resident memory now (MB), from /proc (ru_maxrss is the peak, which hides deltas)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------------------------- 1. ceiling


def broker_ceiling(broker: MosquittoBroker, devices: list[DeviceAddress], keys: dict[str, str], *,
                   messages: int, publishers: int, workdir: Path) -> dict[str, Any]:
    """Messages per second mosquitto delivers from ``mosquitto_pub -l`` processes to one ``mosquitto_sub``."""
    t0 = datetime.now(UTC)
    per = messages // publishers
    files = []
    for p in range(publishers):
        device = devices[p]
        key = private_key_from_b64(keys[device.device_id])
        sample = [_telemetry(device, key, seq=k, ts=t0 + timedelta(seconds=k)) for k in range(200)]
        path = workdir / f"ceiling-{p}.txt"
        with open(path, "wb") as handle:
            for k in range(per):
                handle.write(sample[k % len(sample)] + b"\n")
        files.append((device, path))
    twin = broker.twin_credentials
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-u", twin.username, "-P", twin.password,
         "-t", "der/+/+/+/telemetry", "-q", "0", "-C", str(per * publishers), "-W", "300"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    received, first, last = 0, None, None
    done = threading.Event()

    def count() -> None:
        nonlocal received, first, last
        assert sub.stdout is not None
        while chunk := sub.stdout.read1(1 << 16):
            now = time.perf_counter()
            first = first if first is not None else now
            received += chunk.count(b"\n")
            last = now
        done.set()

    reader = threading.Thread(target=count, daemon=True)
    reader.start()
    time.sleep(1.0)  # the subscription is in place before anything is published
    start = time.perf_counter()
    pubs = []
    for device, path in files:
        cred = broker.credentials(device.device_id)
        with open(path, "rb") as handle:
            pubs.append(subprocess.Popen(
                ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-u", cred.username, "-P",
                 cred.password, "-t", device.topic(Channel.TELEMETRY), "-q", "0", "-l"],
                stdin=handle, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    for proc in pubs:
        proc.wait(600)
    published_s = time.perf_counter() - start
    done.wait(10.0)  # what was published is delivered within moments, or was dropped
    if sub.poll() is None:
        sub.terminate()
    sub.wait(10)
    reader.join(5)
    span = (last - start) if last is not None else float("nan")
    return {"messages_published": per * publishers, "messages_delivered": received,
            "publish_s": round(published_s, 3), "deliver_s": round(span, 3),
            "delivered_msg_per_s": round(received / span) if span and span > 0 else None,
            "publishers": publishers, "qos": 0, "clients": "mosquitto_pub -l / mosquitto_sub (C)"}


# ---------------------------------------------------------------------------------------------- 2. ingest


def _shard(index: int, devices: list[DeviceAddress], public_keys: dict[str, str], archive: str, host: str,
           port: int, twin: tuple[str, str], ready: Any, progress: Any, stop: Any, protocol: str = "3.1.1") -> None:
    """One ingest process: its share of the devices, the shared archive, progress once a second."""
    registry = KeyRegistry.from_json({"format": "gridtwin-device-keys/1", "devices": public_keys})
    ingestor = Ingestor.open(archive, keys=registry)
    ingest = MqttIngest(ingestor=ingestor, host=host, port=port,
                        credentials=BrokerCredentials(username=twin[0], password=twin[1]),
                        client_id=f"bench-ingest-{index}", clean_start=True, telemetry_qos=0, devices=devices,
                        protocol=protocol)
    ingest.start(timeout_s=120)
    ready.put(index)
    c0 = time.process_time()
    while not stop.is_set():
        stop.wait(1.0)
        stats = ingest.stats()
        progress.put((index, time.time(), stats.by_verdict.get("accepted", 0), stats.received,
                      time.process_time() - c0))
    ingest.stop()
    stats = ingestor.stats()
    progress.put((index, "final", {"received": stats.received, "by_verdict": stats.by_verdict,
                                   "by_reason": stats.by_reason, "missing_seqs": stats.total_missing,
                                   "cpu_s": time.process_time() - c0, "rss_mb": _rss_mb()}))
    ingestor.close()


def _publisher(index: int, devices: list[DeviceAddress], keys: dict[str, str], passwords: dict[str, str],
               host: str, port: int, per_device: int, rate: float, ready: Any, go: Any, report: Any) -> None:
    """Device sessions in one SessionPool; each device's telemetry pre-signed, then paced to ``rate``."""
    from twin.live.session_pool import SessionPool

    rss0 = _rss_mb()
    pool = SessionPool(name=f"publisher-{index}").start()
    clients = []
    signers = [private_key_from_b64(keys[d.device_id]) for d in devices]
    now = datetime.now(UTC)
    for device, signer in zip(devices, signers, strict=True):
        client = DeviceClient(address=device, private_key=signer,
                              credentials=BrokerCredentials(username=device.device_id,
                                                            password=passwords[device.device_id]),
                              host=host, port=port, keepalive_s=60, telemetry_qos=0, pool=pool)
        client.connect(now=now, timeout_s=120)
        clients.append(client)
    rss_sessions = _rss_mb() - rss0
    start = datetime.now(UTC)
    topics = [c.address.topic(Channel.TELEMETRY) for c in clients]
    rounds = [[_telemetry(c.address, signer, seq=k, ts=start + timedelta(seconds=k))
               for c, signer in zip(clients, signers, strict=True)] for k in range(per_device)]
    ready.put((index, len(clients), rss_sessions))
    t_go = go.get()
    total, sent = per_device * len(clients), 0
    while time.time() < t_go:
        time.sleep(0.001)
    t0 = time.perf_counter()
    n = len(clients)

    def publish_upto(target: int) -> None:
        nonlocal sent
        while sent < target:
            k, i = divmod(sent, n)
            clients[i].client.publish(topics[i], rounds[k][i], qos=0)
            sent += 1

    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        if due > sent:
            pool.call(lambda due=due: publish_upto(due), timeout_s=None)  # in the pool's thread: no wake-ups
        else:
            time.sleep(0.002)
    publish_s = time.perf_counter() - t0
    time.sleep(1.0)  # let the pool write out what it queued
    report.put((index, sent, publish_s, _rss_mb()))
    pool.stop()  # cuts every session at once (the broker publishes their wills): a bench, not a graceful end


def ingest_run(broker: MosquittoBroker, devices: list[DeviceAddress], keys: dict[str, str], *, rate: float,
               seconds: float, shards: int, publishers: int, workdir: Path, protocol: str = "3.1.1") -> dict[str, Any]:
    per_device = max(1, math.ceil(rate * seconds / len(devices)))
    archive = str(workdir / "telemetry.sqlite")
    Ingestor.open(archive, keys=KeyRegistry()).close()  # create the schema once, before the shards race for it
    public = KeyRegistry({d: private_key_from_b64(k).public_key() for d, k in keys.items()}).to_json()["devices"]
    ctx = mp.get_context("spawn")  # never fork a process that already runs paho threads
    ready, progress, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    pub_ready, go, report = ctx.Queue(), ctx.Queue(), ctx.Queue()
    twin = broker.twin_credentials
    shard_procs = [ctx.Process(target=_shard, args=(s, devices[s::shards], {d.device_id: public[d.device_id]
                                                                            for d in devices[s::shards]},
                                                    archive, broker.host, broker.port,
                                                    (twin.username, twin.password), ready, progress, stop,
                                                    protocol))
                   for s in range(shards)]
    pub_procs = []
    for p in range(publishers):
        share = devices[p::publishers]
        pub_procs.append(ctx.Process(target=_publisher, args=(
            p, share, {d.device_id: keys[d.device_id] for d in share},
            {d.device_id: broker.credentials(d.device_id).password for d in share}, broker.host, broker.port,
            per_device, rate / publishers, pub_ready, go, report)))
    for proc in shard_procs:
        proc.start()
    for _ in shard_procs:
        ready.get(timeout=600)
    setup0 = time.perf_counter()
    for proc in pub_procs:
        proc.start()
    session_rss = [pub_ready.get(timeout=3600) for _ in pub_procs]
    setup_s = time.perf_counter() - setup0
    time.sleep(2.0)  # the online statuses drain before the timed window
    t_go = time.time() + 1.0
    for _ in pub_procs:
        go.put(t_go)
    total = per_device * len(devices)
    latest: dict[int, tuple[float, int, int, float]] = {}
    timeline: list[tuple[float, int]] = []
    finals: dict[int, dict[str, Any]] = {}
    reports: list[tuple[int, int, float, float]] = []
    last_change, last_total = time.time(), -1
    while True:
        try:
            item = progress.get(timeout=1.0)
            index, when = item[0], item[1]
            latest[index] = item[1:]  # type: ignore[assignment]
        except Exception:  # queue.Empty
            pass
        while not report.empty():
            reports.append(report.get())
        accepted = sum(v[1] for v in latest.values()) - len(devices)  # minus the online statuses
        now = time.time()
        if not timeline or now - t_go - timeline[-1][0] >= 1.0:
            timeline.append((round(now - t_go, 1), max(accepted, 0)))
        if accepted != last_total:
            last_total, last_change = accepted, now
        publishers_done = len(reports) == len(pub_procs)
        if publishers_done and (accepted >= total or now - last_change > 10.0):
            break
        if now - t_go > seconds * 3 + 300:
            break
    end_wall = last_change
    stop.set()
    deadline = time.time() + 900
    while len(finals) < shards and time.time() < deadline:
        try:
            item = progress.get(timeout=10)
        except Exception:  # queue.Empty: a shard still archiving its queue
            continue
        if item[1] == "final":
            finals[item[0]] = item[2]
    for proc in shard_procs + pub_procs:
        proc.join(300)
    with sqlite3.connect(archive) as db:
        by_verdict = dict(db.execute("SELECT verdict, COUNT(*) FROM raw_messages WHERE channel='telemetry' "
                                     "GROUP BY verdict").fetchall())
        received = db.execute("SELECT COUNT(*) FROM raw_messages").fetchone()[0]
        first, last = db.execute("SELECT MIN(received_at), MAX(received_at) FROM raw_messages "
                                 "WHERE channel='telemetry'").fetchone()
    published = sum(r[1] for r in reports)
    archived = int(by_verdict.get("accepted", 0))
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds() if first else float("nan")
    cpu = sum(f["cpu_s"] for f in finals.values()) if len(finals) == shards else float("nan")
    lag = [(t, max(0, min(total, int(rate * t)) - a)) for t, a in timeline]
    return {
        "devices": len(devices), "shards": shards, "ingest_mqtt": protocol, "publishers": publishers,
        "offered_msg_per_s": rate,
        "seconds": seconds, "per_device": per_device, "telemetry_qos": 0,
        "published": published, "publish_s": round(max(r[2] for r in reports), 3),
        "archived_telemetry_accepted": archived, "archived_telemetry_by_verdict": by_verdict,
        "archived_rows_all": received, "ingest_received_all": sum(f["received"] for f in finals.values()),
        "missing_seqs": sum(f["missing_seqs"] for f in finals.values()),
        "lost": published - archived,
        "ingest_msg_per_s": round(archived / span) if span and span > 0 else None,
        "ingest_span_s": round(span, 3),
        "drained_after_s": round(end_wall - t_go, 1),
        "ingest_cpu_s": round(cpu, 1), "ingest_cpu_us_per_msg": round(cpu / max(archived, 1) * 1e6, 1),
        "max_backlog_msgs": max((b for _, b in lag), default=0),
        "timeline_archived": timeline[:: max(1, len(timeline) // 60)],
        "shard_rss_mb": [round(f["rss_mb"], 1) for f in finals.values()],
        "publisher_setup_s": round(setup_s, 1),
        "session_rss_mb_per_publisher": [round(r[2], 1) for r in session_rss],
        "kb_per_device_session": round(sum(r[2] for r in session_rss) * 1024 / len(devices), 1),
        "publisher_rss_mb": [round(r[3], 1) for r in reports],
    }


# -------------------------------------------------------------------------------------- 3. Ingestor alone


def ingestor_alone(devices: list[DeviceAddress], keys: dict[str, str], *, messages: int,
                   workdir: Path) -> dict[str, Any]:
    fleet = devices[: min(len(devices), 500)]
    registry = KeyRegistry({d.device_id: private_key_from_b64(keys[d.device_id]).public_key() for d in fleet})
    start = datetime.now(UTC)
    signing = {d.device_id: private_key_from_b64(keys[d.device_id]) for d in fleet}
    batch = [RawMessage(topic=d.topic(Channel.TELEMETRY),
                        payload=_telemetry(d, signing[d.device_id], seq=k, ts=start + timedelta(seconds=k)),
                        received_at=start + timedelta(seconds=k))
             for k in range(max(1, messages // len(fleet))) for d in fleet]
    out = {}
    for name in ("reference", "fast"):
        ingestor = Ingestor.open(workdir / f"alone-{name}.sqlite", keys=registry)
        ingest = ingestor.ingest_batch_reference if name == "reference" else ingestor.ingest_batch
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(0, len(batch), 1000):
            ingest(batch[i:i + 1000])
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        assert ingestor.stats().by_verdict == {"accepted": len(batch)}
        ingestor.close()
        out[name] = {"msg_per_s": round(len(batch) / wall), "msg_per_cpu_s": round(len(batch) / cpu),
                     "cpu_us_per_msg": round(cpu / len(batch) * 1e6, 1)}
    # The signature check alone, per CPU-second: the floor of any ingest that verifies every message.
    key = signing[fleet[0].device_id]
    message, signature = b"x" * 200, key.sign(b"x" * 200)
    public = key.public_key()
    c0 = time.process_time()
    for _ in range(2000):
        public.verify(signature, message)
    verify_us = (time.process_time() - c0) / 2000 * 1e6
    return {"messages": len(batch), **out, "fast_over_reference": round(out["fast"]["msg_per_cpu_s"]
                                                                        / out["reference"]["msg_per_cpu_s"], 2),
            "ed25519_verify_cpu_us": round(verify_us, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=10_000.0, help="offered telemetry, msg/s in total")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the rate is offered")
    parser.add_argument("--shards", type=int, default=2, help="ingest processes")
    parser.add_argument("--publishers", type=int, default=2, help="device-simulating processes")
    parser.add_argument("--ceiling-messages", type=int, default=200_000)
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="3.1.1",
                        help="MQTT version of the ingest sessions (3.1.1 costs paho half the CPU per message)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_ingest.json")
    args = parser.parse_args()
    for name in ("devices", "shards", "publishers", "ceiling_messages"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(args, name)!r} must be at least 1")
    if not args.rate > 0 or not args.seconds > 0:
        parser.error(f"--rate={args.rate!r} and --seconds={args.seconds!r} must be positive")
    load_before = _uptime()
    devices = _fleet(args.devices)
    keys = {d.device_id: private_key_b64(new_private_key()) for d in devices}  # random, as provisioning makes
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-ingest-") as tmp, \
            MosquittoBroker(devices=devices) as broker:
        workdir = Path(tmp)
        alone = ingestor_alone(devices, keys, messages=20_000, workdir=workdir)
        print("Ingestor alone:", json.dumps(alone), flush=True)
        ceiling = broker_ceiling(broker, devices, keys, messages=args.ceiling_messages,
                                 publishers=min(4, len(devices)), workdir=workdir)
        print("broker ceiling:", json.dumps(ceiling), flush=True)
        ingest = ingest_run(broker, devices, keys, rate=args.rate, seconds=args.seconds, shards=args.shards,
                            publishers=args.publishers, workdir=workdir, protocol=args.protocol)
    ceiling_rate = ceiling["delivered_msg_per_s"]
    ingest["share_of_broker_ceiling"] = (round(ingest["ingest_msg_per_s"] / ceiling_rate, 3)
                                         if ceiling_rate and ingest["ingest_msg_per_s"] else None)
    print("ingest:", json.dumps({k: v for k, v in ingest.items() if k != "timeline_archived"}), flush=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "uptime_before": load_before, "uptime_after": _uptime()},
        "argv": sys.argv[1:], "ingestor_alone": alone, "broker_ceiling": ceiling, "ingest": ingest,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
