"""Throttling of failed OCPP charge-point authentications (HTTP Basic, security profiles 1 and 2).

A password can be guessed only as fast as the CSMS lets a handshake fail. This module counts failed
authentications in a moving window per charging station id and per remote address (the ``limits`` library:
Flask-Limiter's backend, as for the dashboard's login throttle) and says when a new handshake is to be
refused unchecked. A throttled handshake is refused even with the right password, otherwise the lock would not
slow a guesser down; the cost is that someone who fails on purpose can keep a station out for one window, which
is why the window is short and the lock expires on its own.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

__all__ = ["AuthThrottle", "Throttled"]


@dataclass(frozen=True, kw_only=True)
class Throttled:
    """Why a handshake is refused unchecked, and in how many seconds the next may succeed."""

    key: str  # "charging station 'ev-1'" or "address 127.0.0.1"
    failures: int
    window_s: int
    retry_after_s: int

    @property
    def detail(self) -> str:
        return (f"{self.key}: {self.failures} failed authentications within {self.window_s} s; refused unchecked "
                f"for {self.retry_after_s} s more")


class AuthThrottle:
    """``check`` before authenticating (None: go ahead), ``failed`` after a failure. One per CSMS."""

    def __init__(self, *, per_station: int = 5, per_address: int = 20, window_s: int = 60) -> None:
        for name, value in (("per_station", per_station), ("per_address", per_address), ("window_s", window_s)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive whole number")
        self.window_s = window_s
        self._items = {"station": RateLimitItemPerSecond(per_station, window_s),
                       "address": RateLimitItemPerSecond(per_address, window_s)}
        self._limiter: MovingWindowRateLimiter | None = None

    def _keys(self, station: str | None, address: str) -> list[tuple[str, str, str]]:
        keys = [("address", address, f"address {address}")]
        if station:
            keys.insert(0, ("station", station, f"charging station {station!r}"))
        return keys

    def check(self, *, station: str | None, address: str) -> Throttled | None:
        """None unless the station or the address used up its failures in the current window."""
        if self._limiter is None:
            return None
        for kind, value, label in self._keys(station, address):
            item = self._items[kind]
            if not self._limiter.test(item, kind, value):
                reset_at, _remaining = self._limiter.get_window_stats(item, kind, value)
                return Throttled(key=label, failures=item.amount, window_s=self.window_s,
                                 retry_after_s=max(1, math.ceil(reset_at - time.time())))
        return None

    def failed(self, *, station: str | None, address: str) -> None:
        """Count one failed authentication against the station (when it is a provisioned one) and the address."""
        if self._limiter is None:  # built on first use: its store runs an expiry timer thread
            self._limiter = MovingWindowRateLimiter(MemoryStorage())
        for kind, value, _label in self._keys(station, address):
            self._limiter.hit(self._items[kind], kind, value)
