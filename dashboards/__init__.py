"""gridtwin: dashboards package."""
