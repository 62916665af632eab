"""``gridtwin study``: the typer command for offline what-if studies (registered by ``twin.cli``).

Bad input (study file, arguments, unreachable scheduler) exits 2 with a message naming the key and value;
a study in which some variants failed exits 1 after listing them; everything else exits 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["study"]

_console = Console()
_err_console = Console(stderr=True)


def study(
    study: Annotated[Path, typer.Argument(metavar="STUDY", help="Study TOML file (base scenario + sweep axes).")],
    scheduler: Annotated[
        str | None, typer.Option("--scheduler", metavar="tcp://HOST:PORT", help="Use a running Dask cluster.")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Worker processes of the local Dask cluster.")] = 2,
    serial: Annotated[bool, typer.Option("--serial", help="Run variants one by one in this process (no Dask).")] = False,
    out: Annotated[
        Path | None, typer.Option("--out", metavar="DIR", help="Output folder (default: studies/<study name>).")
    ] = None,
) -> None:
    """Run a what-if study: every variant of a base scenario, resumable, on Dask or serially."""
    from twin.studies.model import StudyError
    from twin.studies.runner import run_study

    out_dir = out if out is not None else Path("studies") / study.stem
    try:
        result = run_study(
            study, out_dir=out_dir, scheduler=scheduler, workers=workers,
            executor="serial" if serial else "dask", progress=True, console=_err_console,
        )
    except StudyError as exc:
        _err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    _console.print(
        f"study [bold]{result.study.name}[/]: {len(result.study.variants)} variants — "
        f"{len(result.executed) - len(result.failed)} ran, {len(result.skipped)} already finished, "
        f"{len(result.failed)} failed"
    )
    _console.print(f"results: {result.results_path}\nreport:  {result.report_path}")
    if result.failed:
        # One line per variant, not a table: ids and errors must survive narrow terminals and log files.
        _err_console.print(f"[bold red]{len(result.failed)} variants failed[/] (details in {result.out_dir / 'failed'}):")
        for f in result.failed:
            _err_console.print(f"  {f.variant_id}  {f.label}: {f.error_type}: {f.error}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
