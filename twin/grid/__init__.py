"""The grid model: AC power flow (pandapower, the model of record, and the fast exact path), bus injections,
network sensitivities, verification of telemetry against physics, and the feeder drawing."""
