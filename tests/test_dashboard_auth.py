"""Operator actions need the operator role: unauthenticated or malformed callback requests get 401/403/400,
never 500 and never data. Exercised with Flask's test client against a real app."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dashboards import create_app
from dashboards.synthetic import SyntheticTwin, radial_topology
from twin.commands import CommandChannel

CALLBACK = "/_dash-update-component"
PASSWORD = "correct horse"

INJECT: dict[str, Any] = {
    "output": "op-fault-result.children",
    "outputs": {"id": "op-fault-result", "property": "children"},
    "inputs": [{"id": "fault-submit", "property": "n_clicks", "value": 1}],
    "state": [{"id": "fault-kind", "property": "value", "value": "backhaul_cut"},
              {"id": "fault-duration", "property": "value", "value": "1h"},
              {"id": "fault-participant", "property": "value", "value": None}],
    "changedPropIds": ["fault-submit.n_clicks"],
}
VIEW: dict[str, Any] = {  # a viewer callback: the Faults page's history
    "output": "..fault-active.children...fault-effect.figure...fault-history.children..",
    "outputs": [{"id": "fault-active", "property": "children"}, {"id": "fault-effect", "property": "figure"},
                {"id": "fault-history", "property": "children"}],
    "inputs": [{"id": "run-version", "property": "data", "value": None},
               {"id": "time-view", "property": "data", "value": None}],
    "changedPropIds": ["run-version.data"],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run")
    twin = SyntheticTwin(path, radial_topology(8), n_intervals=8, n_assets=4)
    twin.write_start()
    twin.advance(4)  # still running
    return path


@pytest.fixture
def client(run_dir: Path) -> Any:
    return create_app(run_dir, operator_password=PASSWORD).server.test_client()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def pending(run_dir: Path) -> list[Any]:
    return CommandChannel(run_dir).take()


def clear_pending(run_dir: Path) -> None:
    for _, path, _ in pending(run_dir):
        path.unlink()


MALFORMED: list[tuple[str, Any]] = [
    ("not json", b"{not json"),
    ("empty", b""),
    ("a list", json.dumps([INJECT]).encode()),
    ("null", b"null"),
    ("output not a string", json.dumps({**INJECT, "output": 5}).encode()),
    ("unknown output", json.dumps({**INJECT, "output": "op-nothing.children"}).encode()),
    ("missing state", json.dumps({k: v for k, v in INJECT.items() if k != "state"}).encode()),
    ("wrong input", json.dumps({**INJECT, "inputs": [{"id": "tick", "property": "n_intervals", "value": 1}]}).encode()),
    ("extra input", json.dumps({**INJECT, "inputs": INJECT["inputs"] * 2}).encode()),
    ("outputs a string", json.dumps({**INJECT, "outputs": "op-fault-result.children"}).encode()),
    ("changedPropIds not a list", json.dumps({**INJECT, "changedPropIds": "x"}).encode()),
    ("deeply nested", b"[" * 5000 + b"]" * 5000),
    ("invalid utf-8", b'{"output": "\xff\xfe"}'),
]


def test_unauthenticated_operator_action_is_refused_and_does_nothing(client: Any, run_dir: Path) -> None:
    clear_pending(run_dir)
    response = client.post(CALLBACK, json=INJECT)
    assert response.status_code == 401
    assert response.get_json() == {"error": "operator login required"}
    assert "Session" in response.headers["WWW-Authenticate"]
    assert pending(run_dir) == []
    wrong = client.post(CALLBACK, json=INJECT, headers=basic("mallory", "guess"))
    assert wrong.status_code == 401 and pending(run_dir) == []


@pytest.mark.parametrize(("name", "body"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_bodies_never_reach_a_callback(client: Any, run_dir: Path, name: str, body: bytes) -> None:
    clear_pending(run_dir)
    unauth = client.post(CALLBACK, data=body, content_type="application/json")
    assert unauth.status_code in (401, 403), (name, unauth.status_code, unauth.data[:200])
    assert unauth.get_json()["error"] == "operator login required"
    authed = client.post(CALLBACK, data=body, content_type="application/json", headers=basic("alice", PASSWORD))
    assert authed.status_code == 400, (name, authed.status_code, authed.data[:200])
    assert authed.get_json()["error"].startswith("malformed callback request: ")
    assert pending(run_dir) == []


def test_operator_with_basic_auth_injects_a_fault(client: Any, run_dir: Path) -> None:
    clear_pending(run_dir)
    response = client.post(CALLBACK, json=INJECT, headers=basic("alice", PASSWORD))
    assert response.status_code == 200
    text = json.dumps(response.get_json())
    assert "submitted backhaul_cut" in text
    ((command, _, _),) = pending(run_dir)
    assert command.operator == "alice" and command.kind.value == "backhaul_cut"
    clear_pending(run_dir)


def test_login_form_session_and_logout(client: Any, run_dir: Path) -> None:
    clear_pending(run_dir)
    bad = client.post("/auth/login", data={"operator": "alice", "password": "nope", "next": "/faults"})
    assert bad.status_code == 303 and bad.headers["Location"].startswith("/login?error=password")
    assert client.post(CALLBACK, json=INJECT).status_code == 401
    evil = client.post("/auth/login", data={"operator": "alice", "password": PASSWORD, "next": "//evil.example/"})
    assert evil.status_code == 303 and evil.headers["Location"] == "/faults"  # no open redirect
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.http_only and cookie.same_site == "Strict"
    ok = client.post(CALLBACK, json=INJECT)
    assert ok.status_code == 200 and len(pending(run_dir)) == 1
    as_text = client.post(CALLBACK, data=json.dumps(INJECT), content_type="text/plain")
    assert as_text.status_code == 415  # a cross-site form cannot forge an operator action
    assert client.post("/auth/logout").status_code == 303
    assert client.post(CALLBACK, json=INJECT).status_code == 401
    assert len(pending(run_dir)) == 1
    clear_pending(run_dir)
    bad_name = client.post("/auth/login", data={"operator": "<script>", "password": PASSWORD})
    assert bad_name.headers["Location"].startswith("/login?error=name")


def test_viewing_needs_no_login_and_gets_no_operator_data(client: Any) -> None:
    assert client.get("/").status_code == 200
    assert client.get("/_dash-layout").status_code == 200
    response = client.post(CALLBACK, json=VIEW)
    assert response.status_code == 200
    assert set(response.get_json()["response"]) == {"fault-active", "fault-effect", "fault-history"}
    crafted = copy.deepcopy(VIEW)
    crafted["inputs"][0]["value"] = {"unexpected": ["types"]}
    assert client.post(CALLBACK, json=crafted).status_code == 200


def test_crafted_values_for_viewer_callbacks_do_not_crash(client: Any) -> None:
    body = {
        "output": "as-figure.figure", "outputs": {"id": "as-figure", "property": "figure"},
        "inputs": [{"id": "run-version", "property": "data", "value": None},
                   {"id": "time-view", "property": "data", "value": {"cursor": ["x"], "start": 1e300}},
                   {"id": "as-policy", "property": "value", "value": {"$ne": 1}},
                   {"id": "as-asset", "property": "value", "value": ["A000"]}],
        "changedPropIds": ["as-policy.value"],
    }
    assert client.post(CALLBACK, json=body).status_code == 200


def test_operator_actions_disabled_without_a_password(run_dir: Path) -> None:
    client = create_app(run_dir).server.test_client()
    response = client.post(CALLBACK, json=INJECT, headers=basic("alice", ""))
    assert response.status_code == 403
    login = client.post("/auth/login", data={"operator": "alice", "password": ""})
    assert login.headers["Location"] == "/login?error=disabled"
    assert client.post(CALLBACK, json=INJECT).status_code == 403


def test_create_app_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="run_dir=.*not a folder, and its parent .* does not exist"):
        create_app(tmp_path / "missing" / "run")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="run_dir=.*not a folder"):
        create_app(tmp_path / "file")
    create_app(tmp_path / "not-yet")  # a run folder still to come: the dashboard waits for it
    with pytest.raises(ValueError, match="studies_dir=.*not a folder"):
        create_app(tmp_path, studies_dir=tmp_path / "nope")
    with pytest.raises(ValueError, match="refresh_s=0"):
        create_app(tmp_path, refresh_s=0)


def test_two_apps_in_one_process_do_not_share_state(run_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    twin = SyntheticTwin(other, radial_topology(5), policies=("only",), n_intervals=4, n_assets=2, name="other")
    twin.write_start()
    a = create_app(run_dir, operator_password=PASSWORD)
    b = create_app(other)
    assert a.title != b.title and a.server is not b.server
    assert set(a.callback_map) == set(b.callback_map)
    assert b.server.test_client().post(CALLBACK, json=INJECT, headers=basic("alice", PASSWORD)).status_code == 403


def test_serve_validates_before_binding(run_dir: Path) -> None:
    from dashboards import serve

    with pytest.raises(ValueError, match="port=0"):
        serve(run_dir, port=0)
