"""The operator login form (it posts to ``dashboards.auth``'s login route; Dash never sees the password)."""

from __future__ import annotations

from dash import dcc, html

from dashboards.components import notice

__all__ = ["layout"]

_LOGIN_ERRORS = {
    "password": "wrong password",
    "name": "enter your operator name (letters, digits, space . _ @ -; at most 64 characters)",
    "disabled": "operator actions are disabled on this dashboard",
}


def layout(*, error: str, next_path: str, operator: str | None, auth_enabled: bool) -> html.Div:
    if not auth_enabled:
        return html.Div(notice(_LOGIN_ERRORS["disabled"], kind="warning"), className="panel narrow")
    if operator:
        return html.Div([notice(f"logged in as {operator}"), dcc.Link("go to Faults", href="/faults")],
                        className="panel narrow")
    return html.Div([
        html.H3("Operator login"),
        notice(_LOGIN_ERRORS.get(error, "could not log in"), kind="critical") if error else None,
        html.Form([
            html.Label(["Operator name", html.Br(), dcc.Input(name="operator", id="login-operator", type="text",
                                                              autoComplete="username", required=True)]),
            html.Label(["Password", html.Br(), dcc.Input(name="password", id="login-password", type="password",
                                                         autoComplete="current-password", required=True)]),
            dcc.Input(name="next", id="login-next", type="hidden", value=next_path),
            html.Button("Log in", id="login-submit", type="submit", className="button"),
        ], action="/auth/login", method="POST", className="login-form"),
    ], className="panel narrow")
