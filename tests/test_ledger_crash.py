"""Crash safety: a writer settling many intervals is SIGKILLed at random points and resumed; the ledger it
leaves verifies, balances, settles every interval exactly once, and holds exactly the entries an
uninterrupted run writes."""

import random
import signal
import subprocess
import sys
import time
from contextlib import closing
from decimal import Decimal

import pytest

from twin.settlement.ledger import Ledger, LedgerStatus, verify

INTERVALS = 400
PARTICIPANTS = ("a", "b", "c")

WRITER = '''
import sys
from decimal import Decimal

import pandas as pd

from twin.settlement import Settlement, SettlementConfig, meters_frame

run_dir, intervals = sys.argv[1], int(sys.argv[2])
ids = ["a", "b", "c"]
config = SettlementConfig.from_mapping({
    "checkpoint_every": 37,
    "contracts": [{"participant": p, "rules": [{"kind": "capacity_payment", "committed_kw": str(10 + i),
                                               "price_per_kw_month": "3.33"}]} for i, p in enumerate(ids)],
    "communities": [{"name": "c1", "method": "sdr", "members": ids, "grid_buy_per_kwh": "0.3127",
                     "feed_in_per_kwh": "0.0611"}],
})
settlement = Settlement.for_run(run_dir, config=config, run_id="crash-test")
print("ready", flush=True)
t0, step = pd.Timestamp("2024-07-01T00:00Z"), pd.Timedelta("15min")
imp = {p: Decimal("1000") for p in ids}
exp = {p: Decimal("0") for p in ids}
# Every run, first or resumed, walks all intervals from the start: settled ones are no-ops.
for k in range(intervals):
    start = pd.DataFrame({"e_imp_kwh": imp, "e_exp_kwh": exp})
    for i, p in enumerate(ids):
        imp[p] += Decimal((k * 7 + i * 3) % 11) / 4
        exp[p] += Decimal((k * 5 + i * 2) % 13) / 8
    end = pd.DataFrame({"e_imp_kwh": imp, "e_exp_kwh": exp})
    settlement.settle_interval(start=t0 + k * step, end=t0 + (k + 1) * step,
                               meters=meters_frame(start_registers=start, end_registers=end))
settlement.close()
print("done", flush=True)
'''


def run_writer(script, run_dir, *, kill_after=None):
    """Run the writer; with ``kill_after`` seconds, SIGKILL it then (after it is ready). True if killed."""
    with subprocess.Popen([sys.executable, str(script), str(run_dir), str(INTERVALS)],
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "ready"
        if kill_after is None:
            assert proc.stdout.read().strip() == "done"
            assert proc.wait(timeout=300) == 0
            return False
        time.sleep(kill_after)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.stdout.read()
        proc.wait(timeout=60)
        return killed


def entries(path):
    with closing(Ledger.open(path, read_only=True)) as ledger:
        return [(e.seq, e.body) for e in ledger.entries()], ledger.size()


@pytest.mark.slow
def test_sigkilled_writer_resumes_to_the_same_ledger(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER, encoding="utf-8")
    rng = random.Random(20240701)

    crashed = tmp_path / "crashed"
    kills, sizes = 0, []
    while kills < 5:
        if run_writer(script, crashed, kill_after=rng.uniform(0.02, 0.5)):
            kills += 1
            sizes.append(entries(crashed / "ledger.sqlite")[1])
            report = verify(crashed / "ledger.sqlite")
            # Every intermediate state is intact; killed mid-run, it has no closing checkpoint, and says so.
            assert report.intact, report.problems
            assert report.status is LedgerStatus.INCOMPLETE or sizes[-1] == INTERVALS * (len(PARTICIPANTS) + 1)
    run_writer(script, crashed)  # resume to the end
    assert kills >= 5 and len(set(sizes)) > 1, sizes  # killed at different points, not all at the start

    reference = tmp_path / "reference"
    run_writer(script, reference)

    report = verify(crashed / "ledger.sqlite")
    assert report.ok, report.problems
    assert report.postings_sum_micro == 0 and sum(report.balances.values()) == 0
    # Every interval settled exactly once: 3 capacity entries + 1 community entry per interval.
    crashed_entries, size = entries(crashed / "ledger.sqlite")
    assert size == INTERVALS * (len(PARTICIPANTS) + 1)
    with closing(Ledger.open(crashed / "ledger.sqlite", read_only=True)) as ledger:
        keys = [(f["interval_start"], f["participant"], f["rule"]) for f in (e.fields for e in ledger.entries())]
    assert len(set(keys)) == len(keys)
    # The entries (not the checkpoint positions, which depend on where the kills fell) are byte-identical
    # to an uninterrupted run's, and so are the balances.
    assert crashed_entries == entries(reference / "ledger.sqlite")[0]
    assert report.balances == verify(reference / "ledger.sqlite").balances
    assert report.balances["participant:a"] != Decimal(0)
