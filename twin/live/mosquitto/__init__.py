"""Mosquitto configuration templates shipped with gridtwin (data only; rendered by ``twin.live.broker``)."""
