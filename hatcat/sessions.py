"""Session stores: where each session's steerings live, outside the model.

The engine takes a request's steerings as an argument (`Engine.generate(prompt, settings,
steerings)`), so the process that runs the model keeps no session state; the routes read the
session's steerings from a store and pass them along. Two stores, one interface (`SessionStore`):

- `SteeringRegistry` (in `hatcat.steering`), the default: a dict in this process. Right for one
  server process; with several replicas each would see its own sessions.
- `RedisSessionStore` (`HATCAT_SESSION_STORE=redis://host:6379/0`): one Redis hash per session
  (`hatcat:steering:<session>`, concept -> JSON), shared by every replica and the workbench, so a
  session's requests see the same steering wherever they land.

`open_session_store(url)` picks one.
"""

from __future__ import annotations

import json
from typing import Protocol

from hatcat.config import ConfigError
from hatcat.steering import Steering, SteeringRegistry, UnknownConcept

KEY_PREFIX = "hatcat:steering:"


class SessionStore(Protocol):
    """Per-session steerings: add, update, remove, list (in the order added), clear."""

    def add(self, session: str, steering: Steering) -> Steering: ...

    def update(
        self, session: str, concept: str, strength: float | None = None, layer: int | None = None
    ) -> Steering: ...

    def remove(self, session: str, concept: str) -> Steering: ...

    def list(self, session: str) -> list[Steering]: ...

    def clear(self, session: str) -> int: ...


class RedisSessionStore:
    """Steerings in Redis: each session a hash of concept -> {"strength", "layer", "seq"}; `seq`
    (a shared counter) keeps the order in which concepts were first added."""

    def __init__(self, url: str, prefix: str = KEY_PREFIX) -> None:
        import redis  # requirements-scale.txt: only a deployment with HATCAT_SESSION_STORE needs it

        self.redis = redis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=5)
        self.prefix = prefix
        try:
            self.redis.ping()
        except redis.RedisError as err:
            raise ConfigError(f"HATCAT_SESSION_STORE: cannot reach Redis at {url}: {err}") from None

    def _key(self, session: str) -> str:
        return self.prefix + session

    def add(self, session: str, steering: Steering) -> Steering:
        key = self._key(session)
        current = self.redis.hget(key, steering.concept)
        seq = json.loads(current)["seq"] if current else self.redis.incr(self.prefix + "seq")
        self.redis.hset(key, steering.concept, _encode(steering, seq))
        return steering

    def update(self, session: str, concept: str, strength: float | None = None, layer: int | None = None) -> Steering:
        key = self._key(session)
        changed: Steering | None = None

        def change(pipe) -> None:  # runs again if another client wrote the hash meanwhile (WATCH)
            nonlocal changed
            raw = pipe.hget(key, concept)
            if raw is None:
                raise UnknownConcept(concept)
            stored = json.loads(raw)
            changed = Steering(
                concept,
                stored["strength"] if strength is None else strength,
                stored["layer"] if layer is None else layer,
            )
            pipe.multi()
            pipe.hset(key, concept, _encode(changed, stored["seq"]))

        self.redis.transaction(change, key)
        return changed

    def remove(self, session: str, concept: str) -> Steering:
        key = self._key(session)
        removed: Steering | None = None

        def pop(pipe) -> None:
            nonlocal removed
            raw = pipe.hget(key, concept)
            if raw is None:
                raise UnknownConcept(concept)
            removed = _decode(concept, raw)
            pipe.multi()
            pipe.hdel(key, concept)

        self.redis.transaction(pop, key)
        return removed

    def list(self, session: str) -> list[Steering]:
        stored = self.redis.hgetall(self._key(session))
        order = sorted(stored, key=lambda concept: json.loads(stored[concept])["seq"])
        return [_decode(concept, stored[concept]) for concept in order]

    def clear(self, session: str) -> int:
        key = self._key(session)
        with self.redis.pipeline() as pipe:
            count, _ = pipe.hlen(key).delete(key).execute()
        return count


def _encode(steering: Steering, seq: int) -> str:
    return json.dumps({"strength": steering.strength, "layer": steering.layer, "seq": seq})


def _decode(concept: str, raw: str) -> Steering:
    stored = json.loads(raw)
    return Steering(concept, stored["strength"], stored["layer"])


def open_session_store(url: str | None) -> SessionStore:
    """The in-process store for None, else the Redis store at `url` (`redis://`, `rediss://`, `unix://`)."""
    return SteeringRegistry() if url is None else RedisSessionStore(url)
