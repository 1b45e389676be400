"""The record store's tables: audit log, divergence events, threshold profiles."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import JSON, DateTime, Float, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class AuditRow(Base):
    """Who did what, when: pack loads, hot-loads, thresholds, profiles, training, steering."""

    __tablename__ = "audit"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(300), default="")
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class EventRow(Base):
    """A response in which a concept crossed its threshold, and its review."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now, index=True)
    request_id: Mapped[str] = mapped_column(String(80), index=True)
    actor: Mapped[str] = mapped_column(String(64), index=True)
    model: Mapped[str] = mapped_column(String(200))
    probe_pack: Mapped[str] = mapped_column(String(300))
    pack_checksum: Mapped[str] = mapped_column(String(80))
    concept: Mapped[str] = mapped_column(String(200), index=True)
    score: Mapped[float] = mapped_column(Float, index=True)  # the highest activation over the span
    threshold: Mapped[float] = mapped_column(Float)
    divergence: Mapped[float] = mapped_column(Float)
    token_start: Mapped[int] = mapped_column(Integer)
    token_end: Mapped[int] = mapped_column(Integer)
    excerpt: Mapped[str] = mapped_column(Text)
    review: Mapped[str | None] = mapped_column(String(20), nullable=True, index=True)
    reviewed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ProfileRow(Base):
    """A named set of threshold overrides for one probe pack, owned by the user who saved it."""

    __tablename__ = "profiles"
    __table_args__ = (UniqueConstraint("name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    owner: Mapped[str] = mapped_column(String(64), index=True)
    probe_pack: Mapped[str] = mapped_column(String(300))
    thresholds: Mapped[dict] = mapped_column(JSON, default=dict)
    saved_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
