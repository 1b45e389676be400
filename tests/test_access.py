"""One door with roles, and records that survive a restart: `python app.py` with a users file and
a real SQLite file, driven with `gradio_client`, `httpx` and the `openai` client."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pandas as pd
import pytest
import yaml
from gradio_client import Client

from hatcat.access import hash_secret, new_key
from tests.support import run_app, start_app, stop_app
from tests.test_browser import CHROMIUM, FLAGS

PASSWORDS = {"ada": "ada-admin-pass", "vic": "vic-viewer-pass"}
RATE_LIMIT = 40


@pytest.fixture(scope="module")
def door(small_probe_pack: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Users ada (admin), vic (viewer), rex (researcher, key only), lim (viewer key for the rate
    test); a server with them, the small pack and its own SQLite file. Yields what the tests need;
    `restart()` starts the server again on the same database (optionally under other settings)."""
    folder = tmp_path_factory.mktemp("door")
    keys, users = {}, {}
    for name, role in (("ada", "admin"), ("vic", "viewer"), ("rex", "researcher"), ("lim", "viewer")):
        key_id, keys[name], stored = new_key()
        users[name] = {"role": role, "keys": {key_id: stored}}
        if name in PASSWORDS:
            users[name]["password"] = hash_secret(PASSWORDS[name])
    (folder / "users.yaml").write_text(yaml.safe_dump({"users": users}))
    env = {
        "HATCAT_USERS_FILE": str(folder / "users.yaml"),
        "HATCAT_DB": str(folder / "hatcat.db"),
        "HATCAT_PROBE_PACK": str(small_probe_pack),
        "HATCAT_RATE_LIMIT": str(RATE_LIMIT),
        "HATCAT_MAX_STREAMS": "1",
        "HATCAT_MAX_TOKENS": "64",
        "HATCAT_MAX_BODY_BYTES": "65536",
    }
    state: dict = {"keys": keys, "db": folder / "hatcat.db", "folder": folder}

    def restart(prefix: list[str] | None = None) -> str:
        if "proc" in state:
            stop_app(state["proc"])
        state["proc"], state["base"] = start_app(env, folder / "app.log", prefix=prefix)
        return state["base"]

    state["restart"] = restart
    restart()
    try:
        yield state
    finally:
        stop_app(state["proc"])


def _get(door: dict, path: str, who: str, **params) -> httpx.Response:
    return httpx.get(f"{door['base']}{path}", params=params, headers=_auth(door, who), timeout=60)


def _auth(door: dict, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {door['keys'][user]}"}


def _forbidden(response: httpx.Response, role: str) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["type"] == "permission_error" and f"needs the {role} role" in error["message"]


def test_anonymous_page_shows_the_login_and_its_gradio_api_is_refused(door: dict) -> None:
    page = httpx.get(f"{door['base']}/", timeout=60)
    assert page.status_code == 200 and '"auth_required":true' in page.text.replace(" ", "")
    assert "HatCat workbench" not in page.text.split("auth_required")[1][:2000]  # no panels before the login
    assert httpx.get(f"{door['base']}/config", timeout=60).status_code == 401
    with pytest.raises(Exception, match="login|401|Unauthorized|auth"):
        Client(f"{door['base']}/", verbose=False)
    wrong = httpx.post(f"{door['base']}/login", data={"username": "vic", "password": "nope"}, timeout=60)
    assert wrong.status_code == 400
    assert httpx.get(f"{door['base']}/v1/models", timeout=60).status_code == 401


@pytest.mark.skipif(not shutil.which(CHROMIUM), reason="Debian chromium is not installed (.ci/run installs it)")
def test_browser_gets_the_login_page_then_the_workbench(door: dict) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.goto(f"{door['base']}/", wait_until="load", timeout=120_000)
            password = page.locator("input[type=password]")
            password.wait_for(timeout=60_000)
            assert page.locator("#monitor-run").count() == 0  # no panel before the login
            page.locator("input:not([type=password])").first.fill("vic")
            password.fill(PASSWORDS["vic"])
            password.press("Enter")
            page.locator("#monitor-run").wait_for(timeout=120_000)
        finally:
            browser.close()


def test_viewer_monitors_but_is_refused_training_steering_and_pack_loading(door: dict) -> None:
    viewer = Client(f"{door['base']}/", auth=("vic", PASSWORDS["vic"]), verbose=False)
    outputs = viewer.predict("Tell me about fear.", 4, 0, 0, "divergence", api_name="/monitor")
    assert any(isinstance(o, dict) and o.get("records") for o in outputs)
    with pytest.raises(Exception, match="training probes needs the admin role"):
        viewer.predict(["Music"], "", [], "", "", "", api_name="/train")
    with pytest.raises(Exception, match="steering needs the researcher role"):
        viewer.predict("Hello", 4, 0, api_name="/steer_compare")
    steer = httpx.post(
        f"{door['base']}/v1/steering/add", json={"concept": "Fear", "strength": 0.1}, headers=_auth(door, "vic")
    )
    _forbidden(steer, "researcher")
    pack_id = _get(door, "/v1/probe-packs", "vic").json()["data"][0]["id"]
    _forbidden(
        httpx.post(f"{door['base']}/v1/probe-packs/{pack_id}/load", headers=_auth(door, "vic"), timeout=60), "admin"
    )
    _forbidden(_get(door, "/v1/audit", "vic"), "admin")
    _forbidden(_get(door, "/v1/events", "rex"), "admin")


def test_admin_training_and_researcher_steering_are_audited_with_the_user(door: dict) -> None:
    admin = Client(f"{door['base']}/", auth=("ada", PASSWORDS["ada"]), verbose=False)
    report, folder = admin.predict(["Music"], "", [], "", "", "", api_name="/train")
    assert "hot-loaded" in report and Path(folder).is_dir()
    added = httpx.post(
        f"{door['base']}/v1/steering/add",
        json={"concept": "Music", "strength": 0.1, "session_id": "s1"},  # in the pack just trained
        headers=_auth(door, "rex"),
    )
    assert added.status_code == 200, added.text
    # steering sessions are the caller's own: the admin's session s1 is empty
    assert _get(door, "/v1/steering/list", "ada", session_id="s1").json()["steerings"] == []
    log = _get(door, "/v1/audit", "ada").json()["data"]
    by_action = {row["action"]: row for row in log}
    assert by_action["training_run"]["actor"] == "ada" and "Music" in by_action["training_run"]["target"]
    assert by_action["pack_hot_loaded"]["actor"] == "ada"
    assert by_action["steering_added"]["actor"] == "rex" and by_action["steering_added"]["target"] == "Music"


def test_monitored_chat_that_crosses_a_threshold_is_an_event(door: dict) -> None:
    # every concept of the loaded pack at threshold 0: whatever the monitor reports crosses
    thresholds = {c: 0.0 for c in _loaded_concepts(door)}
    saved = httpx.put(
        f"{door['base']}/v1/profiles/all-zero", json={"thresholds": thresholds}, headers=_auth(door, "rex")
    )
    assert saved.status_code == 200 and saved.json()["owner"] == "rex"
    _forbidden(httpx.post(f"{door['base']}/v1/profiles/all-zero/apply", headers=_auth(door, "rex")), "admin")
    applied = httpx.post(f"{door['base']}/v1/profiles/all-zero/apply", headers=_auth(door, "ada"))
    assert applied.status_code == 200 and applied.json()["applied"] == len(thresholds)
    client = openai.OpenAI(base_url=f"{door['base']}/v1", api_key=door["keys"]["rex"], max_retries=0, timeout=120)
    answer = client.chat.completions.create(
        model="hatcat-divergence",
        messages=[{"role": "user", "content": "I was terrified by the loud music in the car."}],
        max_tokens=8,
        temperature=0,
    )
    reported = {c["concept"] for t in answer.to_dict()["hatcat"]["tokens"] for c in t["divergence"]["top_divergences"]}
    events = _get(door, "/v1/events", "ada", user="rex").json()["data"]
    mine = [e for e in events if e["request_id"] == answer.id]
    assert mine and {e["concept"] for e in mine} <= set(thresholds)
    assert all(e["score"] >= e["threshold"] == 0.0 and e["excerpt"] and e["probe_pack"] for e in mine)
    assert all(len(e["pack_checksum"]) == 64 and e["token_start"] <= e["token_end"] for e in mine)
    assert reported & {e["concept"] for e in mine}


def test_review_queue_lists_marks_and_exports_events(door: dict) -> None:
    admin = Client(f"{door['base']}/", auth=("ada", door["keys"]["ada"]), verbose=False)  # a key logs in too
    filters = ("", "rex", "", 0, "none")
    listed = admin.predict(*filters, api_name="/events")
    ids = [row[0] for row in listed["data"]]
    assert ids and all(row[2] == "rex" for row in listed["data"])
    _, note = admin.predict(str(ids[0]), "false_positive", *filters, api_name="/review")
    assert note == "Marked 1 event(s) as false_positive."
    marked = _get(door, "/v1/events", "ada", review="false_positive").json()["data"]
    assert [(e["id"], e["reviewed_by"]) for e in marked] == [(ids[0], "ada")]
    exported = pd.read_parquet(admin.predict("", "", "", 0, "any", api_name="/export_parquet"))
    assert ids[0] in exported["id"].tolist() and "excerpt" in exported.columns
    viewer = Client(f"{door['base']}/", auth=("vic", PASSWORDS["vic"]), verbose=False)
    with pytest.raises(Exception, match="reading divergence events needs the admin role"):
        viewer.predict(*filters, api_name="/events")


def test_rate_limit_answers_429_with_retry_after(door: dict) -> None:
    codes = [_get(door, "/v1/models", "lim").status_code for _ in range(RATE_LIMIT + 1)]
    assert codes[:RATE_LIMIT] == [200] * RATE_LIMIT and codes[-1] == 429
    refused = _get(door, "/v1/models", "lim")
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert _get(door, "/v1/models", "vic").status_code == 200  # other keys are not affected


def test_body_cap_and_concurrent_streams_per_key(door: dict) -> None:
    big = {"model": "hatcat-divergence", "messages": [{"role": "user", "content": "x" * 70_000}]}
    too_big = httpx.post(f"{door['base']}/v1/chat/completions", json=big, headers=_auth(door, "vic"), timeout=60)
    assert too_big.status_code == 413 and "HATCAT_MAX_BODY_BYTES" in too_big.json()["error"]["message"]
    counting = [{"role": "user", "content": "Count from 1 to 100: 1, 2, 3, 4,"}]
    body = {"messages": counting, "max_tokens": 64, "temperature": 0, "stream": True}
    url = f"{door['base']}/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=_auth(door, "vic"), timeout=120) as first:
        assert first.status_code == 200
        lines = first.iter_lines()
        next(lines)  # the first token is out; 63 more to come
        second = httpx.post(url, json={**body, "max_tokens": 2}, headers=_auth(door, "vic"), timeout=120)
        rest = [line for line in lines if line]
    assert second.status_code == 429 and second.headers["retry-after"] == "1"
    assert "HATCAT_MAX_STREAMS" in second.json()["error"]["message"]
    assert rest[-1] == "data: [DONE]"  # the refused request did not disturb the open stream
    small = {**body, "max_tokens": 2}
    other = httpx.post(url, json={**small, "stream": False}, headers=_auth(door, "vic"), timeout=120)
    assert other.status_code == 200  # a non-streamed request needs no stream slot
    again = httpx.post(url, json=small, headers=_auth(door, "vic"), timeout=120)
    assert again.status_code == 200  # the slot came back when the first stream ended


def test_records_survive_a_restart(door: dict) -> None:
    concept = _loaded_concepts(door)[0]
    kept = httpx.put(
        f"{door['base']}/v1/profiles/keep-me", json={"thresholds": {concept: 0.6}}, headers=_auth(door, "rex")
    )
    assert kept.status_code == 200  # a profile and its audit row, whatever ran before
    before = {
        "audit": _get(door, "/v1/audit", "ada").json()["data"],
        "events": _get(door, "/v1/events", "ada").json()["data"],
        "profiles": _get(door, "/v1/profiles", "vic").json()["data"],
    }
    assert before["audit"] and before["profiles"]  # the events come from the chat test above
    door["restart"]()
    assert _get(door, "/v1/audit", "ada").json()["data"][: len(before["audit"])] == before["audit"]
    assert _get(door, "/v1/events", "ada").json()["data"] == before["events"]
    assert _get(door, "/v1/profiles", "vic").json()["data"] == before["profiles"]


def test_read_only_database_fails_the_write_path_clearly_and_generation_goes_on(door: dict) -> None:
    door["db"].chmod(0o444)
    try:
        # root writes through file modes: the server runs without CAP_DAC_OVERRIDE so the mode counts
        door["restart"](_without_dac_override())
        refused = httpx.put(
            f"{door['base']}/v1/profiles/ro-test", json={"thresholds": {"Fear": 0.5}}, headers=_auth(door, "rex")
        )
        assert refused.status_code == 503, refused.text
        assert "cannot record" in refused.json()["error"]["message"]
        assert "readonly" in refused.json()["error"]["message"].replace("-", "").replace(" ", "")
        chat = httpx.post(
            f"{door['base']}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4},
            headers=_auth(door, "vic"),
            timeout=120,
        )
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
        assert _get(door, "/v1/profiles", "vic").status_code == 200  # reads still work
    finally:
        door["db"].chmod(0o644)


def _without_dac_override() -> list[str] | None:
    if os.geteuid() != 0:
        return None
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: a read-only file mode does not stop root")
    return ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def _loaded_concepts(door: dict) -> list[str]:
    packs = _get(door, "/v1/probe-packs", "vic").json()["data"]
    loaded = next(p["id"] for p in packs if p["loaded"])
    return _get(door, f"/v1/probe-packs/{loaded}", "vic").json()["manifest"]["concepts"]


def test_start_up_refuses_a_corrupt_pack_a_bad_model_users_file_or_store_in_one_line(
    small_probe_pack: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "pack"
    shutil.copytree(small_probe_pack, corrupt)
    weights = next(corrupt.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    (tmp_path / "users.yaml").write_text("users:\n  bob: {role: boss, password: x}\n")
    cases = {
        "corrupt": {"HATCAT_PROBE_PACK": str(corrupt), "HATCAT_DB": str(tmp_path / "a.db")},
        "role must be one of": {"HATCAT_USERS_FILE": str(tmp_path / "users.yaml")},
        "record store": {"HATCAT_DB": "/proc/hatcat/no.db"},
        "not found": {"HATCAT_MODEL_NAME": str(tmp_path / "missing.gguf"), "HATCAT_DB": str(tmp_path / "b.db")},
    }
    for expected, env in cases.items():
        done = run_app({"HATCAT_PORT": "1", **env}, timeout=300)
        # one line from HatCat, last (a model that loaded first may have drawn transformers' progress bar)
        lines = [line for line in done.stderr.strip().splitlines() if line.startswith("hatcat:")]
        assert done.returncode == 2 and len(lines) == 1 and expected in lines[0], done.stderr[-2000:]
        assert done.stderr.strip().splitlines()[-1] == lines[0]
        assert "Traceback" not in done.stderr
