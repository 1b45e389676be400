"""Session stores keep each session's steerings apart, in order, and refuse unknown concepts: the
in-process default and the Redis store (a real `redis-server`, the `redis_url` fixture) behave the same."""

from __future__ import annotations

import pytest

from hatcat.config import ConfigError, Settings
from hatcat.sessions import RedisSessionStore, SessionStore, open_session_store
from hatcat.steering import Steering, SteeringRegistry, UnknownConcept
from tests.support import free_port


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.slow)])
def store(request: pytest.FixtureRequest) -> SessionStore:
    if request.param == "memory":
        return open_session_store(None)
    store = open_session_store(request.getfixturevalue("redis_url"))
    store.redis.flushdb()
    return store


def test_sessions_are_kept_apart_and_listed_in_the_order_added(store: SessionStore) -> None:
    store.add("a", Steering("Music", 0.3))
    store.add("a", Steering("Fear", -0.2, layer=2))
    store.add("b", Steering("Anger", 0.1))
    assert store.list("a") == [Steering("Music", 0.3), Steering("Fear", -0.2, layer=2)]
    assert store.list("b") == [Steering("Anger", 0.1)]
    assert store.list("nobody") == []


def test_adding_a_steered_concept_again_replaces_it_in_place(store: SessionStore) -> None:
    store.add("a", Steering("Music", 0.3))
    store.add("a", Steering("Fear", 0.1))
    store.add("a", Steering("Music", -0.5, layer=1))
    assert store.list("a") == [Steering("Music", -0.5, layer=1), Steering("Fear", 0.1)]


def test_update_changes_only_what_is_given(store: SessionStore) -> None:
    store.add("a", Steering("Music", 0.3, layer=2))
    assert store.update("a", "Music", strength=0.4) == Steering("Music", 0.4, layer=2)
    assert store.update("a", "Music", layer=1) == Steering("Music", 0.4, layer=1)
    assert store.list("a") == [Steering("Music", 0.4, layer=1)]


def test_update_and_remove_refuse_a_concept_the_session_does_not_steer(store: SessionStore) -> None:
    store.add("a", Steering("Music", 0.3))
    with pytest.raises(UnknownConcept):
        store.update("a", "Fear", strength=0.1)
    with pytest.raises(UnknownConcept):
        store.remove("b", "Music")
    assert store.list("a") == [Steering("Music", 0.3)]


def test_remove_and_clear(store: SessionStore) -> None:
    store.add("a", Steering("Music", 0.3))
    store.add("a", Steering("Fear", 0.1))
    store.add("b", Steering("Anger", 0.1))
    assert store.remove("a", "Music") == Steering("Music", 0.3)
    assert store.list("a") == [Steering("Fear", 0.1)]
    assert store.clear("a") == 1
    assert store.clear("a") == 0
    assert store.list("b") == [Steering("Anger", 0.1)]


@pytest.mark.slow
def test_two_redis_stores_on_one_server_see_the_same_sessions(redis_url: str) -> None:
    """What two replicas see: a steering added through one store is listed, changed and removed through the other."""
    first, second = RedisSessionStore(redis_url), RedisSessionStore(redis_url)
    first.redis.flushdb()
    first.add("s", Steering("Music", 0.3))
    assert second.list("s") == [Steering("Music", 0.3)]
    second.update("s", "Music", strength=-0.1)
    assert first.list("s") == [Steering("Music", -0.1)]
    first.remove("s", "Music")
    assert second.list("s") == []


def test_the_default_store_is_in_process() -> None:
    assert isinstance(open_session_store(Settings.from_env({}).session_store), SteeringRegistry)


@pytest.mark.parametrize("value", ["localhost:6379", "http://redis:6379", "redis://"])
def test_a_session_store_that_is_not_a_redis_url_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="HATCAT_SESSION_STORE"):
        Settings.from_env({"HATCAT_SESSION_STORE": value})


@pytest.mark.slow
def test_an_unreachable_redis_is_refused_at_start() -> None:
    pytest.importorskip("redis", reason="the redis client: pip install -r requirements-scale.txt (.ci/run does)")
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        open_session_store(f"redis://127.0.0.1:{free_port()}/0")
