"""The ``gridtwin`` command line. The only place that configures logging and talks to the terminal.

Every bad argument or input file ends with a one-paragraph error naming the field and value, exit code 2. A
plug-in that fails mid-run ends it with exit code 1 and one line naming the policy, the method, the interval
and the exception (its traceback is in ``RUN/log.txt``). No Python traceback reaches the terminal: anything
unexpected is reported in one line with exit code 1 and its traceback written to a log file.
"""

from __future__ import annotations

import functools
import logging
import tempfile
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import click
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


def _prepare(scenario: Scenario, source: Path) -> Any:
    """Every check ``run`` makes before it steps (twin.preflight); exit 2 naming the key and the value."""
    from twin.preflight import prepare_run

    try:
        return prepare_run(scenario)
    except ScenarioError as exc:
        _fail(f"{source}: {exc}")
        raise  # unreachable: _fail exits


AgentWorkers = Annotated[int | None, typer.Option(
    help="Dask worker processes the edge agents of mode = 'agents' policies are spread over (default 1: all in "
         "this process): per-participant plug-ins as resident actors, the DePIN policy's participants as one "
         "share per worker. "
         "Results do not depend on it.")]


def _run_and_report(scenario: Scenario | None, *, out: Path | None, runs_root: Path, pace: float | None = None,
                    report: bool = False, agent_workers: int | None = None, resume: Path | None = None,
                    commit_every: int = 96) -> None:
    from twin.records.kpis import KPI_LABELS
    from twin.run import RunFailed, resume_run, run_scenario

    if agent_workers is not None and agent_workers < 1:
        _fail(f"--agent-workers={agent_workers}: must be >= 1")
    workers = 1 if agent_workers is None else agent_workers
    if resume is not None:
        from twin.resume import resume_point

        try:  # checked before the progress bar starts, so a refusal is one clean line
            scenario = resume_point(resume, scenario=scenario).scenario
        except ValueError as exc:
            _fail(str(exc))
            raise
    assert scenario is not None
    from twin.run import stop_on_sigterm

    stop_on_sigterm()

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
            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done)

            if resume is not None:
                result = resume_run(resume, scenario=scenario, on_progress=on_progress, agent_workers=workers)
            else:
                result = run_scenario(scenario, out=out, runs_root=runs_root, pace=pace, on_progress=on_progress,
                                      agent_workers=workers, flush_every=commit_every)
        except RunFailed as exc:
            progress.stop()
            where = f"; traceback in {exc.log_path}" if exc.log_path is not None else ""
            _fail(f"run stopped: {exc.message}{where}", code=exc.exit_code)
            raise
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
        _print_earnings(result.path, list(result.kpis))
        console.print(f"run folder: [bold]{result.path}[/]")
        if report:
            from twin.reporting.report import write_report

            console.print(f"report: [bold]{write_report(result.path)}[/]")


def _print_earnings(run_dir: Path, policies: list[str]) -> None:
    """Under the KPI table: what each participant earned under each policy (a settled run's ledgers)."""
    from twin.reporting.report import earnings_by_participant, read_earnings

    earnings = read_earnings(run_dir)
    if earnings is None or earnings.empty:
        return
    wide = earnings_by_participant(earnings, policies)
    table = Table(title="Participant earnings [EUR] (+ = paid to the participant; net of every rule in each "
                        "policy's ledger)")
    table.add_column("participant")
    for name in wide.columns:
        table.add_column(name, justify="right")
    for participant, row in zip(wide.index, wide.to_numpy(float)):
        table.add_row(escape(str(participant)), *(f"{v:,.2f}" for v in row))
    table.add_row("all participants", *(f"{v:,.2f}" for v in wide.sum().to_numpy(float)), style="bold")
    console.print(table)


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
    from twin.records.runstore import RunStore
    from twin.reporting.report import write_report

    if not (run / "meta.json").exists():
        _fail(f"RUN={str(run)!r}: not a run folder (no meta.json)")
    try:
        status = RunStore(run).status()
    except (OSError, ValueError) as exc:
        _fail(f"RUN={str(run)!r}: unreadable status.json ({exc})")
        raise
    state = status.get("state", "unknown")
    if state != "finished" or not (run / "kpis.parquet").exists():
        done = f", {status.get('done')} of {status.get('total')} intervals" if "done" in status else ""
        _fail(f"RUN={str(run)!r}: the run is not finished (status {state!r}{done}); a report needs a finished run")
    try:
        console.print(f"report: [bold]{write_report(run)}[/]")
    except (OSError, ValueError) as exc:
        _fail(f"RUN={str(run)!r}: cannot read the run's tables ({exc})")


@app.command()
def run(
    scenario: Annotated[Path | None, typer.Argument(
        help="Scenario TOML file (with --resume: optional, and then it must be the run's).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder to write (default: runs/<name>-<time>).")] = None,
    runs_root: Annotated[Path, typer.Option(help="Where new run folders go.")] = Path("runs"),
    pace: Annotated[float | None, typer.Option(
        help="Replay in paced time: simulated seconds per wall-clock second (e.g. 60 plays a 15-minute "
             "interval every 15 s). Records are flushed every interval so a dashboard can follow.")] = None,
    agent_workers: AgentWorkers = None,
    resume: Annotated[Path | None, typer.Option(
        "--resume", metavar="RUN",
        help="Continue a killed, failed or interrupted run folder to its end (same scenario, seed and options; "
             "its tables and ledgers come out as an uninterrupted run's).")] = None,
    commit_every: Annotated[int | None, typer.Option(
        help="Intervals per commit of the run folder: tables, ledgers and status advance together (default 96; "
             "a paced run commits every interval). A kill loses at most this many intervals' work.")] = None,
) -> None:
    """Run a scenario: every policy on its own twin copy, same data, lock-step."""
    if commit_every is not None and commit_every < 1:
        _fail(f"--commit-every={commit_every!r}: must be a whole number of intervals >= 1")
    if resume is not None:
        for name, value in (("--out", out), ("--pace", pace), ("--commit-every", commit_every)):
            if value is not None:
                _fail(f"{name}={value!r}: not with --resume (a resumed run keeps its folder and its options)")
        _run_and_report(_load(scenario) if scenario is not None else None, out=None, runs_root=runs_root,
                        agent_workers=agent_workers, resume=resume)
        return
    if scenario is None:
        _fail("SCENARIO: missing; name a scenario file, or continue a run with --resume RUN")
        return
    if pace is not None and pace <= 0:
        _fail(f"--pace={pace!r}: must be a positive number of simulated seconds per second")
    _run_and_report(_load(scenario), out=out, runs_root=runs_root, pace=pace, agent_workers=agent_workers,
                    commit_every=96 if commit_every is None else commit_every)


@app.command()
def validate(scenario: Annotated[Path, typer.Argument(help="Scenario TOML file.")]) -> None:
    """Check a scenario file without running it: every check `run` makes before its first interval."""
    s = _load(scenario)
    inputs = _prepare(s, scenario)
    n = (s.end - s.start) // s.step
    console.print(f"{scenario}: ok — {s.feeder}, {n} intervals of {format_duration(s.step)}, "
                  f"{len(inputs.assets)} assets, policies: " + ", ".join(c.name for c in s.controllers),
                  highlight=False, soft_wrap=True)
    if inputs.telemetry is not None:
        t = inputs.telemetry
        ignored = f", {t.unknown_rows_ignored:,} rows of {len(t.unknown_devices)} unknown devices ignored" \
            if t.unknown_rows_ignored else ""
        console.print(f"telemetry {t.source}: {t.rows_read:,} rows, {t.duplicates_dropped:,} identical duplicates "
                      f"dropped{ignored}", highlight=False, soft_wrap=True)


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


def _broker_reachable(command: Callable[..., None]) -> Callable[..., None]:
    """A live command whose broker does not answer ends with exit 2 naming ``--broker``, not a traceback."""
    from twin.live.mqtt import MqttConnectError

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except MqttConnectError as exc:
            _fail(f"--broker={kwargs.get('broker')!r}: {exc}; is the broker running (gridtwin broker SCENARIO)?")

    return wrapper


# Commands whose modules live elsewhere in the twin: live telemetry and studies.
app.command("broker")(broker_command)
app.command("devices")(_broker_reachable(devices_command))
app.command("live")(_broker_reachable(live_command))
app.command("study")(study_command)


def _mount_plugins() -> None:
    """Commands other packages contribute through the ``gridtwin.commands`` entry-point group (the
    dashboard registers ``gridtwin dashboard`` this way, so the twin never imports the dashboard)."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="gridtwin.commands"):
        app.command(name=ep.name)(ep.load())


_mount_plugins()


def _crash_log(exc: BaseException) -> Path | None:
    """Write an unexpected exception's traceback to a file of its own; its path (None if unwritable)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = Path(tempfile.gettempdir()) / f"gridtwin-error-{stamp}.txt"
    try:
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    except OSError:
        return None
    return path


def _no_traceback(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command so that nothing unexpected reaches the user as a traceback: one line, exit 1, and the
    traceback in a log file. Exits, usage errors and Ctrl-C pass through unchanged."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException, click.exceptions.ClickException, click.exceptions.Abort,
                KeyboardInterrupt, SystemExit):  # typer 0.29 vendors click: its BadParameter is a TyperException
            raise
        except Exception as exc:  # noqa: BLE001 — the last line of defence of the terminal
            log = _crash_log(exc)
            first = (str(exc).strip().splitlines() or [""])[0]
            where = f"; traceback in {log}" if log is not None else ""
            _fail(f"internal error: {type(exc).__name__}: {first}{where}", code=1)

    return wrapper


def _guard_every_command(typer_app: typer.Typer) -> None:
    for info in typer_app.registered_commands:
        if info.callback is not None and not getattr(info.callback, "_gridtwin_guarded", False):
            info.callback = _no_traceback(info.callback)
            info.callback._gridtwin_guarded = True  # type: ignore[attr-defined]
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _guard_every_command(group.typer_instance)


_guard_every_command(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
