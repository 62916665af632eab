"""Server-side time of every dashboard page's refresh: the callbacks a live refresh fires on each page (the
poll, then every callback whose input is the run-version store), answered through Flask's test client (routing,
reading the run store, KPIs, events and alarms, figures and their JSON). Target: < 1 s per page.

Two sources:

- default: a synthetic run store (the real RunStore, no power flow) on a catalog feeder, ``--days`` of 15-minute
  records of two policies;
- ``--run DIR``: a real run folder (``gridtwin run``), copied and marked running; for "live" one more interval
  is appended to every table before each request, as while a paced run writes.

Per page: cold (first request of a new app, nothing read yet), warm (nothing changed: what every poll of a
finished run costs) and live (a new part or interval arrived before the request: a refresh while the run
writes), with the bytes of a cold and of a live refresh. What the browser keeps for a later request's State (the
map's digests of the figure it holds, which its clientside callback takes from each answer) is carried from one
request to the next, as the browser does.
Also the first read of the whole run (``RunData.warm``, what the dashboard does in the background at start) and
peak RSS at the end.

    python bench/bench_dashboard.py [--feeder ieee-eu-lv] [--days 7] [--repeat 5]
    python bench/bench_dashboard.py --run runs/<run> [--repeat 5]

The README's figures are for a week of the 9,099-bus feeder, ``gridtwin run week-semiurb.toml --out RUN`` (~1 min,
1.9 GB peak) with::

    name = "week-semiurb"
    seed = 1
    feeder = "simbench:1-MVLV-semiurb-all-0-sw"
    start = "2016-06-06T00:00:00Z"
    end = "2016-06-13T00:00:00Z"
    fleet = { pv_penetration = 0.5, battery_share = 0.0, ev_share = 0.0, flex_share = 0.0 }
    power_flow = { engine = "fast" }
    controllers = [{ name = "no-control", target = "controllers.baseline:NoControl" }]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dashboards import create_app
from dashboards.data import RunData, reference_policy
from dashboards.timeline import TimeView

#: page path -> the id prefix of its callbacks' outputs
PAGES = {"/": "ov-", "/comparison": "cmp-", "/events": "ev-", "/assets": "as-", "/settlement": "st",
         "/faults": "fault-"}


def _defaults(data: RunData) -> dict[str, Any]:
    """The control values a page shows on opening (the reference policy, its first asset, ...)."""
    policy = reference_policy(data.policies())
    assets = list(data.table(policy, "asset_p_mw").columns) if policy else []
    ledgers = list(data.ledgers())
    ledger = reference_policy(ledgers)
    view = data.ledger(ledger) if ledger else None
    participants = sorted(view.participants) if view is not None else []
    return {"time-view.data": TimeView().to_store(), "ov-policy.value": policy, "as-policy.value": policy,
            "as-asset.value": assets[0] if assets else None, "ev-severity.value": ["critical", "warning", "info"],
            "ev-policy.value": None, "st-ledger.value": ledger,
            "st-participant.value": participants[0] if participants else None,
            "as-only.value": [], "ev-page.data": 0, "as-page.data": 0, "stb-page.data": 0, "st-page.data": 0}


def _bodies(app: Any, data: RunData) -> dict[str, list[dict[str, Any]]]:
    """Per page, the request bodies of the callbacks a changed run-version fires there."""
    values = _defaults(data)
    out: dict[str, list[dict[str, Any]]] = {page: [] for page in PAGES}
    for key, spec in app.callback_map.items():
        inputs = [f"{i['id']}.{i['property']}" for i in spec["inputs"]]
        if "run-version.data" not in inputs:
            continue
        outputs = [o.rsplit(".", 1) for o in key.strip(".").split("...")]
        page = next((p for p, prefix in PAGES.items() if outputs[0][0].startswith(prefix)), None)
        if page is None:
            continue
        body = {
            "output": key,
            "outputs": [{"id": i, "property": p} for i, p in outputs] if key.startswith("..") else
            {"id": outputs[0][0], "property": outputs[0][1]},
            "inputs": [{"id": i["id"], "property": i["property"], "value": values.get(f"{i['id']}.{i['property']}")}
                       for i in spec["inputs"]],
            "state": [{"id": s["id"], "property": s["property"], "value": values.get(f"{s['id']}.{s['property']}")}
                      for s in spec.get("state", [])],
            "changedPropIds": ["run-version.data"],
        }
        out[page].append(body)
    return out


def _poll_body(app: Any) -> dict[str, Any]:
    key = next(k for k in app.callback_map if "run-version.data" in k and "status-line" in k)
    outputs = [o.rsplit(".", 1) for o in key.strip(".").split("...")]
    spec = app.callback_map[key]
    return {"output": key, "outputs": [{"id": i, "property": p} for i, p in outputs],
            "inputs": [{"id": "tick", "property": "n_intervals", "value": 1}],
            "state": [{"id": s["id"], "property": s["property"], "value": None} for s in spec.get("state", [])],
            "changedPropIds": ["tick.n_intervals"]}


#: Kept by the browser from an answer, for the State of later requests: the map's clientside callback keeps the
#: digests of the figure it applied (dashboards.figpatch.APPLY_FIGURE_JS).
BROWSER_KEEPS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "ov-map-server.data": ("ov-map-sent.data", lambda message: message.get("digests")),
}


def _page_time(client: Any, poll: dict[str, Any], bodies: list[dict[str, Any]],
               carried: dict[str, Any]) -> tuple[float, int]:
    """One refresh of a page: the poll, then its callbacks one after the other (the browser sends them in
    parallel; serial is the worst case on one core). Seconds and response bytes. ``carried``: State values
    a callback's own earlier answer set (``id.property`` -> value), updated from each answer."""
    t0 = time.perf_counter()
    size = 0
    for body in [poll, *bodies]:
        for state in body["state"]:
            key = f"{state['id']}.{state['property']}"
            if key in carried:
                state["value"] = carried[key]
        response = client.post("/_dash-update-component", json=body)
        if response.status_code not in (200, 204):
            raise RuntimeError(f"{body['output']} answered {response.status_code}: {response.data[:300]!r}")
        size += len(response.data)
        if response.status_code == 200 and any(f"{s['id']}.{s['property']}" in carried for s in body["state"]):
            answer = json.loads(response.data).get("response", {})
            for component, props in answer.items():
                for prop, value in props.items():
                    key = f"{component}.{prop}"
                    if key in BROWSER_KEEPS:
                        kept, take = BROWSER_KEEPS[key]
                        carried[kept] = take(value)
                    elif key in carried:
                        carried[key] = value
    return time.perf_counter() - t0, size


def _carried(bodies: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """``id.property`` of every State that the same callback's answer sets, itself or through what the browser
    keeps of it (None: nothing sent yet)."""
    out = {}
    for calls in bodies.values():
        for body in calls:
            outputs = body["outputs"] if isinstance(body["outputs"], list) else [body["outputs"]]
            written = {f"{o['id']}.{o['property']}" for o in outputs}
            written |= {BROWSER_KEEPS[w][0] for w in written if w in BROWSER_KEEPS}
            out.update({key: None for s in body["state"] if (key := f"{s['id']}.{s['property']}") in written})
    return out


def _measure(run: Path, *, repeat: int, arrive: Callable[[], bool]) -> dict[str, dict[str, float]]:
    t0 = time.perf_counter()
    RunData(run).warm()
    first_read = time.perf_counter() - t0
    app = create_app(run)
    client = app.server.test_client()
    data = RunData(run)
    bodies = _bodies(app, data)
    poll = _poll_body(app)
    carried = _carried(bodies)
    out: dict[str, dict[str, float]] = {"first read": {"cold_s": first_read}}
    for page, calls in bodies.items():
        cold, size = _page_time(client, poll, calls, carried)
        warm = [_page_time(client, poll, calls, carried)[0] for _ in range(repeat)]
        out[page] = {"cold_s": cold, "warm_s": statistics.median(warm), "kb": size / 1024}
    for page, calls in bodies.items():
        live, sizes = [], []
        for _ in range(repeat):
            if not arrive():
                break
            seconds, size = _page_time(client, poll, calls, carried)
            live.append(seconds)
            sizes.append(size)
        out[page]["live_s"] = statistics.median(live) if live else float("nan")
        out[page]["live_max_s"] = max(live) if live else float("nan")
        out[page]["live_kb"] = statistics.median(sizes) / 1024 if sizes else float("nan")
    return out


def _synthetic(args: argparse.Namespace, tmp: Path) -> tuple[Path, Callable[[], bool], str]:
    from dashboards.synthetic import SyntheticTwin
    from grids.catalog import load_feeder
    from twin.grid.topology import feeder_topology

    topology = feeder_topology(load_feeder(args.feeder))
    n = args.days * 96
    run = tmp / "run"
    twin = SyntheticTwin(run, topology, n_intervals=n + 6 * args.repeat + 1, n_assets=110, seed=1)
    twin.write_start()
    while twin.done < n:
        twin.advance(min(args.flush_every, n - twin.done))
    twin.settle()

    def arrive() -> bool:
        twin.advance(1)
        return True

    return run, arrive, (f"synthetic {args.feeder}: {len(topology.buses)} buses, {len(twin.assets)} assets, "
                         f"2 policies x {n} intervals")


def _real(args: argparse.Namespace, tmp: Path) -> tuple[Path, Callable[[], bool], str]:
    """A copy of the run marked running (no kpis.parquet: KPIs computed live, as while a run goes); ``arrive``
    appends one interval to every table, as a paced run's one-interval parts, in the layout the run store
    writes (twin.records.parts), and bumps status.json. The k-th interval appended repeats the values of the
    k-th row of the table's last recorded part (the run's last day), so every new interval differs from the one
    before, as a running twin's do (the map's colours change; only they should travel)."""
    import pandas as pd

    from twin.records.parts import part_paths, read_parts, write_part
    from twin.records.runstore import MATRIX_TABLES

    source = Path(args.run)
    meta = json.loads((source / "meta.json").read_text())
    status = json.loads((source / "status.json").read_text())
    run = tmp / "run"
    shutil.copytree(source, run, ignore=shutil.ignore_patterns("kpis.parquet", "report.html", "report-data",
                                                               "plotly.min.js"))
    state = dict(status, state="running")
    (run / "status.json").write_text(json.dumps(state))
    folders = sorted({p.parent for p in run.rglob("part-*.parquet")})
    step = pd.Timedelta(meta.get("scenario", {}).get("step", "15min"))
    templates = {folder: read_parts(part_paths(folder)[-1:]) for folder in folders}
    appended = 0

    def arrive() -> bool:
        nonlocal appended
        for folder in folders:
            template = templates[folder]
            row = template.iloc[[appended % len(template)]].copy()
            row.index = pd.DatetimeIndex([template.index[-1] + (appended + 1) * step], name=template.index.name)
            number = int(part_paths(folder)[-1].stem.split("-")[1]) + 1
            write_part(row, folder / f"part-{number:06d}.parquet", matrix=folder.name in MATRIX_TABLES)
        appended += 1
        state["done"] = int(state.get("done") or 0) + 1
        state["total"] = max(int(state.get("total") or 0), state["done"])
        state["updated_utc"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        (run / "status.json").write_text(json.dumps(state))
        return True

    return run, arrive, (f"run {source.name}: feeder {meta.get('scenario', {}).get('feeder')}, "
                         f"{len(meta.get('assets', []))} assets, policies {meta.get('policies')}, "
                         f"{status.get('done')} intervals")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="a real run folder (default: a synthetic one)")
    parser.add_argument("--feeder", default="ieee-eu-lv")
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--flush-every", type=int, default=96, help="intervals per Parquet part (run_scenario: 96)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gridtwin-bench-") as tmp:
        t0 = time.perf_counter()
        run, arrive, what = (_real if args.run else _synthetic)(args, Path(tmp))
        print(f"{what} (prepared in {time.perf_counter() - t0:.1f} s)")
        results = _measure(run, repeat=args.repeat, arrive=arrive)
    first = results.pop("first read")["cold_s"]
    print(f"first read of the whole run (RunData.warm): {first:.2f} s")
    print(f"{'page':12} {'cold':>8} {'warm':>8} {'live':>8} {'live max':>9} {'cold resp':>10} {'live resp':>10}")
    for page, r in results.items():
        print(f"{page:12} {r['cold_s']:7.3f}s {r['warm_s']:7.3f}s {r['live_s']:7.3f}s {r['live_max_s']:8.3f}s "
              f"{r['kb']:8.0f}kB {r['live_kb']:8.0f}kB")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worst = max(max(r["warm_s"], r["live_s"] if r["live_s"] == r["live_s"] else 0.0) for r in results.values())
    print(json.dumps({page: {k: round(v, 3) for k, v in r.items()} for page, r in results.items()}))
    print(f"slowest page refresh (warm or live median): {worst * 1e3:.0f} ms (target < 1000 ms): "
          f"{'OK' if worst < 1.0 else 'SLOW'}; peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
