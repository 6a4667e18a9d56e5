"""Settings of the services and the CLI: flags and ``MQCTL_*`` environment variables.

Every field can be set by the environment variable ``MQCTL_<FIELD>`` (for example
``MQCTL_BROKER_URL``); the CLI's flags override the environment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


class Settings(BaseSettings):
    """What Service A, Service B and the CLI are configured with."""

    model_config = SettingsConfigDict(env_prefix="MQCTL_", extra="ignore", frozen=True)

    broker_url: str = Field(
        DEFAULT_BROKER_URL,
        description=(
            "Broker URL: memory://, redis://host:port/db, rediss://..., redis+cluster://host:port,... or "
            "nats://host:port,..."
        ),
    )
    topic: str = Field("messages", description="Topic used when a request names none.")
    group: str = Field("default", description="Consumer group used when a WebSocket client names none.")
    max_backlog: int | None = Field(100_000, description="Refuse publishes beyond this many unacknowledged messages.")
    max_message_bytes: int = Field(256 * 1024, description="Largest encoded message accepted.")
    max_body_bytes: int = Field(4 * 1024 * 1024, description="Largest HTTP request body accepted (batch included).")
    retention: int = Field(10_000, description="Acknowledged messages kept per topic for resume.")
    poll_interval_s: float = Field(2.0, gt=0, description="Service B's poll cycle: longest blocking read, seconds.")
    ack_timeout_s: float = Field(30.0, gt=0, description="Redeliver a message not acknowledged within this, seconds.")
    max_attempts: int = Field(5, ge=1, description="Deliveries before a message goes to the dead letters.")
    publish_timeout_s: float = Field(5.0, gt=0, description="Longest a publish may take before a 503.")
    replicas: int = Field(
        0,
        ge=0,
        description=(
            "Service A answers 202 only once this many replicas have the message: Redis WAIT; on nats:// each "
            "stream keeps replicas + 1 copies and acks on a quorum. 0: off."
        ),
    )
    replica_timeout_s: float = Field(1.0, gt=0, description="Longest wait for those replicas before a 503, seconds.")
    ws_send_buffer: int = Field(1000, ge=1, description="Frames queued for one WebSocket client before it is closed.")
    token: str | None = Field(None, description="Bearer token required by the services (unset: no auth).")
    token_file: Path | None = Field(None, description="A file holding the token (for secrets mounted as files).")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines for people (text) or one JSON object a line (json)."
    )

    @model_validator(mode="before")
    @classmethod
    def _read_token_file(cls, data: Any) -> Any:
        """Read the token from ``token_file`` when no token is given directly."""
        if isinstance(data, dict) and data.get("token_file") and not data.get("token"):
            path = Path(data["token_file"])
            try:
                token = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"Cannot read the token file {str(path)!r}: {exc.strerror}.") from exc
            if not token:
                raise ValueError(f"The token file {str(path)!r} is empty.")
            data = {**data, "token": token}
        return data
