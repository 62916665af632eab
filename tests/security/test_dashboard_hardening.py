"""Point 6: dashboard authentication from well-kept libraries (Flask-Login, Flask-Session server-side
sessions, Flask-Limiter): failed logins are throttled, logout revokes the session on the server, ``next``
only leads to this site, operator commands are bounded by the run, and a fuzz test over every route and
every callback finds no 500 and no operator data or action without authentication."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboards import create_app, pages
from dashboards.auth import safe_next
from dashboards.data import RunData
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


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run")
    twin = SyntheticTwin(path, radial_topology(8), n_intervals=8, n_assets=4)  # 8 × 15 min: a 2-hour run
    twin.write_start()
    twin.advance(4)  # running, 1 hour left
    twin.settle()
    return path


@pytest.fixture
def app(run_dir: Path) -> Any:
    return create_app(run_dir, operator_password=PASSWORD)


def _pending(run_dir: Path) -> list[Any]:
    return CommandChannel(run_dir).take()


def _clear(run_dir: Path) -> None:
    for _, path, _ in _pending(run_dir):
        path.unlink()


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_failed_logins_are_throttled_per_address(app: Any) -> None:
    client = app.server.test_client()
    codes = [client.post("/auth/login", data={"operator": "mallory", "password": f"guess-{i}"}).status_code
             for i in range(300)]
    # The review's 300 guesses in under a second: five were judged, every other one refused unjudged.
    assert codes[:5] == [303] * 5 and set(codes[5:]) == {429}
    right = client.post("/auth/login", data={"operator": "mallory", "password": PASSWORD})
    assert right.status_code == 429 and int(right.headers["Retry-After"]) > 0  # even the right one, for now
    # HTTP Basic guesses spend the same budget; viewers and other addresses are not affected.
    basic = client.post(CALLBACK, json=INJECT, headers=_basic("mallory", "guess"))
    assert basic.status_code == 429
    other = app.server.test_client()
    ok = other.post("/auth/login", data={"operator": "alice", "password": PASSWORD},
                    environ_base={"REMOTE_ADDR": "127.0.0.2"})
    assert ok.status_code == 303 and ok.headers["Location"] == "/faults"


def test_basic_auth_guesses_are_throttled(app: Any) -> None:
    client = app.server.test_client()
    codes = [client.post(CALLBACK, json=INJECT, headers=_basic("x", f"g{i}"),
                         environ_base={"REMOTE_ADDR": "127.0.0.3"}).status_code for i in range(8)]
    assert codes == [401] * 5 + [429] * 3


def test_logout_revokes_the_session_on_the_server(app: Any, run_dir: Path) -> None:
    _clear(run_dir)
    client = app.server.test_client()
    client.set_cookie("session", "planted-by-an-attacker")
    assert client.post("/auth/login", data={"operator": "alice", "password": PASSWORD}).status_code == 303
    cookie = client.get_cookie("session")
    assert cookie is not None and cookie.value != "planted-by-an-attacker" and len(cookie.value) >= 40
    assert cookie.http_only and cookie.same_site == "Strict"
    assert client.post(CALLBACK, json=INJECT).status_code == 200 and len(_pending(run_dir)) == 1
    _clear(run_dir)
    assert client.post("/auth/logout").status_code == 303
    # A copy of the cookie taken before logout is worth nothing: the session is gone from the server.
    thief = app.server.test_client()
    thief.set_cookie("session", cookie.value)
    assert thief.post(CALLBACK, json=INJECT).status_code == 401
    assert _pending(run_dir) == []


@pytest.mark.parametrize("target", [
    "/\t/evil.example", "//evil.example", "/\\evil.example", "/\\/evil.example", "https://evil.example/",
    "/\n/evil.example", "/\r\n/evil.example", "/%2F/evil.example", "/%5Cevil.example", "javascript:alert(1)",
    "evil.example", "", " /faults", "/fa\x00ults", "/" + "a" * 600, "/\u2028/evil",
])
def test_next_leads_only_to_this_site(app: Any, target: str) -> None:
    client = app.server.test_client()
    response = client.post("/auth/login", data={"operator": "alice", "password": PASSWORD, "next": target})
    assert response.status_code == 303 and response.headers["Location"] == "/faults"
    assert safe_next(target) == "/faults"
    failed = client.post("/auth/login", data={"operator": "alice", "password": "no", "next": target},
                         environ_base={"REMOTE_ADDR": "127.0.0.9"})
    assert failed.headers["Location"] == "/login?error=password&next=/faults"


def test_next_keeps_paths_of_this_site(app: Any) -> None:
    client = app.server.test_client()
    response = client.post("/auth/login", data={"operator": "alice", "password": PASSWORD, "next": "/assets?x=1"})
    assert response.headers["Location"] == "/assets?x=1"


@pytest.mark.parametrize(("duration", "says"), [
    ("1000000D", "longer than the run"),
    ("106751D", "longer than the run"),
    ("90min", "ends after the run"),
    ("-1h", "must be positive"),
    ("0s", "must be positive"),
    ("1" * 40, "at most 32 characters"),
    ("soon", "not a duration"),
])
def test_operator_commands_are_bounded_by_the_run(run_dir: Path, duration: str, says: str) -> None:
    _clear(run_dir)
    ok, message = pages.submit_fault(RunData(run_dir), operator="alice", kind="backhaul_cut", duration=duration,
                                     participant=None)
    assert not ok and says in message and "duration=" in message
    assert _pending(run_dir) == []
    fits, _ = pages.submit_fault(RunData(run_dir), operator="alice", kind="backhaul_cut", duration="1h",
                                 participant=None)
    assert fits and len(_pending(run_dir)) == 1  # the hour left in the run fits exactly
    _clear(run_dir)


def test_a_crafted_command_file_is_rejected_with_its_reason_never_raised(run_dir: Path) -> None:
    _clear(run_dir)
    channel = CommandChannel(run_dir)
    channel.pending.mkdir(parents=True, exist_ok=True)
    crafted = {
        "a-overflow.json": {"kind": "backhaul_cut", "duration": "106751 days", "operator": "x"},
        "b-list.json": [1, 2, 3],
        "c-types.json": {"kind": ["backhaul_cut"], "duration": 5, "operator": {"$ne": 1}},
        "d-nested.json": "[" * 5000 + "]" * 5000,
    }
    for name, body in crafted.items():
        (channel.pending / name).write_text(body if isinstance(body, str) else json.dumps(body))
    taken = channel.take()
    assert [c for c, _, _ in taken] == [None] * 4
    reasons = [r for _, _, r in taken]
    assert "longer than the run" in reasons[0] and "expected a JSON object" in reasons[1]
    assert "kind=['backhaul_cut']" in reasons[2]
    _clear(run_dir)


# -- fuzz ---------------------------------------------------------------------------------------------------
_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63) | st.floats(allow_nan=True) |
    st.text(max_size=40) | st.sampled_from(["/", "..", "../../etc/passwd", "vmin", "latest", "depin", "A000", "P00",
                                            "backhaul_cut", "1h", "106751D", "\x00", "/\t/evil"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8)
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


def _callback_body(output: str, spec: Any, values: list[Any]) -> dict[str, Any]:
    ids = [o.split(".")[0] for o in (output.strip(".").split("...") if output.startswith("..") else [output])]
    props = [o.rsplit(".", 1)[1] for o in (output.strip(".").split("...") if output.startswith("..") else [output])]
    outputs = [{"id": i, "property": p} for i, p in zip(ids, props, strict=True)]
    deps = list(spec.get("inputs", [])) + list(spec.get("state", []))
    filled = [{**d, "value": values[k % len(values)] if values else None} for k, d in enumerate(deps)]
    n_in = len(spec.get("inputs", []))
    return {"output": output, "outputs": outputs if len(outputs) > 1 else outputs[0], "inputs": filled[:n_in],
            "state": filled[n_in:], "changedPropIds": [f"{d['id']}.{d['property']}" for d in filled[:1]]}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_every_callback_no_500_and_no_operator_data_without_login(app: Any, run_dir: Path, data: Any) -> None:
    client = app.server.test_client()
    output = data.draw(st.sampled_from(sorted(app.callback_map)))
    values = data.draw(st.lists(_values, min_size=1, max_size=4))
    body = _callback_body(output, app.callback_map[output], values)
    if data.draw(st.booleans()):  # sometimes also mangle the structure
        key = data.draw(st.sampled_from(sorted(body)))
        body[key] = data.draw(_values)
    auth = data.draw(st.sampled_from([None, "wrong", "right"]))
    headers = {} if auth is None else _basic("fuzz", PASSWORD if auth == "right" else "nope")
    address = f"127.0.1.{data.draw(st.integers(1, 250))}"  # spread over addresses: the throttle is not the subject
    response = client.post(CALLBACK, data=json.dumps(body), content_type="application/json", headers=headers,
                           environ_base={"REMOTE_ADDR": address})
    assert response.status_code < 500, (output, body, response.data[:300])
    touches_operator = "op-" in output
    if touches_operator and auth != "right":
        assert response.status_code in (400, 401, 403, 429), (body, response.status_code)
        assert b"submitted" not in response.data
    if auth != "right":
        assert _pending(run_dir) == []
    _clear(run_dir)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_every_route_no_500(app: Any, data: Any) -> None:
    client = app.server.test_client()
    rules = sorted(app.server.url_map.iter_rules(), key=lambda r: r.rule)
    rule = data.draw(st.sampled_from(rules))
    # Each <converter:argument> of the rule gets a drawn value (a path may hold slashes, dots, anything).
    path = re.sub(r"<[^>]+>", lambda m: quote(data.draw(_text), safe="/") or "x", rule.rule)
    method = data.draw(st.sampled_from(sorted(rule.methods - {"OPTIONS"} if rule.methods else {"GET"})))
    form = data.draw(st.dictionaries(st.sampled_from(["operator", "password", "next", "x"]), _text, max_size=4))
    query = data.draw(st.dictionaries(st.sampled_from(["next", "error", "x"]), _text, max_size=2))
    response = client.open(path or "/", method=method, data=form, query_string=query,
                           environ_base={"REMOTE_ADDR": f"127.0.2.{data.draw(st.integers(1, 250))}"})
    assert response.status_code < 500, (method, path, form, response.data[:300])
    if path.startswith("/auth/login") and response.status_code == 303:
        location = response.headers["Location"]
        assert location.startswith("/") and not location.startswith(("//", "/\\"))


# -- viewing behind the login (the CLI's default off loopback) -------------------------------------------------
@pytest.fixture
def gated(run_dir: Path) -> Any:
    return create_app(run_dir, operator_password=PASSWORD, views_need_login=True)


def _run_data_in(body: bytes, run_dir: Path, *, asked: str = "") -> bool:
    """Whether a response carries anything of the run: its name, its policies, Dash's layout or callback
    definitions, or its tables (``asked``: the request's own path, which a redirect echoes)."""
    body = body.replace(asked.encode(), b"") if asked else body
    markers = [run_dir.name.encode(), b"run-name", b'"namespace"', b'"inputs"', b"depin", b"scada", b"participant"]
    return any(m in body for m in markers)


def test_a_gated_dashboard_shows_only_the_login_form_until_login(gated: Any, run_dir: Path) -> None:
    client = gated.server.test_client()
    page = client.get("/comparison?x=1", environ_base={"REMOTE_ADDR": "127.0.3.1"})
    assert page.status_code == 303 and page.headers["Location"] == "/auth/login?next=/comparison%3Fx%3D1"
    form = client.get(page.headers["Location"])
    assert form.status_code == 200 and b'type="password"' in form.data and b"<script" not in form.data
    assert not _run_data_in(form.data, run_dir)
    assert b'value="/comparison?x=1"' in form.data
    for path in ("/_dash-layout", "/_dash-dependencies", "/export/kpis.csv", "/assets/style.css"):
        refused = client.get(path, headers={"Accept": "application/json"})
        assert refused.status_code == 401 and not _run_data_in(refused.data, run_dir), path
    assert client.post(CALLBACK, json=INJECT).status_code == 401
    # The form logs in, with next kept; then the same client sees the run.
    done = client.post("/auth/login", data={"operator": "ann", "password": PASSWORD, "next": "/comparison"})
    assert done.status_code == 303 and done.headers["Location"] == "/comparison"
    layout = client.get("/_dash-layout", headers={"Accept": "application/json"})
    assert layout.status_code == 200 and b"run-name" in layout.data
    assert client.post("/auth/logout").status_code == 303
    assert client.get("/_dash-layout", headers={"Accept": "application/json"}).status_code == 401
    # A wrong password goes back to the form (not to the gated Dash login page), with the reason.
    wrong = client.post("/auth/login", data={"operator": "ann", "password": "nope", "next": "/"})
    assert wrong.headers["Location"].startswith("/auth/login?error=password")
    assert b"Wrong password" in client.get(wrong.headers["Location"]).data


def test_http_basic_guesses_at_a_gated_dashboard_spend_the_login_budget(gated: Any) -> None:
    client = gated.server.test_client()
    codes = [client.get("/_dash-layout", headers=_basic("x", f"guess{i}"),
                        environ_base={"REMOTE_ADDR": "127.0.4.1"}).status_code for i in range(7)]
    assert codes == [401] * 5 + [429] * 2
    right = client.get("/_dash-layout", headers=_basic("x", PASSWORD), environ_base={"REMOTE_ADDR": "127.0.4.2"})
    assert right.status_code == 200


def test_a_gated_dashboard_needs_a_password() -> None:
    from dashboards.auth import OperatorAuth

    with pytest.raises(ValueError, match="views_need_login"):
        OperatorAuth(None, views_need_login=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_a_gated_dashboard_no_500_and_no_data_without_login(gated: Any, run_dir: Path, data: Any) -> None:
    client = gated.server.test_client()
    address = {"REMOTE_ADDR": f"127.0.5.{data.draw(st.integers(1, 250))}"}
    path = CALLBACK
    if data.draw(st.booleans()):  # a callback
        output = data.draw(st.sampled_from(sorted(gated.callback_map)))
        body = _callback_body(output, gated.callback_map[output], data.draw(st.lists(_values, min_size=1, max_size=4)))
        response = client.post(CALLBACK, data=json.dumps(body), content_type="application/json",
                               environ_base=address)
    else:  # any route, any method, with or without a page's Accept header
        rules = sorted(gated.server.url_map.iter_rules(), key=lambda r: r.rule)
        rule = data.draw(st.sampled_from(rules))
        path = re.sub(r"<[^>]+>", lambda m: quote(data.draw(_text), safe="/") or "x", rule.rule)
        method = data.draw(st.sampled_from(sorted(rule.methods - {"OPTIONS"} if rule.methods else {"GET"})))
        accept = data.draw(st.sampled_from(["text/html", "application/json", "*/*"]))
        response = client.open(path or "/", method=method, headers={"Accept": accept}, environ_base=address,
                               data=data.draw(st.dictionaries(st.sampled_from(["operator", "next", "x"]), _text,
                                                              max_size=3)))
    assert response.status_code < 500, response.data[:300]
    assert not _run_data_in(response.data, run_dir, asked=path), (response.status_code, response.data[:300])
    assert _pending(run_dir) == []


def test_the_cli_refuses_to_serve_a_run_off_loopback_without_a_login(run_dir: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from twin.cli import app as cli

    monkeypatch.delenv("GRIDTWIN_OPERATOR_PASSWORD", raising=False)
    for args, says in ((["--host", "0.0.0.0"], "--host='0.0.0.0' is not loopback"),
                       (["--login-to-view"], "(--login-to-view)")):
        result = CliRunner().invoke(cli, ["dashboard", str(run_dir), *args])
        assert result.exit_code == 2 and says in result.output and "--open-view" in result.output, result.output
        assert "Traceback" not in result.output


def test_in_chromium_a_gated_dashboard_logs_in_through_its_form_and_shows_the_run(run_dir: Path) -> None:
    playwright_sync = pytest.importorskip("playwright.sync_api")
    from tests.browser_helpers import CHROMIUM, CHROMIUM_ARGS, serving

    app = create_app(run_dir, operator_password=PASSWORD, views_need_login=True)
    with serving(app.server) as base, playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(base + "/settlement")
            assert page.url == base + "/auth/login?next=/settlement"
            page.fill("input[name=operator]", "ann")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_selector("#run-state")
            assert page.url == base + "/settlement"
            assert page.inner_text("#run-name") == RunData(run_dir).run_name()
        finally:
            browser.close()
