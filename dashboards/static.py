"""Static files served light: responses compressed (Flask-Compress: brotli or gzip, as the browser asks),
scripts and stylesheets compressed once and kept (a cold page is plotly.js and Dash's bundles, ~6 MB
uncompressed), and a cache lifetime on every static file: fingerprinted URLs (they change when the file
does) for a year, the few unversioned script chunks for a day.
"""

from __future__ import annotations

import threading
from typing import Any

import flask
from flask_compress import Compress

__all__ = ["STATIC_PREFIXES", "install_static"]

STATIC_PREFIXES = ("/_dash-component-suites/", "/assets/")
YEAR_S = 365 * 24 * 3600
DAY_S = 24 * 3600
_DYNAMIC = "dynamic:"


class _StaticOnlyCache:
    """Flask-Compress's cache, holding compressed static files only (callback answers change every time)."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        if _DYNAMIC in key:
            return None
        with self._lock:
            return self._data.get(key)

    def set(self, key: str, value: bytes) -> None:
        if _DYNAMIC in key or len(self._data) > 512:
            return
        with self._lock:
            self._data[key] = value


def _cache_key(request: flask.Request) -> str:
    if request.method == "GET" and request.path.startswith(STATIC_PREFIXES):
        return request.full_path
    return _DYNAMIC


def _cache_control(response: flask.Response) -> flask.Response:
    request = flask.request
    if response.status_code not in (200, 304) or not request.path.startswith(STATIC_PREFIXES):
        return response
    if request.path.startswith("/assets/"):
        # Dash links assets with ?m=<modification time>: a changed file gets a new URL.
        lifetime = YEAR_S if request.args.get("m") else 0
    else:
        # Dash fingerprints its bundles (a year); chunks loaded by URL without a fingerprint get a day.
        lifetime = YEAR_S if response.cache_control.max_age else DAY_S
    if lifetime:
        response.cache_control.public = True
        response.cache_control.max_age = lifetime
        response.cache_control.no_cache = None
        if lifetime == YEAR_S:
            response.cache_control.immutable = True
    return response


def install_static(server: flask.Flask) -> Any:
    """Compression and cache lifetimes for ``server`` (a Dash app's Flask server); returns the Compress."""
    server.config.update(
        COMPRESS_ALGORITHM=["br", "gzip"],
        COMPRESS_BR_LEVEL=5,
        COMPRESS_MIN_SIZE=1024,
        COMPRESS_CACHE_BACKEND=_StaticOnlyCache,
        COMPRESS_CACHE_KEY=_cache_key,
        COMPRESS_STREAMS=False,
    )
    server.after_request(_cache_control)
    return Compress(server)
