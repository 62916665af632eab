"""``gridtwin ledger ...``: verify a run's ledger, audit it against a participant's kept heads, print a
participant's statement, prove an entry, show the operator's public key.

The lead mounts :data:`ledger_app` on the main CLI. Exit codes: 0 good; 1 the ledger fails verification (or
an audit finds a rewrite, or a proof does not verify); 3 the ledger is incomplete (no closing checkpoint: a
killed or still running writer); 2 bad arguments (typer's convention), each with a message naming the value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from twin.settlement import keystore
from twin.settlement.ledger import (
    Ledger,
    LedgerError,
    LedgerStatus,
    audit,
    resolve_ledger_path,
    verify,
    verify_inclusion,
)
from twin.settlement.witness import WITNESS_DIRNAME, WitnessError, WitnessStore, read_heads

__all__ = ["EXIT_INCOMPLETE", "ledger_app"]

#: ``gridtwin ledger verify`` on a ledger without its closing checkpoint.
EXIT_INCOMPLETE = 3

ledger_app = typer.Typer(
    help="Settlement ledger: verify the hash chain and signed checkpoints, audit against kept heads, print "
         "statements, prove entries.",
    no_args_is_help=True,
)

RunArg = Annotated[Path, typer.Argument(metavar="RUN",
                                        help="Policy folder holding ledger.sqlite, or the path of a ledger .sqlite file.",
                                        show_default=False)]
PublicKeyOpt = Annotated[Optional[Path], typer.Option(
    "--public-key", metavar="FILE",
    help="The operator's published public key (PEM, or hex / base64 of the raw 32 bytes) to check signatures "
         f"with. Default: ${keystore.TRUSTED_KEY_ENV}, else this machine's key store.")]
UnsignedOpt = Annotated[bool, typer.Option(
    "--unsigned", help="Check the file's own consistency without a trusted key (proves nothing about who signed).")]


def _ledger_file(run: Path) -> Path:
    path = resolve_ledger_path(run)
    if not path.is_file():
        where = f"run folder {str(run)!r} has no ledger.sqlite" if run.is_dir() else f"{str(run)!r} does not exist"
        if run.is_dir():  # a run folder holds one ledger per settling policy: name the ones it has
            ledgers = sorted(str(p.parent) for p in run.glob(f"*/{path.name}") if p.is_file())
            if ledgers:
                where += f"; each policy has its own: {', '.join(ledgers)}"
        raise typer.BadParameter(where, param_hint="RUN")
    return path


def _open(path: Path) -> Ledger:
    try:
        return Ledger.open(path, read_only=True)
    except LedgerError as exc:
        raise typer.BadParameter(str(exc), param_hint="RUN") from None


def _trusted(public_key: Path | None, *, unsigned: bool) -> keystore.TrustedKey | None:
    """The key to check signatures with; a usage error (exit 2) when there is none and not ``unsigned``."""
    if unsigned and public_key is not None:
        raise typer.BadParameter("--unsigned and --public-key exclude each other", param_hint="--unsigned")
    if unsigned:
        return None
    try:
        trusted = keystore.trusted_key(public_key)
    except keystore.KeyStoreError as exc:
        raise typer.BadParameter(str(exc), param_hint="--public-key") from None
    if trusted is None:
        raise typer.BadParameter(
            f"no trusted operator key: name the operator's published public key with --public-key FILE (or set "
            f"{keystore.TRUSTED_KEY_ENV}=FILE); a key found in the run folder is never trusted. --unsigned checks "
            "the file without one", param_hint="--public-key")
    return trusted


@ledger_app.command("verify")
def verify_command(run: RunArg, public_key: PublicKeyOpt = None, unsigned: UnsignedOpt = False) -> None:
    """Check every entry, the hash chain, the signed checkpoints, their coverage and the balances; name the
    first bad entry. Exit 0 OK, 1 FAILED, 3 INCOMPLETE (no closing checkpoint: a killed run)."""
    path = _ledger_file(run)
    trusted = _trusted(public_key, unsigned=unsigned)
    try:
        report = verify(path, public_key=trusted.public_key if trusted else None, unsigned=unsigned)
    except LedgerError as exc:
        raise typer.BadParameter(str(exc), param_hint="RUN") from None
    out = Console(soft_wrap=True)
    whose = f"signatures by {trusted.public_key} ({trusted.source})" if trusted else "signatures NOT checked"
    summary = (f"{report.entries} entries, {report.checkpoints} signed checkpoint(s) (last covers "
               f"{report.last_checkpoint_size}), {len(report.balances)} accounts")
    if report.ok:
        out.print(f"OK {path}: {summary}, postings sum to 0, closed; {whose}", markup=False)
        for note in report.notes:
            out.print(f"  - {note}", markup=False)
        return
    err = Console(stderr=True, soft_wrap=True)
    if report.status is LedgerStatus.INCOMPLETE:
        err.print(f"INCOMPLETE {path}: {summary}; {whose}", markup=False)
        for note in report.notes:
            err.print(f"  - {note}", markup=False)
        raise typer.Exit(EXIT_INCOMPLETE)
    first = f"first bad entry: {report.first_bad_entry}" if report.first_bad_entry else "no single bad entry"
    err.print(f"FAILED {path}: {first}", markup=False)
    for problem in report.problems:
        err.print(f"  - {problem}", markup=False)
    raise typer.Exit(1)


@ledger_app.command("audit")
def audit_command(
    run: RunArg,
    heads: Annotated[Optional[list[Path]], typer.Option(
        "--heads", metavar="FILE", help="A participant's kept heads (JSON lines, as delivered). Repeatable.")] = None,
    participant: Annotated[Optional[list[str]], typer.Option(
        "--participant", metavar="ID", help=f"Use RUN/{WITNESS_DIRNAME}/<ID>.heads.jsonl. Repeatable.")] = None,
    all_: Annotated[bool, typer.Option("--all", help=f"Every participant's heads in RUN/{WITNESS_DIRNAME}/.")] = False,
    public_key: PublicKeyOpt = None,
) -> None:
    """Check signed tree heads participants kept against the ledger with RFC 6962 consistency proofs: a history
    rewritten after a head was handed out — even by the key holder — fails. Exit 0 consistent, 1 not."""
    path = _ledger_file(run)
    folder = path.parent / WITNESS_DIRNAME
    files = [*(heads or [])]
    store = WitnessStore(folder)
    try:
        files += [store.path_for(p) for p in participant or []]
    except WitnessError as exc:
        raise typer.BadParameter(str(exc), param_hint="--participant") from None
    if all_:
        files += sorted(folder.glob("*.heads.jsonl"))
    if not files:
        raise typer.BadParameter(f"name the heads to audit: --heads FILE, --participant ID or --all (found none in "
                                 f"{folder})", param_hint="--heads")
    trusted = _trusted(public_key, unsigned=False)
    assert trusted is not None
    out, err = Console(soft_wrap=True), Console(stderr=True, soft_wrap=True)
    failed = False
    for file in files:
        try:
            kept = read_heads(file)
            report = audit(path, kept, public_key=trusted.public_key)
        except WitnessError as exc:
            raise typer.BadParameter(str(exc), param_hint="--heads") from None
        except LedgerError as exc:
            raise typer.BadParameter(str(exc), param_hint="RUN") from None
        if report.ok:
            latest = report.latest
            assert latest is not None
            out.print(f"CONSISTENT {file}: {report.heads} kept head(s) (sizes up to {max(report.consistent)}) are "
                      f"prefixes of checkpoint {latest.id} ({latest.tree_size} entries)", markup=False)
            continue
        failed = True
        err.print(f"INCONSISTENT {file} against {path}:", markup=False)
        for problem in report.problems:
            err.print(f"  - {problem}", markup=False)
    if failed:
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
    public_key: PublicKeyOpt = None,
    unsigned: UnsignedOpt = False,
) -> None:
    """Print the Merkle inclusion proof of ENTRY and verify it against the last signed checkpoint."""
    path = _ledger_file(run)
    trusted = _trusted(public_key, unsigned=unsigned)
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
    ok = verify_inclusion(proof, public_key=trusted.public_key if trusted else None)
    ck = proof.checkpoint
    out = Console(soft_wrap=True)
    out.print(f"entry {proof.entry_seq}: {proof.entry_body.decode('ascii')}", markup=False)
    out.print(f"leaf hash: {proof.leaf_hash}")
    for level, sibling in enumerate(proof.path):
        out.print(f"  path[{level}]: {sibling}")
    out.print(f"checkpoint {ck.id}: tree size {ck.tree_size}, root {ck.root_hash}")
    out.print(f"signed by {ck.public_key}" + (f" (trusted: {trusted.source})" if trusted else " (NOT checked: --unsigned)"),
              markup=False)
    if not ok:
        Console(stderr=True).print(f"NOT VERIFIED: entry {entry} does not prove against checkpoint {ck.id}")
        raise typer.Exit(1)
    out.print(f"verified: entry {entry} is included in the signed tree of {ck.tree_size} entries")


@ledger_app.command("public-key")
def public_key_command(
    out: Annotated[Optional[Path], typer.Option("--out", metavar="FILE", help="Also write it (PEM) here.")] = None,
) -> None:
    """Print the operator's public key from this machine's key store (to publish to verifiers)."""
    try:
        key = keystore.operator_key(create=False)
    except keystore.KeyStoreError as exc:
        raise typer.BadParameter(str(exc)) from None
    public = keystore.public_key_hex(key)
    pem = keystore.public_key_pem(public)
    typer.echo(f"operator public key (hex): {public}")
    typer.echo(pem.decode("ascii"), nl=False)
    if out is not None:
        out.write_bytes(pem)
        typer.echo(f"wrote {out}")
