"""gridtwin's operator dashboard (Dash): reads run stores, sends operator commands through the twin's
command channel, never runs a power flow. Build an app with :func:`create_app`; run it with :func:`serve`."""

from dashboards.app import create_app, serve

__all__ = ["create_app", "serve"]
