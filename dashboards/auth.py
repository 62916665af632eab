"""Operator authentication: viewing is open, operator actions (fault injection) need the operator password.

An operator logs in with a form (``POST /auth/login``: name + password) and gets a signed Flask session
cookie; scripts may instead send HTTP Basic credentials (any user name, the operator password). A guard in
front of Dash's callback endpoint answers every request whose outputs are operator components (ids starting
with ``op-``) with 401 unless it is authenticated, and every malformed callback body with 400 (or 401 when it
is also unauthenticated), so neither unauthenticated nor malformed requests ever reach a callback, get data,
or cause a 500.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import flask

__all__ = ["OPERATOR_ID_PREFIX", "OperatorAuth", "callback_body_problem", "operator_outputs"]

#: Components whose updates are operator actions carry ids with this prefix.
OPERATOR_ID_PREFIX = "op-"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$")
_MAX_BODY_BYTES = 1_000_000


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


@dataclass
class OperatorAuth:
    """The operator role of one app. ``password=None`` disables operator actions entirely (read-only)."""

    password: str | None
    login_path: str = "/auth/login"
    logout_path: str = "/auth/logout"
    login_page: str = "/login"

    @property
    def enabled(self) -> bool:
        return bool(self.password)

    def _password_ok(self, candidate: str) -> bool:
        if not self.password:
            return False
        return hmac.compare_digest(candidate.encode("utf-8"), self.password.encode("utf-8"))

    def current_operator(self) -> str | None:
        """The logged-in operator's name for this request (session or HTTP Basic), else None."""
        if not self.enabled or not flask.has_request_context():
            return None
        name = flask.session.get("operator")
        if isinstance(name, str) and _NAME_RE.match(name):
            return name
        header = flask.request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return None
        try:
            user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
        if sep and _NAME_RE.match(user) and self._password_ok(password):
            return user
        return None

    # -- wiring into the Flask server ------------------------------------------------------------------
    def install(self, server: flask.Flask, *, callback_path: str,
                callback_spec: Callable[[str], Mapping[str, Any] | None]) -> None:
        """Add the login / logout routes and the guard of ``callback_path``; ``callback_spec(output)`` is the
        app's callback definition for an output string (``app.callback_map.get``)."""
        server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict",
                             MAX_CONTENT_LENGTH=_MAX_BODY_BYTES)
        if not server.secret_key:
            server.secret_key = secrets.token_bytes(32)

        def guard() -> flask.Response | None:
            if flask.request.path != callback_path or flask.request.method != "POST":
                return None
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

        server.before_request(guard)
        server.add_url_rule(self.login_path, "gridtwin_login", self._login, methods=["POST"])
        server.add_url_rule(self.logout_path, "gridtwin_logout", self._logout, methods=["POST"])

    def _login(self) -> flask.Response:
        form = flask.request.form
        target = form.get("next", "/faults")
        if not isinstance(target, str) or not target.startswith("/") or target.startswith("//") or "\\" in target:
            target = "/faults"
        if not self.enabled:
            return flask.redirect(f"{self.login_page}?error=disabled", code=303)
        name = (form.get("operator") or "").strip()
        if not _NAME_RE.match(name):
            return flask.redirect(f"{self.login_page}?error=name&next={quote(target)}", code=303)
        if not self._password_ok(form.get("password") or ""):
            return flask.redirect(f"{self.login_page}?error=password&next={quote(target)}", code=303)
        flask.session.clear()
        flask.session["operator"] = name
        return flask.redirect(target, code=303)

    def _logout(self) -> flask.Response:
        flask.session.clear()
        return flask.redirect("/", code=303)
