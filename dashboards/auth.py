"""Operator authentication: operator actions (fault injection) need the operator password; viewing is open on
loopback, and needs the same login wherever ``views_need_login`` (the CLI's default off loopback).

Built from well-kept libraries rather than by hand: Flask-Login tracks who is logged in, Flask-Session keeps
sessions on the server (the cookie holds only a random id; logging out deletes the session there, so a copied
cookie dies with it; the id is rotated at login), and Flask-Limiter throttles failed passwords per client
address (form logins and HTTP Basic attempts share one budget: 5 a minute, 20 an hour).

An operator logs in with a form (``POST /auth/login``: name + password); scripts may instead send HTTP Basic
credentials (any user name, the operator password). ``next`` after login may only be a path on this site.
A guard in front of Dash's callback endpoint answers every request whose outputs are operator components
(ids starting with ``op-``) with 401 unless it is authenticated, and every malformed callback body with 400
(or 401 when it is also unauthenticated), so neither unauthenticated nor malformed requests ever reach a
callback, get data, or cause a 500. With ``views_need_login``, a gate in front of every route lets through
only the plain login form (``GET /auth/login``, no script, no run data), the login and logout posts: a page
request without a login is sent to the form (303), anything else gets 401; wrong HTTP Basic passwords spend
the same throttled budget there.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import re
import secrets
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from html import escape as html_escape
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import flask
import flask_login
from cachelib import SimpleCache
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_session import Session

__all__ = ["FAILED_LOGIN_LIMITS", "OPERATOR_ID_PREFIX", "OperatorAuth", "callback_body_problem", "operator_outputs",
           "safe_next"]

#: Components whose updates are operator actions carry ids with this prefix.
OPERATOR_ID_PREFIX = "op-"
#: Failed operator passwords allowed per client address (login form and HTTP Basic together).
FAILED_LOGIN_LIMITS = "5 per minute; 20 per hour"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")
_MAX_BODY_BYTES = 1_000_000
_DEFAULT_NEXT = "/faults"


_LOGIN_FORM = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>gridtwin — log in</title>
<style>body{{font:16px system-ui,sans-serif;margin:12vh auto;max-width:22em}}label,input,button{{display:block;
width:100%;margin:.4em 0}}.said{{color:#b00020}}</style></head>
<body><h1>gridtwin</h1><p>This dashboard needs an operator login.</p><p class="said">{said}</p>
<form method="post" action="{action}"><input type="hidden" name="next" value="{next}">
<label>Name <input name="operator" autocomplete="username" required></label>
<label>Password <input name="password" type="password" autocomplete="current-password" required></label>
<button type="submit">Log in</button></form></body></html>
"""


def safe_next(value: object, default: str = _DEFAULT_NEXT) -> str:
    """``value`` if it is a path on this site, else ``default`` (OWASP: unvalidated redirects).

    Accepted: a relative path starting with one ``/``, at most 512 characters, without control characters
    (browsers drop tabs and newlines, so ``/<TAB>/evil`` would become ``//evil``), backslashes (``/\\evil``),
    or a second ``/`` — also once percent-decoded — and with no scheme or host.
    """
    if not isinstance(value, str) or not value or len(value) > 512:
        return default
    for candidate in (value, unquote(value)):
        if not candidate.startswith("/") or candidate.startswith("//") or "\\" in candidate:
            return default
        if any(unicodedata.category(c).startswith("C") or c.isspace() for c in candidate):
            return default
        parts = urlsplit(candidate)
        if parts.scheme or parts.netloc:
            return default
    return value


def _json_error(status: int, message: str, headers: Mapping[str, str] | None = None) -> flask.Response:
    response = flask.Response(json.dumps({"error": message}), status=status, mimetype="application/json")
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _parse_body(raw: bytes) -> Any:
    """The JSON body, or None for anything unreadable (bad JSON or UTF-8, nesting deep enough to recurse)."""
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return None


def _component_ids(output: str) -> list[str]:
    """Component ids named in Dash's ``output`` string: ``id.prop`` or ``..id1.prop1...id2.prop2..``."""
    parts = output.strip(".").split("...") if output.startswith("..") else [output]
    ids = []
    for part in parts:
        comp, _, _prop = part.rpartition(".")
        ids.append(comp)
    return ids


def operator_outputs(body: Mapping[str, Any]) -> bool:
    """Whether a (structurally valid) callback body updates any operator component."""
    ids = _component_ids(str(body.get("output", "")))
    outputs = body.get("outputs")
    items = outputs if isinstance(outputs, list) else [outputs]
    for item in items:
        if isinstance(item, Mapping):
            ident = item.get("id")
            ids.append(json.dumps(ident, sort_keys=True) if isinstance(ident, Mapping) else str(ident))
    return any(i.startswith(OPERATOR_ID_PREFIX) or f'"{OPERATOR_ID_PREFIX}' in i for i in ids)


def _pairs(items: Any) -> list[tuple[str, str]] | None:
    """(id, property) of each dependency in a request or a callback spec; None when malformed."""
    if not isinstance(items, list):
        return None
    out = []
    for item in items:
        if not isinstance(item, Mapping) or not isinstance(item.get("property"), str):
            return None
        ident = item.get("id")
        if isinstance(ident, Mapping):
            ident = json.dumps(ident, sort_keys=True)
        if not isinstance(ident, str):
            return None
        out.append((ident, item["property"]))
    return out


def callback_body_problem(body: Any, callback_spec: Callable[[str], Mapping[str, Any] | None]) -> str:
    """Why a Dash callback request body is malformed ("" when it is well formed): it must name a callback of
    this app, and its outputs, inputs and state must be exactly that callback's, in order."""
    if not isinstance(body, Mapping):
        return "body must be a JSON object"
    output = body.get("output")
    if not isinstance(output, str) or not output:
        return "output must be a non-empty string"
    spec = callback_spec(output)
    if spec is None:
        return f"output={output[:80]!r} is not a callback of this app"
    outputs = body.get("outputs")
    items = outputs if isinstance(outputs, list) else [outputs]
    if _pairs(items) is None or len(items) != len(_component_ids(output)):
        return "outputs must match the callback's outputs"
    for key in ("inputs", "state"):
        sent = _pairs(body.get(key, []))
        if sent is None or sent != _pairs(list(spec.get(key, []))):
            return f"{key} must be exactly the callback's {key} (id and property, in order)"
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or not all(isinstance(c, str) for c in changed):
        return "changedPropIds must be a list of strings"
    return ""


class Operator(flask_login.UserMixin):
    """A logged-in operator (Flask-Login's user): the name they gave, checked against ``_NAME_RE``."""

    def __init__(self, name: str) -> None:
        self.id = name
        self.name = name


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (user, password) if sep else None


@dataclass
class OperatorAuth:
    """The operator role of one app. ``password=None`` disables operator actions entirely (read-only).

    ``failed_login_limits``: failed passwords allowed per client address (Flask-Limiter notation), counted
    over the login form and HTTP Basic together; past it every attempt, right or wrong, gets 429 until the
    window has passed. ``session_lifetime``: how long a server-side session lives without a new login.
    """

    password: str | None
    login_path: str = "/auth/login"
    logout_path: str = "/auth/logout"
    login_page: str = "/login"
    failed_login_limits: str = FAILED_LOGIN_LIMITS
    session_lifetime: timedelta = timedelta(hours=8)
    views_need_login: bool = False

    def __post_init__(self) -> None:
        if self.views_need_login and not self.password:
            raise ValueError("views_need_login=True needs an operator password (GRIDTWIN_OPERATOR_PASSWORD): "
                             "nobody could log in to view")
        if self.views_need_login:  # the Dash login page is behind the gate: failed logins return to the form
            self.login_page = self.login_path

    @property
    def enabled(self) -> bool:
        return bool(self.password)

    def _password_ok(self, candidate: str) -> bool:
        if not self.password:
            return False
        return hmac.compare_digest(candidate.encode("utf-8"), self.password.encode("utf-8"))

    def current_operator(self) -> str | None:
        """The logged-in operator's name for this request (server-side session or HTTP Basic), else None."""
        if not self.enabled or not flask.has_request_context():
            return None
        user = flask_login.current_user
        if user is not None and user.is_authenticated and isinstance(getattr(user, "name", None), str):
            return str(user.name)
        return None

    # -- wiring into the Flask server ------------------------------------------------------------------
    def install(self, server: flask.Flask, *, callback_path: str,
                callback_spec: Callable[[str], Mapping[str, Any] | None]) -> None:
        """Add server-side sessions, the login manager, the throttle, the login / logout routes and the guard
        of ``callback_path``; ``callback_spec(output)`` is the app's callback definition for an output string
        (``app.callback_map.get``). Everything is per server: two apps in one process share nothing."""
        lifetime = self.session_lifetime
        server.config.update(
            SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict", MAX_CONTENT_LENGTH=_MAX_BODY_BYTES,
            # Flask-Session: sessions live in this process's memory, the cookie holds only a random 256-bit id.
            SESSION_TYPE="cachelib", SESSION_PERMANENT=False, PERMANENT_SESSION_LIFETIME=lifetime,
            SESSION_CACHELIB=SimpleCache(threshold=10_000, default_timeout=int(lifetime.total_seconds())),
            SESSION_KEY_PREFIX="gridtwin-session:",
        )
        if not server.secret_key:
            server.secret_key = secrets.token_bytes(32)
        Session(server)
        manager = flask_login.LoginManager()
        manager.session_protection = "strong"  # a session moving to another address or browser is dropped
        manager.user_loader(self._load_user)
        manager.request_loader(self._load_basic_user)
        manager.init_app(server)
        limiter = Limiter(get_remote_address, app=server, storage_uri="memory://", strategy="moving-window",
                          headers_enabled=True)
        throttled = "too many failed operator logins from this address; wait and try again"

        def password_budget(*, exempt_when: Callable[[], bool] | None = None) -> Any:
            # One budget (scope) for the form and HTTP Basic; only failed passwords spend it.
            return limiter.shared_limit(
                self.failed_login_limits, scope="operator-password", exempt_when=exempt_when,
                deduct_when=lambda response: response.status_code == 401 or "error=password" in response.headers.get(
                    "Location", ""),
                error_message=throttled)

        def refusal() -> flask.Response | None:
            """Why this callback request may not reach its callback (None when it may)."""
            operator = self.current_operator()
            body = _parse_body(flask.request.get_data(cache=True))
            problem = callback_body_problem(body, callback_spec)
            # A body we cannot read might be aimed at an operator action: treat it as one.
            targets_operator = bool(problem) or operator_outputs(body)
            if targets_operator and operator is None and not self.enabled:
                return _json_error(403, "operator actions are disabled on this dashboard")
            if targets_operator and operator is None:
                headers = {"WWW-Authenticate": 'Session realm="gridtwin operator", login="/login"'}
                return _json_error(401, "operator login required", headers)
            if problem:
                return _json_error(400, f"malformed callback request: {problem}")
            if targets_operator and not flask.request.is_json:
                return _json_error(415, "operator actions must be sent as application/json")
            return None

        endpoint = next(r.endpoint for r in server.url_map.iter_rules() if r.rule == callback_path)
        dash_view = server.view_functions[endpoint]

        @functools.wraps(dash_view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            refused = refusal()
            return refused if refused is not None else dash_view(*args, **kwargs)

        # The throttle wraps the guard: a throttled request is answered 429 before a password is even looked
        # at. HTTP Basic guesses spend the login budget; requests without credentials never do, so viewers
        # are not throttled by someone else's guessing.
        server.view_functions[endpoint] = password_budget(
            exempt_when=lambda: "Authorization" not in flask.request.headers)(guarded)
        login = limiter.limit("30 per minute", error_message="too many login requests from this address")(self._login)
        server.add_url_rule(self.login_path, "gridtwin_login", password_budget()(login), methods=["POST"])
        server.add_url_rule(self.logout_path, "gridtwin_logout", self._logout, methods=["POST"])
        server.register_error_handler(429, self._throttled)
        if self.views_need_login:
            server.add_url_rule(self.login_path, "gridtwin_login_form", self._login_form, methods=["GET"])
            basic_refused = password_budget()(lambda: _json_error(401, "wrong operator password"))

            @server.before_request
            def gate() -> flask.Response | None:
                """Nothing but the login form and posts without a login (see the module docstring)."""
                if flask.request.endpoint in ("gridtwin_login", "gridtwin_login_form", "gridtwin_logout"):
                    return None
                if self.current_operator() is not None:
                    return None
                if "Authorization" in flask.request.headers:
                    return basic_refused()  # a guess: it spends the login budget (429 once it is spent)
                if flask.request.method == "GET" and "text/html" in flask.request.headers.get("Accept", "text/html"):
                    target = safe_next(flask.request.full_path.rstrip("?"), default="/")
                    return flask.redirect(f"{self.login_path}?next={quote(target)}", code=303)
                return _json_error(401, "login required", {"WWW-Authenticate": 'Session realm="gridtwin"'})

    @staticmethod
    def _throttled(error: Exception) -> flask.Response:
        description = getattr(error, "description", "too many requests")
        response = _json_error(429, str(description))
        retry = getattr(error, "retry_after", None)
        if isinstance(retry, int | float) and retry > 0:
            response.headers["Retry-After"] = str(int(retry))
        return response

    def _load_user(self, user_id: str) -> Operator | None:
        return Operator(user_id) if self.enabled and isinstance(user_id, str) and _NAME_RE.match(user_id) else None

    def _load_basic_user(self, request: flask.Request) -> Operator | None:
        credentials = _basic_credentials(request.headers.get("Authorization", ""))
        if credentials is None or not self.enabled:
            return None
        user, password = credentials
        return Operator(user) if _NAME_RE.match(user) and self._password_ok(password) else None

    def _login(self) -> flask.Response:
        form = flask.request.form
        target = safe_next(form.get("next"))
        if not self.enabled:
            return flask.redirect(f"{self.login_page}?error=disabled", code=303)
        name = (form.get("operator") or "").strip()
        if not _NAME_RE.match(name):
            return flask.redirect(f"{self.login_page}?error=name&next={quote(target)}", code=303)
        if not self._password_ok(form.get("password") or ""):
            return flask.redirect(f"{self.login_page}?error=password&next={quote(target)}", code=303)
        flask.session.clear()
        flask_login.login_user(Operator(name), remember=False, fresh=True)
        # A new session id at login: an id planted before it (session fixation) is worth nothing.
        flask.current_app.session_interface.regenerate(flask.session)  # type: ignore[attr-defined]
        return flask.redirect(target, code=303)

    def _login_form(self) -> flask.Response:
        """The plain login form of a dashboard whose views need a login: no script and no run data."""
        args = flask.request.args
        target = safe_next(args.get("next"), default="/")
        said = {"password": "Wrong password.", "name": "Give a name: letters, digits, space, . _ @ -.",
                "disabled": "Logins are disabled."}.get(str(args.get("error")), "")
        body = _LOGIN_FORM.format(action=self.login_path, next=html_escape(target), said=html_escape(said))
        response = flask.Response(body, mimetype="text/html")
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"
        return response

    def _logout(self) -> flask.Response:
        flask_login.logout_user()
        flask.session.clear()  # Flask-Session deletes it on the server and expires the cookie
        return flask.redirect("/", code=303)
