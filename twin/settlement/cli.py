"""``gridtwin ledger ...``: verify a run's ledger, print a participant's statement, prove an entry.

The lead mounts :data:`ledger_app` on the main CLI. Exit codes: 0 good, 1 the ledger fails verification
(or a proof does not verify), 2 bad arguments (typer's convention), each with a message naming the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from twin.settlement.ledger import (
    Ledger,
    LedgerError,
    resolve_ledger_path,
    verify,
    verify_inclusion,
)
from twin.settlement.signing import OPERATOR_KEY_FILENAME, load_operator_public_key, public_key_hex

__all__ = ["ledger_app"]

ledger_app = typer.Typer(
    help="Settlement ledger: verify the hash chain and signed checkpoints, print statements, prove entries.",
    no_args_is_help=True,
)

RunArg = Annotated[Path, typer.Argument(metavar="RUN",
                                        help="Run folder holding ledger.sqlite, or the path of a ledger .sqlite file.",
                                        show_default=False)]


def _ledger_file(run: Path) -> Path:
    path = resolve_ledger_path(run)
    if not path.is_file():
        where = f"run folder {str(run)!r} has no ledger.sqlite" if run.is_dir() else f"{str(run)!r} does not exist"
        raise typer.BadParameter(where, param_hint="RUN")
    return path


def _open(path: Path) -> Ledger:
    try:
        return Ledger.open(path, read_only=True)
    except LedgerError as exc:
        raise typer.BadParameter(str(exc), param_hint="RUN") from None


def _pinned_key(path: Path) -> str | None:
    key_file = path.parent / OPERATOR_KEY_FILENAME
    return public_key_hex(load_operator_public_key(key_file)) if key_file.is_file() else None


@ledger_app.command("verify")
def verify_command(run: RunArg) -> None:
    """Check every entry, the hash chain, the signed checkpoints and the balances; name the first bad entry."""
    path = _ledger_file(run)
    try:
        report = verify(path)
    except LedgerError as exc:
        raise typer.BadParameter(str(exc), param_hint="RUN") from None
    out = Console(soft_wrap=True)
    if report.ok:
        out.print(f"OK {path}: {report.entries} entries, {report.checkpoints} signed checkpoint(s) "
                  f"(last covers {report.last_checkpoint_size}), {len(report.balances)} accounts, postings sum to 0")
        return
    err = Console(stderr=True, soft_wrap=True)
    first = f"first bad entry: {report.first_bad_entry}" if report.first_bad_entry else "no single bad entry"
    err.print(f"FAILED {path}: {first}")
    for problem in report.problems:
        err.print(f"  - {problem}", markup=False)
    raise typer.Exit(1)


@ledger_app.command("statement")
def statement_command(
    run: RunArg,
    participant: Annotated[str, typer.Argument(metavar="PARTICIPANT", help="Participant id (account participant:<id>).",
                                               show_default=False)],
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the rows to this CSV file.")] = None,
) -> None:
    """Print a participant's postings with a running balance, totals per rule, and optionally a CSV."""
    path = _ledger_file(run)
    ledger = _open(path)
    try:
        statement = ledger.statement(participant)
        known = sorted(a.removeprefix("participant:") for a in ledger.balances() if a.startswith("participant:"))
    finally:
        ledger.close()
    if statement.rows.empty:
        raise typer.BadParameter(f"{participant!r} has no postings in {path} (participants: {', '.join(known)})",
                                 param_hint="PARTICIPANT")
    table = Table(title=f"Statement for {participant} — {path}")
    for column, justify in (("seq", "right"), ("interval start (UTC)", "left"), ("rule", "left"),
                            ("version", "left"), ("amount", "right"), ("balance", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for row in statement.rows.itertuples():
        table.add_row(str(row.seq), row.interval_start.strftime("%Y-%m-%d %H:%M"), row.rule, row.rule_version,
                      f"{row.amount:,.6f}", f"{row.balance:,.6f}")
    out = Console(soft_wrap=True)
    out.print(table)
    for rule, amount in statement.by_rule.items():
        out.print(f"  {rule}: {amount:,.6f}")
    out.print(f"  total: {statement.total:,.6f}")
    if csv is not None:
        statement.rows.to_csv(csv, index=False)
        out.print(f"wrote {len(statement.rows)} rows to {csv}")


@ledger_app.command("prove")
def prove_command(
    run: RunArg,
    entry: Annotated[int, typer.Argument(metavar="ENTRY", help="Entry sequence number (1-based).", show_default=False)],
) -> None:
    """Print the Merkle inclusion proof of ENTRY and verify it against the last signed checkpoint."""
    path = _ledger_file(run)
    ledger = _open(path)
    try:
        if not 1 <= entry <= ledger.size():
            raise typer.BadParameter(f"entry {entry} is not in {path} (entries 1..{ledger.size()})", param_hint="ENTRY")
        try:
            proof = ledger.prove(entry)
        except LedgerError as exc:
            Console(stderr=True, soft_wrap=True).print(f"cannot prove: {exc}", markup=False)
            raise typer.Exit(1) from None
    finally:
        ledger.close()
    pinned = _pinned_key(path)
    ok = verify_inclusion(proof, public_key=pinned)
    ck = proof.checkpoint
    out = Console(soft_wrap=True)
    out.print(f"entry {proof.entry_seq}: {proof.entry_body.decode('ascii')}", markup=False)
    out.print(f"leaf hash: {proof.leaf_hash}")
    for level, sibling in enumerate(proof.path):
        out.print(f"  path[{level}]: {sibling}")
    out.print(f"checkpoint {ck.id}: tree size {ck.tree_size}, root {ck.root_hash}")
    out.print(f"signed by {ck.public_key}" + (" (the operator key file)" if pinned else " (no key file to pin)"))
    if not ok:
        Console(stderr=True).print(f"NOT VERIFIED: entry {entry} does not prove against checkpoint {ck.id}")
        raise typer.Exit(1)
    out.print(f"verified: entry {entry} is included in the signed tree of {ck.tree_size} entries")
