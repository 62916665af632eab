"""Offline what-if studies: a base scenario swept over axes, each variant run serially or on Dask.

Public surface: ``load_study`` / ``parse_study`` (study files → validated ``Study`` of ``Variant``),
``run_variant`` (one variant → tidy KPI rows), ``run_study`` (the whole study, resumable, → ``StudyResult``),
the executors, and the report figures. ``twin.studies.cli.study`` is the ``gridtwin study`` command.
"""

from twin.studies.executors import DaskExecutor, Outcome, SerialExecutor
from twin.studies.model import Study, StudyError, Variant, load_study, parse_study
from twin.studies.report import kpi_distribution_figure, policy_delta_figure
from twin.studies.runner import StudyResult, VariantFailure, run_study
from twin.studies.variant import NONDETERMINISTIC_COLUMNS, run_variant

__all__ = [
    "DaskExecutor",
    "NONDETERMINISTIC_COLUMNS",
    "Outcome",
    "SerialExecutor",
    "Study",
    "StudyError",
    "StudyResult",
    "Variant",
    "VariantFailure",
    "kpi_distribution_figure",
    "load_study",
    "parse_study",
    "policy_delta_figure",
    "run_study",
    "run_variant",
]
