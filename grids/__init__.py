"""Static data for the twin: feeders (pandapower nets), DER fleets (asset tables) and exogenous profiles.

No clock, no control, no money; must not import twin, controllers or dashboards (DESIGN.md §2).
"""

from grids.catalog import (
    DEFAULT_SIMBENCH_CODE,
    FeederError,
    FeederInfo,
    UnknownFeederError,
    feeder_summary,
    is_simbench_net,
    list_feeders,
    load_feeder,
)
from grids.fleet import (
    ASSET_COLUMNS,
    EV_SESSION_COLUMNS,
    AssetKind,
    FleetError,
    FleetRatings,
    build_fleet,
    generate_ev_sessions,
    read_fleet_csv,
    validate_ev_sessions,
    validate_fleet,
    write_fleet_csv,
)
from grids.profiles import ExogenousProfiles, ProfileError, feeder_profiles

__all__ = [
    "ASSET_COLUMNS",
    "AssetKind",
    "DEFAULT_SIMBENCH_CODE",
    "EV_SESSION_COLUMNS",
    "ExogenousProfiles",
    "FeederError",
    "FeederInfo",
    "FleetError",
    "FleetRatings",
    "ProfileError",
    "UnknownFeederError",
    "build_fleet",
    "feeder_profiles",
    "feeder_summary",
    "generate_ev_sessions",
    "is_simbench_net",
    "list_feeders",
    "load_feeder",
    "read_fleet_csv",
    "validate_ev_sessions",
    "validate_fleet",
    "write_fleet_csv",
]
