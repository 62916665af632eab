"""Live telemetry over MQTT: the broker we ship (``broker``), the wire contract (``messages``, ``signing``),
a device client (``device``) and the ingest (``ingest``, ``archive``); and over the standard DER protocols:
OCPP 2.0.1 (``ocpp_csms``, ``ocpp_charger``, ``ocpp_mapping``) and OpenADR 2.0b (``openadr_vtn``,
``openadr_ven``), decoded into the same canonical messages (``canonical``), per the scenario's ``[live]``
table (``transports``).

Import from the submodules: this package stays empty so a device process importing ``twin.live.device``
does not pull in pandas/pandapower through the ingest.
"""

import warnings

# signxml (OpenADR's XML signatures) names DSA key types in its annotations and openleadr tests keys against
# them; cryptography >= 51 warns whenever either touches its DSA module. gridtwin neither signs nor accepts DSA.
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"(signxml|openleadr)(\.|$)")
