"""The record store: audit log, divergence events and threshold profiles, kept across restarts.

SQLite under the cache dir by default (`HATCAT_DB`), Postgres (or any SQLAlchemy URL) when
one is given. The schema is created and upgraded by Alembic migrations (`migrations/`) when
the store opens. A store that cannot be reached at start-up is `StoreUnavailable` (one line,
exit 2); a write that fails later is `StoreWriteError`, which callers turn into a clear error
on that write path while everything else (generation included) goes on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from hatcat.errors import HatCatError
from hatcat.store.models import AuditRow, EventRow, ProfileRow

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
REVIEWS = ("reviewed", "true_positive", "false_positive")


class StoreUnavailable(HatCatError):
    """The store cannot be opened or migrated; the message is one line."""

    status = 503
    code = "store_unavailable"


class StoreWriteError(HatCatError):
    """A write to the store failed; the message says where and why."""

    status = 503
    code = "store_unavailable"


class ProfileOwned(HatCatError):
    """Another user owns the threshold profile of that name."""

    status = 403
    code = "forbidden"


def _one_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _row(row: Any) -> dict[str, Any]:
    out = {c.name: getattr(row, c.name) for c in row.__table__.columns}
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in out.items()}


class Store:
    """Typed reads and writes over one database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.where = url.split("@")[-1] if "@" in url else url  # no password in messages
        # SQLite: a connection per use, so a file made read-only (or replaced) is seen at once
        pool = {"poolclass": NullPool} if url.startswith("sqlite") else {"pool_pre_ping": True}
        try:
            if url.startswith("sqlite:///"):
                Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(url, **pool)
            with self.engine.begin() as connection:
                from alembic import command  # here: a second of imports only when a store opens
                from alembic.config import Config

                config = Config()
                config.set_main_option("script_location", str(MIGRATIONS))
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except (SQLAlchemyError, OSError, ImportError) as err:  # ImportError: no driver for the URL's database
            raise StoreUnavailable(f"the record store {self.where} cannot be opened: {_one_line(err)}") from None

    @contextmanager
    def _write(self, what: str) -> Iterator[Session]:
        try:
            with Session(self.engine) as session, session.begin():
                yield session
        except SQLAlchemyError as err:
            raise StoreWriteError(f"the record store {self.where} cannot record {what}: {_one_line(err)}") from None

    def _read(self, statement: Any) -> list[dict[str, Any]]:
        with Session(self.engine) as session:
            return [_row(r) for r in session.scalars(statement)]

    # ---- audit ---------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str = "", **detail: Any) -> None:
        with self._write(f"the audit entry {action}") as session:
            session.add(AuditRow(actor=actor, action=action, target=target[:300], detail=detail))

    def audit_log(self, actor: str | None = None, action: str | None = None, limit: int = 100) -> list[dict]:
        query = select(AuditRow).order_by(AuditRow.id.desc()).limit(limit)
        if actor:
            query = query.where(AuditRow.actor == actor)
        if action:
            query = query.where(AuditRow.action == action)
        return self._read(query)

    # ---- divergence events -------------------------------------------------------------------

    def add_events(self, events: list[dict[str, Any]]) -> None:
        if events:
            with self._write(f"{len(events)} divergence event(s)") as session:
                session.add_all(EventRow(**e) for e in events)

    def events(
        self,
        concept: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        min_score: float | None = None,
        review: str | None = None,
        limit: int = 200,
    ) -> list[dict]:
        """Newest first; `review` "none" selects events nobody reviewed yet."""
        query = select(EventRow).order_by(EventRow.id.desc()).limit(limit)
        for column, value in ((EventRow.concept, concept), (EventRow.actor, actor)):
            if value:
                query = query.where(column == value)
        if since is not None:
            query = query.where(EventRow.at >= since)
        if until is not None:
            query = query.where(EventRow.at <= until)
        if min_score is not None:
            query = query.where(EventRow.score >= min_score)
        if review == "none":
            query = query.where(EventRow.review.is_(None))
        elif review:
            query = query.where(EventRow.review == review)
        return self._read(query)

    def mark(self, event_ids: list[int], review: str, by: str) -> int:
        """Mark events reviewed / true_positive / false_positive; returns how many were found."""
        if review not in REVIEWS:
            raise ValueError(f"review must be one of {', '.join(REVIEWS)}, got {review!r}")
        with self._write(f"the review of {len(event_ids)} event(s)") as session:
            rows = session.scalars(select(EventRow).where(EventRow.id.in_(event_ids))).all()
            for row in rows:
                row.review, row.reviewed_by, row.reviewed_at = review, by, datetime.now(UTC)
            session.add(AuditRow(actor=by, action="events_reviewed", target=review, detail={"events": event_ids}))
            return len(rows)

    # ---- threshold profiles ----------------------------------------------------------------------

    def save_profile(self, name: str, owner: str, probe_pack: str, thresholds: dict[str, float], admin: bool) -> None:
        """Create or replace `name`; only its owner (or an admin) may replace it. Audited."""
        with self._write(f"the threshold profile {name}") as session:
            row = session.scalars(select(ProfileRow).where(ProfileRow.name == name)).first()
            if row is not None and row.owner != owner and not admin:
                raise ProfileOwned(f"threshold profile {name} belongs to {row.owner}")
            if row is None:
                row = ProfileRow(name=name, owner=owner)
                session.add(row)
            row.probe_pack, row.thresholds, row.saved_at = probe_pack, dict(thresholds), datetime.now(UTC)
            session.add(
                AuditRow(actor=owner, action="profile_saved", target=name, detail={"thresholds": len(thresholds)})
            )

    def profile(self, name: str) -> dict | None:
        found = self._read(select(ProfileRow).where(ProfileRow.name == name))
        return found[0] if found else None

    def profiles(self) -> list[dict]:
        return self._read(select(ProfileRow).order_by(ProfileRow.name))
