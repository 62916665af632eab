"""Many paho MQTT sessions driven by one thread through epoll: what lets one process be thousands of devices.

paho's own ``loop_start`` costs a thread per session and its ``select()`` loop breaks above 1,024 descriptors;
``SessionPool`` instead registers every session's socket with one ``selectors`` loop (paho's external-loop
API: ``loop_read`` / ``loop_write`` / ``loop_misc`` and the socket callbacks), keeps each alive (keepalive
pings), and reconnects a session whose link dropped, with exponential backoff, as paho's own loop would. Every
socket operation runs in the pool's thread; other threads publish (paho queues the packet and asks the pool to
write it) or hand it work with ``call``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import paho.mqtt.client as mqtt

__all__ = ["SessionPool", "raise_fd_limit"]

T = TypeVar("T")
_MISC_EVERY_S = 0.5
_BACKOFF_MIN_S, _BACKOFF_MAX_S = 0.5, 30.0
_DRAIN_S = 2.0


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit (a session holds one socket); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return wanted
        except (OSError, ValueError):
            pass
    return soft


class _Session:
    __slots__ = ("client", "retry_at", "backoff", "keep", "writing")

    def __init__(self, client: mqtt.Client) -> None:
        self.client = client
        self.retry_at = 0.0
        self.backoff = _BACKOFF_MIN_S
        self.keep = True  # reconnect when the link drops
        self.writing = False  # the socket is registered for write readiness


class SessionPool:
    """``start()`` runs the loop thread; ``connect(client, ...)`` opens a session in it (non-blocking: wait
    for CONNACK with the client's own ``on_connect``); ``forget(client)`` stops reconnecting it; ``abort`` cuts
    its socket without DISCONNECT; ``stop()`` ends the thread (sessions still open are cut)."""

    def __init__(self, *, name: str = "mqtt-sessions") -> None:
        self.name = name
        self._selector = selectors.DefaultSelector()
        self._sessions: dict[mqtt.Client, _Session] = {}
        self._calls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = collections.deque()
        self._writes: collections.deque[mqtt.Client] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.reconnects = 0

    # --- any thread ------------------------------------------------------------------------------------------

    def start(self) -> SessionPool:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: already started")
        raise_fd_limit()
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def call(self, fn: Callable[[], T], *, timeout_s: float | None = 30.0) -> T:
        """Run ``fn`` in the pool's thread and return its result (or raise its exception)."""
        if threading.current_thread() is self._thread:
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.append((fn, future))
        self._wake()
        return future.result(timeout_s)

    def connect(self, client: mqtt.Client, *, host: str, port: int, keepalive_s: int, clean_start: bool,
                properties: Any = None) -> None:
        """Open ``client``'s session from the pool's thread (TCP connect and CONNECT); CONNACK comes later."""
        self._attach(client)

        def open_session() -> None:
            self._sessions[client] = _Session(client)
            client.connect(host, port, keepalive=keepalive_s, clean_start=clean_start, properties=properties)

        self.call(open_session)

    def forget(self, client: mqtt.Client) -> None:
        """Stop reconnecting ``client`` (before a graceful disconnect); its socket is dropped when closed."""
        def drop() -> None:
            session = self._sessions.get(client)
            if session is not None:
                session.keep = False
        self.call(drop)

    def disconnect(self, client: mqtt.Client) -> None:
        """DISCONNECT after what is queued for the session, and forget it (paho closes the socket once the
        DISCONNECT is written; a session whose link is stuck is cut by ``stop``)."""
        def end() -> None:
            session = self._sessions.get(client)
            if session is None:
                return
            session.keep = False  # dropped from the pool when its socket closes (_on_socket_close)
            client.disconnect()
            if client.socket() is None:
                self._sessions.pop(client, None)
        self.call(end)

    def abort(self, client: mqtt.Client) -> None:
        """Cut the session's TCP connection without DISCONNECT, as a power cut would (the broker then publishes
        its Last Will); it is not reconnected."""
        def cut() -> None:
            self._sessions.pop(client, None)
            self._close(client)
        self.call(cut)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        thread = self._thread
        if thread is None:
            return
        self._stopping.set()
        self._wake()
        thread.join(timeout_s)
        self._thread = None
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    @property
    def size(self) -> int:
        return len(self._sessions)

    # --- paho socket callbacks -------------------------------------------------------------------------------

    def _attach(self, client: mqtt.Client) -> None:
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    def _on_socket_open(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        # Always in the pool's thread: connect and reconnect run there.
        self._selector.register(sock, selectors.EVENT_READ, client)

    def _on_socket_close(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        try:
            self._selector.unregister(sock)
        except (KeyError, ValueError):
            pass
        session = self._sessions.get(client)
        if session is not None:
            session.writing = False
            session.retry_at = time.monotonic() + session.backoff
            if not session.keep:
                del self._sessions[client]

    def _on_register_write(self, client: mqtt.Client, _userdata: Any, _sock: Any) -> None:
        # Any thread (a publish): the pool's thread writes.
        self._writes.append(client)
        if threading.current_thread() is not self._thread:
            self._wake()

    def _on_unregister_write(self, client: mqtt.Client, _userdata: Any, sock: Any) -> None:
        session = self._sessions.get(client)
        if session is not None and session.writing:
            session.writing = False
            try:
                self._selector.modify(sock, selectors.EVENT_READ, client)
            except (KeyError, ValueError, OSError):
                pass

    # --- the pool's thread -------------------------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is already pending (or the pool is stopping)

    def _close(self, client: mqtt.Client) -> None:
        if client.socket() is None:
            return
        # paho's own close: runs the socket-close callback (which unregisters the socket) and forgets the socket,
        # without sending DISCONNECT.
        client._sock_close()

    def _closing(self) -> bool:
        return any(not s.keep and s.client.socket() is not None for s in self._sessions.values())

    def _loop(self) -> None:
        next_misc = time.monotonic() + _MISC_EVERY_S
        drain_until: float | None = None
        while True:
            if self._stopping.is_set():
                # Sessions that said DISCONNECT get a moment to have it written (else the broker would
                # publish their wills); the rest are cut.
                drain_until = drain_until if drain_until is not None else time.monotonic() + _DRAIN_S
                if time.monotonic() >= drain_until or not self._closing():
                    break
            timeout = max(0.0, next_misc - time.monotonic()) if drain_until is None else 0.02
            for key, mask in self._selector.select(timeout):
                client = key.data
                if client is None:
                    try:
                        while self._wake_r.recv(4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                    continue
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
            self._run_calls()
            self._flush_writes()
            if time.monotonic() >= next_misc:
                self._misc()
                next_misc = time.monotonic() + _MISC_EVERY_S
        for session in list(self._sessions.values()):
            self._close(session.client)
        self._sessions.clear()
        while self._calls:
            _fn, future = self._calls.popleft()
            future.set_exception(RuntimeError(f"{self.name}: stopped"))
        self._selector.close()

    def _run_calls(self) -> None:
        while self._calls:
            fn, future = self._calls.popleft()
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed back to the caller
                future.set_exception(exc)

    def _flush_writes(self) -> None:
        while self._writes:
            client = self._writes.popleft()
            session = self._sessions.get(client)
            sock = client.socket()
            if sock is None:
                continue
            client.loop_write()
            if client.want_write() and session is not None and not session.writing and client.socket() is not None:
                session.writing = True  # the socket buffer is full: write again when it drains
                try:
                    self._selector.modify(client.socket(), selectors.EVENT_READ | selectors.EVENT_WRITE, client)
                except (KeyError, ValueError, OSError):
                    session.writing = False

    def _misc(self) -> None:
        now = time.monotonic()
        for session in list(self._sessions.values()):
            client = session.client
            if client.socket() is not None:
                client.loop_misc()  # keepalive PINGREQ, and a dead link detected by its missing PINGRESP
                if client.want_write() and client.socket() is not None:
                    client.loop_write()  # a packet queued while the last write was finishing
                if client.is_connected():
                    session.backoff = _BACKOFF_MIN_S
                continue
            if not session.keep or now < session.retry_at:
                continue
            try:
                client.reconnect()
                self.reconnects += 1
            except OSError:
                pass
            session.backoff = min(session.backoff * 2, _BACKOFF_MAX_S)
            session.retry_at = now + session.backoff
