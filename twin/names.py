"""Names that become folder names: policy (controller) names and run (scenario) names.

A policy's name *is* its folder in the run folder (``RUN/<policy>/``), taken verbatim — never rewritten, so
two names can never share a folder behind the user's back. A name is 1–64 ASCII letters, digits, ``.``,
``_`` and ``-``, starting with a letter or digit: no path separator, no ``..``, no control character, nothing
a file system could normalize. Names that differ only in case are refused as a clash (they are one folder
on case-insensitive file systems), and so are names of the run folder's own entries (``commands``,
``live``...). Errors name the field and the value, and both names of a clash.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

__all__ = ["RESERVED_POLICY_NAMES", "check_policy_name", "check_policy_names", "check_run_name", "folder_key",
           "is_policy_name"]

_POLICY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
#: Entries of a run folder that are not policies (twin.records.runstore, twin.commands, twin.live).
RESERVED_POLICY_NAMES = frozenset({"commands", "live", "meta.json", "kpis.parquet", "status.json", "feeder.json",
                                   "report.html", "witnesses", "plotly.min.js", "report-data"})


def folder_key(name: str) -> str:
    """What a file system may treat as the same name: Unicode-normalized and case-folded."""
    return unicodedata.normalize("NFKC", name).casefold()


def _why_bad(name: object, pattern: re.Pattern[str], what: str) -> str | None:
    if not isinstance(name, str):
        return f"must be a string, not {type(name).__name__}"
    if not name:
        return "must not be empty"
    if any(c in name for c in "/\\"):
        return "must not contain a path separator ('/' or '\\'): it becomes one folder"
    if ".." in name:
        return "must not contain '..'"
    if any(unicodedata.category(c).startswith("C") for c in name):
        return "must not contain control or format characters"
    if not name.isascii():
        return "must be ASCII (letters, digits, '.', '_', '-'): other characters may be normalized by the file system"
    if len(name) > 64:
        return f"is {len(name)} characters long; at most 64"
    if not pattern.fullmatch(name):
        return f"must start with a letter or digit and hold only letters, digits, {what}"
    return None


def is_policy_name(name: object) -> bool:
    return _why_bad(name, _POLICY, "") is None and folder_key(str(name)) not in RESERVED_POLICY_NAMES


def check_policy_name(name: object, *, field: str = "controllers.name") -> str:
    """``name`` when it can be a policy folder; else ValueError naming ``field`` and the value."""
    why = _why_bad(name, _POLICY, "'.', '_' and '-'")
    if why is not None:
        raise ValueError(f"{field}={name!r} {why}")
    assert isinstance(name, str)
    if folder_key(name) in RESERVED_POLICY_NAMES:
        raise ValueError(f"{field}={name!r} is reserved: RUN/{name}/ is part of every run folder "
                         f"({', '.join(sorted(RESERVED_POLICY_NAMES))})")
    return name


def check_policy_names(names: Iterable[object], *, field: str = "controllers.name") -> None:
    """Every name is a valid policy folder name and no two share a folder; a clash names both."""
    seen: dict[str, str] = {}
    for name in names:
        check_policy_name(name, field=field)
        assert isinstance(name, str)
        key = folder_key(name)
        if key in seen:
            other = seen[key]
            if other == name:
                raise ValueError(f"{field}={name!r} is used twice; names must be unique")
            raise ValueError(f"{field}={other!r} and {field}={name!r} clash: they differ only in case, and would "
                             f"share one folder on a case-insensitive file system; rename one")
        seen[key] = name


def check_run_name(name: object, *, field: str = "name") -> str:
    """A scenario name, which starts its run folder's name (``runs/<name>-<time>``)."""
    why = _why_bad(name, _RUN, "spaces, '.', '_' and '-'")
    if why is not None:
        raise ValueError(f"{field}={name!r} {why}")
    assert isinstance(name, str)
    return name
