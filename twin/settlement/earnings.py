"""What each participant earned under each policy of a run: the net of its postings in that policy's ledger, by
rule (capacity and performance payments, penalties, the community's energy bill, reward-pool shares).

Read once when a run ends (``write_run_earnings``) into ``RUN/earnings.parquet``, so the CLI's table and the
report (``twin.reporting.report.earnings_by_participant``) show the same numbers without opening the ledgers
again. Amounts are EUR as floats, for display only:
the ledger's integer micro-units stay the record (``gridtwin ledger statement`` prints them).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from twin.settlement.ledger import LEDGER_FILENAME, Ledger

__all__ = ["EARNINGS_FILE", "ledger_earnings", "run_earnings", "write_run_earnings"]

#: The run folder's earnings table: one row per (policy, participant, rule), column ``eur``.
EARNINGS_FILE = "earnings.parquet"
_PARTICIPANT = "participant:"
_COLUMNS = ["policy", "participant", "rule", "eur"]


def ledger_earnings(path: Path) -> pd.DataFrame:
    """One ledger's participant totals: columns participant, rule, eur (positive = paid to the participant)."""
    with Ledger.open(path, read_only=True) as ledger:
        totals = ledger.totals_by_rule()
    rows = [(account.removeprefix(_PARTICIPANT), rule, float(amount))
            for (account, rule), amount in totals.items() if account.startswith(_PARTICIPANT)]
    return pd.DataFrame(rows, columns=_COLUMNS[1:])


def run_earnings(run_dir: Path, policies: Sequence[str]) -> pd.DataFrame:
    """Every settled policy's participant totals (policies without a ledger are left out)."""
    frames = []
    for policy in policies:
        path = Path(run_dir) / policy / LEDGER_FILENAME
        if path.is_file():
            frames.append(ledger_earnings(path).assign(policy=policy))
    if not frames:
        return pd.DataFrame(columns=_COLUMNS)
    return pd.concat(frames, ignore_index=True)[_COLUMNS]


def write_run_earnings(run_dir: Path, policies: Sequence[str]) -> pd.DataFrame:
    """``run_earnings`` written to ``RUN/earnings.parquet`` (atomically) and returned."""
    table = run_earnings(run_dir, policies)
    path = Path(run_dir) / EARNINGS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    table.to_parquet(tmp)
    os.replace(tmp, path)
    return table
