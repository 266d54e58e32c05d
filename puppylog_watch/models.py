"""Pydantic models of the notification payloads (docs/design.md), discriminated on ``type``.

Every payload carries ``"v": 1``; a payload with another version, an unknown ``type`` or a
malformed body does not validate and is skipped by the caller (logged, never fatal).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

__all__ = [
    "AlertPayload",
    "Payload",
    "PayloadError",
    "RecoveryPayload",
    "StatsPayload",
    "parse_payload",
]


class _Base(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    v: Literal[1]
    group: str


class StatsPayload(_Base):
    """One closed 10-second bucket (channel ``puppylog_stats``)."""

    type: Literal["stats"]
    bucket: datetime
    seconds: int = 10
    hits: int
    rps: float
    bytes: int
    sections: list[tuple[str, int]] = Field(default_factory=list)
    status: dict[str, int] = Field(default_factory=dict)
    error_rate: float = 0.0
    methods: list[tuple[str, int]] = Field(default_factory=list)
    unique_hosts: int = 0
    users: list[tuple[str, int]] = Field(default_factory=list)
    rejected: int = 0
    avg: float
    alert: Literal["ok", "firing"]
    threshold: float


class AlertPayload(_Base):
    """A high-traffic alert fired (channel ``puppylog_alerts``)."""

    type: Literal["alert"]
    alert_id: int
    at: datetime
    hits: int
    avg: float
    threshold: float
    window_s: int
    message: str


class RecoveryPayload(_Base):
    """A high-traffic alert recovered (channel ``puppylog_alerts``)."""

    type: Literal["recovery"]
    alert_id: int
    at: datetime
    triggered_at: datetime
    hits: int
    avg: float
    threshold: float
    window_s: int
    message: str


Payload = Annotated[StatsPayload | AlertPayload | RecoveryPayload, Field(discriminator="type")]
_ADAPTER: TypeAdapter[StatsPayload | AlertPayload | RecoveryPayload] = TypeAdapter(Payload)


class PayloadError(ValueError):
    """A payload that is not JSON, not an object, of an unknown type/version, or malformed."""


def parse_payload(raw: str | bytes | dict[str, Any]) -> tuple[Payload, dict[str, Any]]:
    """Validate one payload; return the model and the decoded JSON object.

    Raises :class:`PayloadError` with a short reason otherwise.
    """
    if isinstance(raw, dict):
        obj: Any = raw
    else:
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise PayloadError(f"not JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise PayloadError("not a JSON object")
    try:
        model = _ADAPTER.validate_python(obj)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise PayloadError(f"invalid payload ({where}: {first['msg']})") from exc
    return model, obj
