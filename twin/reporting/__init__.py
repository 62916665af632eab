"""Reports and the figure functions the report and the dashboard share."""
