"""The ``gridtwin`` command line. The only place that configures logging and talks to the terminal.

Every bad argument or input file ends with a one-paragraph error naming the field and value, exit code 2.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from twin.scenario import Scenario, ScenarioError, demo_scenario_path, format_duration, load_scenario
from twin.live.live_run import live_command
from twin.live.simulator import broker_command, devices_command
from twin.settlement.cli import ledger_app
from twin.studies.cli import study as study_command

app = typer.Typer(
    name="gridtwin",
    help="A feeder digital twin comparing decentralized (DePIN) and central SCADA control of DERs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
telemetry_app = typer.Typer(help="Replayed telemetry in the canonical long format.", no_args_is_help=True)
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(ledger_app, name="ledger")

console = Console()
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _load(path: Path) -> Scenario:
    try:
        return load_scenario(path)
    except ScenarioError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def _default_agent_workers() -> int:
    """One agent worker per core (up to 8): DePIN agents of a round solve in parallel; 1 = in-process."""
    return max(1, min(os.cpu_count() or 1, 8))


AgentWorkers = Annotated[int | None, typer.Option(
    help="Processes the DePIN edge agents run in (default: one per core, up to 8; 1 = in this process). "
         "Results do not depend on it.")]


def _run_and_report(scenario: Scenario, *, out: Path | None, runs_root: Path, pace: float | None = None,
                    report: bool = False, agent_workers: int | None = None) -> None:
    from twin.records.kpis import KPI_LABELS
    from twin.run import run_scenario

    if agent_workers is not None and agent_workers < 1:
        _fail(f"--agent-workers={agent_workers}: must be >= 1")

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(f"{scenario.name}: {len(scenario.controllers)} policies", total=len(scenario.times))
        try:
            result = run_scenario(
                scenario,
                out=out,
                runs_root=runs_root,
                pace=pace,
                on_progress=lambda done, total: progress.update(task, completed=done),
                agent_workers=_default_agent_workers() if agent_workers is None else agent_workers,
            )
        except (ValueError, FileNotFoundError) as exc:
            progress.stop()
            _fail(str(exc))
            raise
    table = Table(title=f"KPIs — {scenario.name} ({scenario.feeder}, {scenario.start:%Y-%m-%d} .. {scenario.end:%Y-%m-%d})")
    table.add_column("KPI")
    for name in result.kpis:
        table.add_column(name, justify="right")
    for key, label in KPI_LABELS.items():
        row = []
        for k in result.kpis.values():
            v = k.as_dict()[key]
            row.append(f"{v:,.3f}" if isinstance(v, float) else f"{v:,}")
        table.add_row(escape(label), *row)
    console.print(table)
    if result.path is not None:
        console.print(f"run folder: [bold]{result.path}[/]")
        if report:
            from twin.reporting.report import write_report

            console.print(f"report: [bold]{write_report(result.path)}[/]")


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def demo(
    out: Annotated[Path | None, typer.Option(help="Run folder to write (default: runs/demo-<time>).")] = None,
    runs_root: Annotated[Path, typer.Option(help="Where new run folders go.")] = Path("runs"),
    agent_workers: AgentWorkers = None,
) -> None:
    """Run the embedded default: a SimBench LV feeder with a DER fleet, one week at 15 minutes."""
    _run_and_report(_load(demo_scenario_path()), out=out, runs_root=runs_root, report=True,
                    agent_workers=agent_workers)


@app.command()
def compare(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML file with two or more [[controllers]].")],
    out: Annotated[Path | None, typer.Option(help="Run folder to write (default: runs/<name>-<time>).")] = None,
    runs_root: Annotated[Path, typer.Option(help="Where new run folders go.")] = Path("runs"),
    agent_workers: AgentWorkers = None,
) -> None:
    """Run the policies side by side on the same data, print the KPI table and write RUN/report.html."""
    _run_and_report(_load(scenario), out=out, runs_root=runs_root, report=True, agent_workers=agent_workers)


@app.command()
def report(run: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
    """(Re)write the HTML comparison report of a finished run."""
    from twin.reporting.report import write_report

    if not (run / "meta.json").exists():
        _fail(f"RUN={str(run)!r}: not a run folder (no meta.json)")
    console.print(f"report: [bold]{write_report(run)}[/]")


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")],
    out: Annotated[Path | None, typer.Option(help="Run folder to write (default: runs/<name>-<time>).")] = None,
    runs_root: Annotated[Path, typer.Option(help="Where new run folders go.")] = Path("runs"),
    pace: Annotated[float | None, typer.Option(
        help="Replay in paced time: simulated seconds per wall-clock second (e.g. 60 plays a 15-minute "
             "interval every 15 s). Records are flushed every interval so a dashboard can follow.")] = None,
    agent_workers: AgentWorkers = None,
) -> None:
    """Run a scenario: every policy on its own twin copy, same data, lock-step."""
    if pace is not None and pace <= 0:
        _fail(f"--pace={pace!r}: must be a positive number of simulated seconds per second")
    _run_and_report(_load(scenario), out=out, runs_root=runs_root, pace=pace, agent_workers=agent_workers)


@app.command()
def validate(scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")]) -> None:
    """Check a scenario file without running it."""
    s = _load(scenario)
    console.print(f"{scenario}: ok — {s.feeder}, {len(s.times)} intervals of {format_duration(s.step)}, policies: "
                  + ", ".join(c.name for c in s.controllers))


@app.command()
def feeders() -> None:
    """List the feeder catalog with bus, line, trafo, load and sgen counts."""
    import grids

    table = Table(title="Feeder catalog (also: simbench:<code>, or a path to a pandapower JSON file)")
    for col in ("name", "buses", "lines", "trafos", "loads", "sgens", "description"):
        table.add_column(col, justify="right" if col not in ("name", "description") else "left")
    for info in grids.list_feeders():
        counts = grids.feeder_summary(grids.load_feeder(info.name))
        table.add_row(info.name, *(str(counts[k]) for k in ("bus", "line", "trafo", "load", "sgen")), info.description)
    console.print(table)


@telemetry_app.command("export-simbench")
def export_simbench(
    code: Annotated[str, typer.Argument(help="SimBench grid code, e.g. 1-LV-rural1--0-sw")],
    out: Annotated[Path, typer.Option("--out", help="Output file (.parquet or .csv).")],
) -> None:
    """Write a SimBench feeder's year of 15-minute load and PV profiles as canonical long telemetry."""
    from twin.telemetry import export_simbench as _export

    if out.suffix not in (".parquet", ".csv"):
        _fail(f"--out={str(out)!r}: the file must end in .parquet or .csv")
    try:
        rows = _export(code, out)
    except ValueError as exc:
        _fail(str(exc))
        raise
    console.print(f"wrote {rows:,} rows to {out}" if isinstance(rows, int) else f"wrote {out}")


# Commands whose modules live elsewhere in the twin: live telemetry and studies.
app.command("broker")(broker_command)
app.command("devices")(devices_command)
app.command("live")(live_command)
app.command("study")(study_command)


def _mount_plugins() -> None:
    """Commands other packages contribute through the ``gridtwin.commands`` entry-point group (the
    dashboard registers ``gridtwin dashboard`` this way, so the twin never imports the dashboard)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="gridtwin.commands"):
        app.command(name=ep.name)(ep.load())


_mount_plugins()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
