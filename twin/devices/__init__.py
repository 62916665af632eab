"""Device physics: what setpoints do to each DER over one interval (SOC, EV energy, deferred load, PV)."""
