"""Live telemetry over MQTT: the broker we ship (``broker``), the wire contract (``messages``, ``signing``),
a device client (``device``) and the ingest (``ingest``, ``archive``).

Import from the submodules: this package stays empty so a device process importing ``twin.live.device``
does not pull in pandas/pandapower through the ingest.
"""
