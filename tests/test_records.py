"""Model-free parts of access control and the record store: the users file, key lookup, the rate
window, a real SQLite store with its migrations, and which concepts count as crossing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hatcat.access import (
    API_KEY_USER,
    AccessError,
    Directory,
    Forbidden,
    Role,
    User,
    hash_secret,
    key_id,
    main,
    new_key,
)
from hatcat.api.limits import RateWindow
from hatcat.store import ProfileOwned, Store, StoreUnavailable
from hatcat.store.events import crossings

# a divergence event as `hatcat.store.events.record_events` writes it
EVENT = {
    "request_id": "chatcmpl-1",
    "actor": "rex",
    "model": "m",
    "probe_pack": "p",
    "pack_checksum": "c" * 64,
    "concept": "Fear",
    "score": 0.9,
    "threshold": 0.5,
    "divergence": 0.3,
    "token_start": 1,
    "token_end": 3,
    "excerpt": "so afraid",
}


def _users(tmp_path: Path, users: dict) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(yaml.safe_dump({"users": users}))
    return path


def test_users_file_logins_keys_and_the_single_admin_key(tmp_path: Path) -> None:
    key_id, key, stored = new_key()
    path = _users(
        tmp_path,
        {
            "ada": {"role": "admin", "password": hash_secret("pw-ada")},
            "rex": {"role": "researcher", "keys": {key_id: stored}},
        },
    )
    users = Directory.load(path, api_key="single-admin-key")
    assert users.login("ada", "pw-ada") == User("ada", Role.admin)
    assert users.login("ada", "wrong") is None and users.login("nobody", "pw-ada") is None
    assert users.by_key(key) == User("rex", Role.researcher)
    assert users.by_key(key) == User("rex", Role.researcher)  # the remembered path
    assert users.login("rex", key) == User("rex", Role.researcher)
    assert users.login("ada", key) is None  # rex's key is not ada's
    assert users.by_key(key[:-1] + ("x" if key[-1] != "x" else "y")) is None
    assert users.by_key("single-admin-key") == User(API_KEY_USER, Role.admin)
    assert users.login(API_KEY_USER, "single-admin-key") == User(API_KEY_USER, Role.admin)
    assert "pw-ada" not in path.read_text() and key not in path.read_text()


def test_roles_are_ordered_and_refusals_name_the_role_needed() -> None:
    viewer = User("vic", Role.viewer)
    viewer.require(Role.viewer, "monitoring")
    with pytest.raises(Forbidden, match="training needs the admin role; user vic is a viewer"):
        viewer.require(Role.admin, "training")
    User("ada", Role.admin).require(Role.researcher, "steering")


@pytest.mark.parametrize(
    ("users", "message"),
    [
        ({"bob": {"role": "boss", "password": "$argon2id$x"}}, "role must be one of"),
        ({"bob": {"role": "viewer"}}, "give a password hash"),
        ({"bob": {"role": "viewer", "password": "plain-text"}}, "argon2 hashes"),
        ({"api-key": {"role": "viewer", "password": "$argon2id$x"}}, "a name is"),
    ],
)
def test_a_bad_users_file_is_refused_in_one_line(tmp_path: Path, users: dict, message: str) -> None:
    with pytest.raises(AccessError, match=message) as err:
        Directory.load(_users(tmp_path, users), None)
    assert "\n" not in str(err.value)


def test_the_users_command_adds_users_and_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "users.yaml"
    assert main(["add", "svc", "--role", "researcher", "--no-password", "--file", str(path)]) == 0
    assert main(["key", "svc", "--file", str(path)]) == 0
    key = capsys.readouterr().out.strip()
    users = Directory.load(path, None)
    assert users.known(key) is None  # not verified yet: only `verify` hashes
    assert users.by_key(key) == users.known(key) == User("svc", Role.researcher)
    assert key_id(key) == key.split("_")[1] and key_id("not-a-key") == "other"
    assert main(["key", "ghost", "--file", str(path)]) == 2


def test_rate_window_admits_per_minute_and_says_when_to_retry() -> None:
    window = RateWindow(3)
    assert [window.admit("k", now=t) for t in (0.0, 1.0, 2.0)] == [0.0, 0.0, 0.0]
    assert window.admit("k", now=3.0) == pytest.approx(57.0)
    assert window.admit("other", now=3.0) == 0.0
    assert window.admit("k", now=60.5) == 0.0  # the first request left the window


def test_failure_window_blocks_when_any_counted_key_is_at_its_limit() -> None:
    window = RateWindow(2)
    window.add(("address:a", "key:1"), now=0.0)
    assert window.wait(("address:a", "key:1"), now=1.0) == 0.0  # one failure: under the limit, nothing counted
    window.add(("address:a", "key:1"), now=1.0)
    assert window.wait(("address:b", "key:1"), now=2.0) == pytest.approx(58.0)  # same key id, another address
    assert window.wait(("address:b", "key:2"), now=2.0) == 0.0
    assert window.wait(("address:a", "key:1"), now=61.0) == 0.0  # both failures left the window


def test_store_keeps_audit_events_and_profiles_across_opens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    store = Store(url)
    store.audit("ada", "pack_loaded", "pack-x", checksum="abc")
    event = EVENT
    store.add_events([event, {**event, "concept": "Music", "score": 0.6}])
    store.save_profile("strict", "rex", "p", {"Fear": 0.7}, admin=False)
    with pytest.raises(ProfileOwned, match="belongs to rex"):
        store.save_profile("strict", "vic", "p", {}, admin=False)
    again = Store(url)  # a restart: migrations find the schema up to date
    loads = again.audit_log(action="pack_loaded")
    assert [(r["actor"], r["target"], r["detail"]) for r in loads] == [("ada", "pack-x", {"checksum": "abc"})]
    assert [e["concept"] for e in again.events(min_score=0.8)] == ["Fear"]
    assert again.mark([e["id"] for e in again.events(concept="Fear")], "true_positive", "ada") == 1
    assert again.events(review="true_positive")[0]["reviewed_by"] == "ada"
    assert [e["concept"] for e in again.events(review="none")] == ["Music"]
    assert again.profile("strict")["thresholds"] == {"Fear": 0.7}
    assert {row["action"] for row in again.audit_log()} == {"pack_loaded", "profile_saved", "events_reviewed"}


def test_an_unreachable_store_is_one_line() -> None:
    with pytest.raises(StoreUnavailable, match="cannot be opened") as err:
        Store("sqlite:////proc/hatcat/no.db")
    assert "\n" not in str(err.value)


def test_crossings_span_the_tokens_at_or_above_the_threshold() -> None:
    def token(i: int, text: str, **acts: float) -> dict:
        concepts = [{"concept": c, "activation": a, "divergence": a - 0.1} for c, a in acts.items()]
        return {"index": i, "token": text, "divergence": {"top_divergences": concepts}}

    records = [
        token(0, "I", Fear=0.2),
        token(1, " was", Fear=0.7, Music=0.1),
        token(2, " so", Fear=0.9),
        token(3, " scared", Fear=0.4, Music=0.55),
    ]
    events = {e["concept"]: e for e in crossings(records, {"Fear": 0.5, "Music": 0.5})}
    assert set(events) == {"Fear", "Music"}
    assert (events["Fear"]["token_start"], events["Fear"]["token_end"], events["Fear"]["score"]) == (1, 2, 0.9)
    assert events["Fear"]["excerpt"] == "I was so scared"
    assert (events["Music"]["token_start"], events["Music"]["score"]) == (3, 0.55)
    assert crossings(records, {"Fear": 0.95}) == []


def test_reviewed_events_fall_under_a_candidate_threshold() -> None:
    from views.review import reviewed_under

    events = [
        {"score": 0.9, "review": "true_positive"},
        {"score": 0.6, "review": "true_positive"},
        {"score": 0.7, "review": "false_positive"},
        {"score": 0.55, "review": "false_positive"},
        {"score": 0.99, "review": "reviewed"},  # no verdict: not counted
    ]
    assert reviewed_under(events, 0.65) == {"tp_kept": 1, "tp_dropped": 1, "fp_kept": 1, "fp_dropped": 1}
    assert reviewed_under(events, 0.5) == {"tp_kept": 2, "tp_dropped": 0, "fp_kept": 2, "fp_dropped": 0}
