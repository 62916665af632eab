"""``gridtwin dashboard``: the command that serves the operator app, contributed to the twin's CLI through
the ``gridtwin.commands`` entry point (pyproject.toml)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

__all__ = ["dashboard"]


def dashboard(
    run: Annotated[Path, typer.Argument(help="A run folder: finished, being written by `gridtwin run --pace`, or "
                                             "empty (or still to be made) to wait for `gridtwin run --out RUN`.")],
    studies: Annotated[Path | None, typer.Option(help="A folder of study results to browse.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8050,
    refresh_s: Annotated[float, typer.Option(help="Seconds between live refreshes.")] = 5.0,
    login_to_view: Annotated[bool | None, typer.Option(
        "--login-to-view/--open-view",
        help="Whether viewing needs the operator login too (default: only when --host is not loopback).")] = None,
) -> None:
    """Serve the operator dashboard for a run. Operator actions need the password in the environment
    variable GRIDTWIN_OPERATOR_PASSWORD (never on the command line, where `ps` would show it); off loopback,
    viewing needs it too."""
    from dashboards.app import serve

    err = Console(stderr=True, soft_wrap=True)
    if run.exists() and not run.is_dir():
        err.print(f"[bold red]error:[/] RUN={str(run)!r}: not a folder", highlight=False)
        raise typer.Exit(2)
    if not run.exists() and not run.parent.is_dir():
        err.print(f"[bold red]error:[/] RUN={str(run)!r}: no such folder, nor its parent {str(run.parent)!r}",
                  highlight=False)
        raise typer.Exit(2)
    if not (run / "meta.json").exists():
        err.print(f"RUN={str(run)!r} holds no run yet: the dashboard waits for one "
                  f"(gridtwin run SCENARIO --out {run})")
    if studies is not None and not studies.is_dir():
        err.print(f"[bold red]error:[/] --studies={str(studies)!r}: not a folder", highlight=False)
        raise typer.Exit(2)
    password = os.environ.get("GRIDTWIN_OPERATOR_PASSWORD") or None
    if password is None:
        err.print("GRIDTWIN_OPERATOR_PASSWORD is not set: the dashboard is read-only.")
    err.print(f"dashboard on http://{host}:{port}/ (Ctrl+C to stop)")
    try:
        serve(run, host=host, port=port, operator_password=password, studies_dir=studies, refresh_s=refresh_s,
              views_need_login=login_to_view)
    except ValueError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from None
