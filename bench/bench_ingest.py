"""Benchmark: sustained live ingest (msg/s) through a private mosquitto, every signature verified and every
message archived with its verdict, against the broker's own ceiling measured in the same run.

Run by hand (heavy runs under the shared lock):
    flock /tmp/gridtwin-bench.lock .venv/bin/python bench/bench_ingest.py --devices 10000 --rate 10000 --seconds 300

Measurements on one broker and one fleet (every device its own MQTT account, session and random key):

0. **Stages**: CPU per message of each stage of the ingest's batched path, in process (JSON decode, Ed25519
   verification, the fast path's other checks, judging, the archive write).
1. **Broker ceilings**: mosquitto's own C clients (``mosquitto_pub -l`` as a few devices, one ``mosquitto_sub``
   as the twin) push real signed telemetry (QoS 0) through the broker as fast as it delivers it; then plain
   paho publishers → a paho subscriber, once with paho's ``on_message`` and once with the ingest's
   ``BulkReadClient``, with the CPU each side and the broker spend a message.
2. **Ingest**: ``--shards`` ingest processes, each owning a share of the fleet (``MqttIngest(devices=...)``, so
   per-device dedupe and sequence state stay in one process), all writing one SQLite archive (WAL,
   synchronous=FULL). Publisher processes open a raw MQTT session per device and send pre-built, pre-signed
   PUBLISH frames at QoS 0 (≈ 10 µs of CPU a message, the kernel's loopback work included), paced to
   ``--rate`` msg/s in total for ``--seconds``, so that what is measured is the ingest side. The ingest rate is
   the telemetry judged and archived per second from the first message published to the last one archived;
   the timeline shows whether it kept up, ``lost`` counts what never reached the archive (QoS 0 messages the
   broker dropped at its queue limit), sequence gaps what the ingest could see of that. The CPU of every
   process (broker, each ingest, each publisher) and of the whole machine is read from /proc over the run.
3. **Ingestor alone**, in memory: the batched fast path against the per-message reference path.

Writes ``bench/results/bench_ingest.json`` with the machine's load (``uptime``) before and after.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import paho.mqtt.client as paho

from twin.live.broker import BrokerCredentials, MosquittoBroker
from twin.live.device import encode_payload
from twin.live.ed25519_fast import BACKEND as ed25519_backend
from twin.live.ed25519_fast import signer_for, verifier_for
from twin.live.fast_decode import FastTelemetryDecoder
from twin.live.ingest import Ingestor, MqttIngest, RawMessage
from twin.live.messages import Channel, DeviceAddress
from twin.live.mqtt import connect_and_wait, make_client
from twin.live.signing import (
    KeyRegistry,
    canonical_bytes,
    new_private_key,
    private_key_b64,
    private_key_from_b64,
    sign_payload,
)

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


def _paho_publisher(device: DeviceAddress, password: str, host: str, port: int, payloads: list[bytes],
                    go: Any, done: Any) -> None:
    """A plain paho client (MQTT 3.1.1, its own network thread) publishing ``payloads`` at QoS 0 unpaced."""
    client = make_client(client_id=f"bench-paho-pub-{device.device_id}",
                         credentials=BrokerCredentials(username=device.device_id, password=password),
                         protocol=paho.MQTTv311)
    connect_and_wait(client, host=host, port=port, keepalive_s=60, clean_start=True)
    topic = device.topic(Channel.TELEMETRY)
    go.wait()
    c0 = time.process_time()
    for payload in payloads:
        client.publish(topic, payload, qos=0)
    while client.want_write():
        time.sleep(0.01)
    time.sleep(0.5)
    done.put(time.process_time() - c0)
    client.disconnect()
    client.loop_stop()


def paho_ceiling(broker: MosquittoBroker, devices: list[DeviceAddress], keys: dict[str, str], *, messages: int,
                 publishers: int, bulk: bool) -> dict[str, Any]:
    """Messages per second a plain paho publisher → broker → paho subscriber chain delivers at QoS 0 on
    loopback, and the CPU each side spends a message (``bulk``: the subscriber reads with ``BulkReadClient``,
    as the ingest does; else paho's own per-message ``on_message``)."""
    per = messages // publishers
    t0 = datetime.now(UTC)
    samples = {d.device_id: [_telemetry(d, private_key_from_b64(keys[d.device_id]), seq=k,
                                        ts=t0 + timedelta(seconds=k)) for k in range(100)]
               for d in devices[:publishers]}
    count, last = [0], [0.0]
    finished = threading.Event()

    def on_message(_c: Any, _u: Any, _m: Any) -> None:
        count[0] += 1
        last[0] = time.perf_counter()

    def on_publishes(publishes: list[Any], _received_at: datetime) -> None:
        count[0] += len(publishes)
        last[0] = time.perf_counter()

    twin = broker.twin_credentials
    sub = make_client(client_id=f"bench-paho-sub-{int(bulk)}", credentials=twin, protocol=paho.MQTTv311,
                      on_publishes=on_publishes if bulk else None)
    sub.on_message = on_message
    connect_and_wait(sub, host=broker.host, port=broker.port, keepalive_s=60, clean_start=True)
    sub.subscribe("der/+/+/+/telemetry", qos=0)
    time.sleep(0.5)
    ctx = mp.get_context("spawn")
    go, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_paho_publisher, args=(
        d, broker.credentials(d.device_id).password, broker.host, broker.port,
        [samples[d.device_id][k % 100] for k in range(per)], go, done)) for d in devices[:publishers]]
    for proc in procs:
        proc.start()
    time.sleep(3.0)
    broker_cpu0, c0, w0 = _proc_cpu_s(broker.pid or 0), time.process_time(), time.perf_counter()
    go.set()
    pub_cpu = [done.get(timeout=600) for _ in procs]
    deadline = time.time() + 10
    while count[0] < per * publishers and time.time() < deadline:
        time.sleep(0.05)
    finished.set()
    span = (last[0] - w0) if count[0] else float("nan")
    sub_cpu = time.process_time() - c0
    broker_cpu = _proc_cpu_s(broker.pid or 0) - broker_cpu0
    for proc in procs:
        proc.join(60)
    sub.disconnect()
    sub.loop_stop()
    n = max(count[0], 1)
    return {"clients": f"paho publisher(s) → paho subscriber ({'BulkReadClient' if bulk else 'on_message'})",
            "qos": 0, "publishers": publishers, "messages_published": per * publishers,
            "messages_delivered": count[0], "deliver_s": round(span, 3),
            "delivered_msg_per_s": round(count[0] / span) if span > 0 else None,
            "subscriber_cpu_us_per_msg": round(sub_cpu / n * 1e6, 1),
            "publisher_cpu_us_per_msg": round(sum(pub_cpu) / max(per * publishers, 1) * 1e6, 1),
            "broker_cpu_us_per_msg": round(broker_cpu / n * 1e6, 1)}


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
    ready.put((index, os.getpid()))
    c0 = time.process_time()
    while not stop.is_set():
        stop.wait(1.0)
        stats = ingest.stats()
        progress.put((index, time.time(), stats.by_verdict.get("accepted", 0), stats.received,
                      time.process_time() - c0, ingest.backlog()))
    ingest.stop()
    stats = ingestor.stats()
    progress.put((index, "final", {"received": stats.received, "by_verdict": stats.by_verdict,
                                   "by_reason": stats.by_reason, "missing_seqs": stats.total_missing,
                                   "cpu_s": time.process_time() - c0, "rss_mb": _rss_mb()}))
    ingestor.close()


# Raw MQTT 3.1.1 frames: the bench's devices send pre-built, pre-signed PUBLISH packets over their own sessions,
# so that the publishing side costs ≈ 1 µs of CPU a message and what the run measures is the ingest.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, byte = divmod(n, 128)
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _mqtt_string(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def connect_frame(client_id: str, username: str, password: str) -> bytes:
    """MQTT 3.1.1 CONNECT: clean session, user name and password, no keepalive (the bench's session only
    publishes), no will."""
    body = (_mqtt_string(b"MQTT") + bytes([4, 0xC2]) + (0).to_bytes(2, "big") + _mqtt_string(client_id.encode())
            + _mqtt_string(username.encode()) + _mqtt_string(password.encode()))
    return b"\x10" + _varint(len(body)) + body


def publish_frame(topic: str, payload: bytes) -> bytes:
    """MQTT PUBLISH at QoS 0."""
    body = _mqtt_string(topic.encode()) + payload
    return b"\x30" + _varint(len(body)) + body


def open_raw_session(host: str, port: int, client_id: str, username: str, password: str) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(connect_frame(client_id, username, password))
    ack = b""
    while len(ack) < 4:
        chunk = sock.recv(4 - len(ack))
        if not chunk:
            raise ConnectionError(f"broker closed {username}'s session before CONNACK")
        ack += chunk
    if ack[0] != 0x20 or ack[3] != 0:
        raise ConnectionError(f"broker refused {username}'s CONNECT: CONNACK {ack!r}")
    return sock


def _build_frames(devices: list[DeviceAddress], keys: dict[str, str], per_device: int, start: datetime,
                  bad_every: int) -> list[bytes]:
    """Round-major (every device's seq 0, then every device's seq 1, ...); every ``bad_every``-th message (0:
    none) carries a forged value after signing, which the ingest must reject as a bad signature."""
    signers = [signer_for(private_key_from_b64(keys[d.device_id])) for d in devices]
    topics = [d.topic(Channel.TELEMETRY) for d in devices]
    frames, n = [], 0
    for k in range(per_device):
        ts = start + timedelta(seconds=k)
        for device, topic, sign in zip(devices, topics, signers, strict=True):
            payload = _telemetry(device, sign, seq=k, ts=ts)
            n += 1
            if bad_every and n % bad_every == 0:
                payload = payload.replace(b'"q_kvar":0.1', b'"q_kvar":0.2')  # changed after signing
            frames.append(publish_frame(topic, payload))
    return frames


def _publisher(index: int, devices: list[DeviceAddress], keys: dict[str, str], passwords: dict[str, str],
               host: str, port: int, per_device: int, rate: float, bad_every: int, ready: Any, go: Any,
               report: Any) -> None:
    """Raw sessions for its devices; every message pre-built and pre-signed, then paced to ``rate``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, len(devices) + 1024)), hard))
    start = datetime.now(UTC)
    frames = _build_frames(devices, keys, per_device, start, bad_every)
    socks = [open_raw_session(host, port, f"bench-pub-{d.device_id}", d.device_id, passwords[d.device_id])
             for d in devices]
    ready.put((index, len(socks), os.getpid()))
    t_go = go.get()
    while time.time() < t_go:
        time.sleep(0.001)
    total, sent, n = len(frames), 0, len(socks)
    c0, t0 = time.process_time(), time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - t0) * rate) + 1)
        while sent < due:
            socks[sent % n].sendall(frames[sent])
            sent += 1
        time.sleep(0.002)
    publish_s = time.perf_counter() - t0
    cpu = time.process_time() - c0
    time.sleep(1.0)
    report.put((index, sent, publish_s, _rss_mb(), cpu))
    for sock in socks:
        sock.close()


def _proc_cpu_s(pid: int) -> float:
    """utime + stime of a process so far (s), from /proc; NaN when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / tick, sum(values[:8]) / tick


def ingest_run(broker: MosquittoBroker, devices: list[DeviceAddress], keys: dict[str, str], *, rate: float,
               seconds: float, shards: int, publishers: int, workdir: Path, protocol: str = "3.1.1",
               bad_every: int = 0) -> dict[str, Any]:
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
            per_device, rate / publishers, bad_every, pub_ready, go, report)))
    for proc in shard_procs:
        proc.start()
    shard_pids = dict(ready.get(timeout=600) for _ in shard_procs)
    setup0 = time.perf_counter()
    for proc in pub_procs:
        proc.start()
    pub_info = [pub_ready.get(timeout=3600) for _ in pub_procs]
    setup_s = time.perf_counter() - setup0
    time.sleep(2.0)
    pids = {"broker": broker.pid, **{f"ingest-{i}": pid for i, pid in sorted(shard_pids.items())},
            **{f"publisher-{i}": pid for i, _, pid in sorted(pub_info)}}
    t_go = time.time() + 1.0
    for _ in pub_procs:
        go.put(t_go)
    while time.time() < t_go:
        time.sleep(0.01)
    cpu0 = {name: _proc_cpu_s(pid) for name, pid in pids.items() if pid}
    machine0, load0 = _machine_cpu(), os.getloadavg()
    total = per_device * len(devices)
    latest: dict[int, tuple[Any, ...]] = {}
    timeline: list[tuple[float, int, int]] = []
    finals: dict[int, dict[str, Any]] = {}
    reports: list[tuple[Any, ...]] = []
    last_change, last_total = time.time(), -1
    cpu1: dict[str, float] = {}
    machine1, load1 = machine0, load0
    stopped = ""
    while True:
        try:
            item = progress.get(timeout=1.0)
            latest[item[0]] = item[1:]
        except Exception:  # queue.Empty
            pass
        while not report.empty():
            reports.append(report.get())
        judged = sum(v[2] for v in latest.values())
        now = time.time()
        if not timeline or now - t_go - timeline[-1][0] >= 1.0:
            timeline.append((round(now - t_go, 1), judged, sum(v[4] for v in latest.values())))
        if judged != last_total:
            last_total, last_change = judged, now
            cpu1 = {name: _proc_cpu_s(pid) for name, pid in pids.items() if pid}  # to the last progress
            machine1, load1 = _machine_cpu(), os.getloadavg()
        publishers_done = len(reports) == len(pub_procs)
        if publishers_done and judged >= total:
            stopped = "everything published was judged and archived"
            break
        if publishers_done and now - last_change > 30.0:
            stopped = f"nothing more arrived for 30 s ({total - judged} of {total} never reached the archive)"
            break
        if now - t_go > seconds * 3 + 300:
            stopped = "time out"
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
        by_verdict = dict(db.execute("SELECT verdict || ':' || reason, COUNT(*) FROM raw_messages "
                                     "WHERE channel='telemetry' GROUP BY verdict, reason").fetchall())
        received = db.execute("SELECT COUNT(*) FROM raw_messages").fetchone()[0]
        first, last = db.execute("SELECT MIN(received_at), MAX(received_at) FROM raw_messages "
                                 "WHERE channel='telemetry'").fetchone()
    published = sum(r[1] for r in reports)
    archived = sum(by_verdict.values())
    bad = sum(n for key, n in by_verdict.items() if key.startswith("rejected:"))
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds() if first else float("nan")
    window = max(1e-9, end_wall - t_go)
    cpu = {name: round(cpu1.get(name, float("nan")) - cpu0[name], 2) for name in cpu0}
    ingest_cpu = sum(v for k, v in cpu.items() if k.startswith("ingest-"))
    busy = machine1[0] - machine0[0]
    capacity = machine1[1] - machine0[1]
    ours = sum(v for v in cpu.values() if v == v)
    # Sustained rate: messages judged per second between 10 % and 90 % of the published total.
    marks = [(t, a) for t, a, _ in timeline]
    lo = next(((t, a) for t, a in marks if a >= 0.1 * total), None)
    hi = next(((t, a) for t, a in marks if a >= 0.9 * total), None)
    sustained = round((hi[1] - lo[1]) / (hi[0] - lo[0])) if lo and hi and hi[0] > lo[0] else None
    lag = [(t, max(0, min(total, int(rate * t)) - a)) for t, a in marks]
    return {
        "devices": len(devices), "shards": shards, "ingest_mqtt": protocol, "publishers": publishers,
        "publisher": "raw MQTT 3.1.1 sessions, one per device, pre-built pre-signed PUBLISH frames, QoS 0",
        "offered_msg_per_s": rate, "seconds": seconds, "per_device": per_device, "telemetry_qos": 0,
        "forged_every": bad_every,
        "published": published, "publish_s": round(max(r[2] for r in reports), 3),
        "archived_telemetry": archived, "archived_telemetry_by_verdict_reason": by_verdict,
        "rejected_bad_signature": by_verdict.get("rejected:bad_signature", 0), "rejected_total": bad,
        "archived_rows_all": received, "ingest_received_all": sum(f["received"] for f in finals.values()),
        "missing_seqs": sum(f["missing_seqs"] for f in finals.values()),
        "lost": published - archived,
        # Judged and archived per second, from the first message published to the last one archived (a
        # backlog that built up counts against it; the receive times alone would hide it).
        "ingest_msg_per_s": round(archived / window) if archived else None,
        "sustained_msg_per_s_10_to_90pct": sustained,
        "kept_up": bool(archived >= published and window <= seconds + 5.0),
        "stopped": stopped,
        "drained_after_s": round(window, 1),
        # How fast the broker handed the messages to the ingest sockets (receive times of the first and last).
        "delivered_to_ingest_msg_per_s": round(archived / span) if span and span > 0 else None,
        "delivery_span_s": round(span, 3),
        "max_backlog_msgs": max((b for _, b in lag), default=0),
        "cpu_s_by_process": cpu,
        "cpu_cores_by_process": {k: round(v / window, 3) for k, v in cpu.items()},
        "ingest_cpu_us_per_msg": round(ingest_cpu / max(archived, 1) * 1e6, 1),
        "broker_cpu_us_per_msg": round(cpu.get("broker", float("nan")) / max(archived, 1) * 1e6, 1),
        "publisher_cpu_us_per_msg": round(sum(r[4] for r in reports) / max(published, 1) * 1e6, 2),
        "machine_busy_cores": round(busy / window, 2),
        "machine_cores": round(capacity / window, 2),
        "other_jobs_busy_cores": round(max(0.0, busy - ours) / window, 2),
        "loadavg_at_start": [round(x, 2) for x in load0], "loadavg_at_end": [round(x, 2) for x in load1],
        "timeline_judged": [(t, a) for t, a, _ in timeline][:: max(1, len(timeline) // 60)],
        "shard_rss_mb": [round(f["rss_mb"], 1) for f in finals.values()],
        "publisher_setup_s": round(setup_s, 1),
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


def stages(devices: list[DeviceAddress], keys: dict[str, str], *, messages: int, workdir: Path) -> dict[str, Any]:
    """CPU per message of each stage of the ingest's batched path, in process on one corpus (batches of 1,000):
    JSON decode, Ed25519 verification, the fast path's other checks (ts, base64, canonical re-encode, schema),
    judging (dedupe, watermark, samples), the archive write (one executemany and commit a batch)."""
    fleet = devices[: min(len(devices), 500)]
    registry = KeyRegistry({d.device_id: private_key_from_b64(keys[d.device_id]).public_key() for d in fleet})
    start = datetime.now(UTC)
    signing = {d.device_id: signer_for(private_key_from_b64(keys[d.device_id])) for d in fleet}
    topics = [d.topic(Channel.TELEMETRY) for _ in range(max(1, messages // len(fleet))) for d in fleet]
    payloads = [_telemetry(d, signing[d.device_id], seq=k, ts=start + timedelta(seconds=k))
                for k in range(max(1, messages // len(fleet))) for d in fleet]
    received = [start] * len(topics)
    n = len(topics)
    batches = [(i, min(n, i + 1000)) for i in range(0, n, 1000)]

    def cpu_us(work: Any) -> float:
        c0 = time.process_time()
        work()
        return (time.process_time() - c0) / n * 1e6

    decode = msgspec.json.decode
    verifiers = {d.device_id: verifier_for(registry.get(d.device_id)) for d in fleet}  # type: ignore[arg-type]
    prepared = []
    for topic, payload in zip(topics, payloads, strict=True):
        body = json.loads(payload)
        sig = base64.b64decode(body.pop("sig"))
        prepared.append((verifiers[body["device_id"]], sig, canonical_bytes(body, topic=topic)))
    decoder = FastTelemetryDecoder(registry)
    decoder.decode_wire(topics[:len(fleet)], payloads[:len(fleet)])  # warm the topic cache
    runs = iter(range(1000))

    def judged(*, archive: bool) -> None:  # a fresh ingestor each run, so every message is new (accepted)
        ingestor = Ingestor.open(workdir / f"stages-{next(runs)}.sqlite", keys=registry)
        if not archive:  # judging without the archive write
            ingestor.archive.append_values = lambda rows: list(range(len(rows)))  # type: ignore[method-assign]
        for a, b in batches:
            ingestor.ingest_wire(topics[a:b], payloads[a:b], received[a:b])
        assert ingestor.stats().by_verdict == {"accepted": n}, ingestor.stats().by_verdict
        ingestor.close()

    # Each stage is the difference of two cumulative runs made one after the other; the median of five
    # rounds, because other jobs on the machine make any single run noisy.
    rounds = []
    for _ in range(5):
        json_us = cpu_us(lambda: [decode(p) for p in payloads])
        verify_us = cpu_us(lambda: [v(sig, msg) for v, sig, msg in prepared])
        fast_us = cpu_us(lambda: [decoder.decode_wire(topics[a:b], payloads[a:b]) for a, b in batches])
        judge_us = cpu_us(lambda: judged(archive=False))
        total_us = cpu_us(lambda: judged(archive=True))
        rounds.append({"json_decode": json_us, "ed25519_verify": verify_us,
                       "fast_path_other_checks": fast_us - json_us - verify_us,
                       "judge_and_samples": judge_us - fast_us, "archive_write": total_us - judge_us,
                       "ingestor_total": total_us})
    out: dict[str, Any] = {"messages": n, "verify_backend": ed25519_backend, "rounds": 5}
    for name in rounds[0]:
        out[name] = round(statistics.median(r[name] for r in rounds), 2)
    return out


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
    parser.add_argument("--forged-every", type=int, default=0,
                        help="every N-th published message is altered after signing (0: none); the ingest must "
                             "reject each as a bad signature")
    parser.add_argument("--skip-ceilings", action="store_true", help="only the ingest run (and the stages)")
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
        stage_cpu = stages(devices, keys, messages=20_000, workdir=workdir)
        print("stages (CPU µs a message):", json.dumps(stage_cpu), flush=True)
        ceilings: dict[str, Any] = {}
        alone: dict[str, Any] = {}
        if not args.skip_ceilings:
            alone = ingestor_alone(devices, keys, messages=20_000, workdir=workdir)
            print("Ingestor alone:", json.dumps(alone), flush=True)
            ceilings["c_clients"] = broker_ceiling(broker, devices, keys, messages=args.ceiling_messages,
                                                   publishers=min(4, len(devices)), workdir=workdir)
            for bulk in (False, True):
                ceilings["paho_bulk_read" if bulk else "paho"] = paho_ceiling(
                    broker, devices, keys, messages=min(args.ceiling_messages, 100_000),
                    publishers=min(2, len(devices)), bulk=bulk)
            print("broker ceilings:", json.dumps(ceilings), flush=True)
        ingest = ingest_run(broker, devices, keys, rate=args.rate, seconds=args.seconds, shards=args.shards,
                            publishers=args.publishers, workdir=workdir, protocol=args.protocol,
                            bad_every=args.forged_every)
    ceiling_rate = ceilings.get("c_clients", {}).get("delivered_msg_per_s")
    ingest["share_of_broker_ceiling"] = (round(ingest["ingest_msg_per_s"] / ceiling_rate, 3)
                                         if ceiling_rate and ingest["ingest_msg_per_s"] else None)
    print("ingest:", json.dumps({k: v for k, v in ingest.items() if k != "timeline_judged"}), flush=True)
    result = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "uptime_before": load_before, "uptime_after": _uptime()},
        "argv": sys.argv[1:], "stages_cpu_us_per_msg": stage_cpu, "ingestor_alone": alone,
        "broker_ceilings": ceilings, "ingest": ingest,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
