"""All of Parley's settings in one object; every field is also ``PARLEY_<NAME>``."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from sessions import keys


class Settings(BaseSettings):
    """Built once at start-up (CLI flags override the environment) and passed down explicitly."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore")

    # serving
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    store: str = "memory://"
    model: str = "echo"  # "echo" or "openai:<model>": a one-profile default
    profiles: str | None = None  # TOML file of profiles (see docs/providers.md)

    # protocol timing and limits
    heartbeat_interval_ms: int = Field(15_000, ge=100)  # app-level heartbeat; also the WS ping interval
    hello_timeout_ms: int = Field(5_000, ge=100)  # a socket that never says hello is closed (4008)
    max_frame_bytes: int = Field(64 * 1024, ge=1024)  # larger frames close the socket with 1009
    max_message_chars: int = Field(32_000, ge=1)  # a user turn longer than this is payload_too_large
    send_buffer_events: int = Field(4096, ge=16)  # events queued per connection before 4009
    ws_per_message_deflate: bool = False  # compression costs CPU per frame; off unless asked
    allowed_origins: str = ""  # comma-separated origins allowed besides the server's own

    # generation
    coalesce_ms: float = Field(0.0, ge=0)  # extra wait before each delta flush (0: flush when idle)
    lease_ms: int = Field(5_000, ge=500)  # a generation's lease; expiry means its process died
    lease_renew_ms: int = Field(1_500, ge=100)  # renew period, well under the lease
    reaper_interval_ms: int = Field(1_000, ge=100)  # how often to look for expired leases
    drain_timeout_ms: int = Field(10_000, ge=0)  # SIGTERM: how long running responses may finish

    # store retention
    session_ttl_ms: int = Field(keys.SESSION_TTL_MS, ge=1000)
    log_max_len: int = Field(keys.LOG_MAX_LEN, ge=10)
    history_max_turns: int = Field(keys.HISTORY_MAX_TURNS, ge=2)

    # echo model
    echo_ttft_ms: int = Field(0, ge=0)
    echo_tokens_per_second: float = Field(40.0, ge=0)  # 0 = unthrottled
    echo_reply_tokens: int = Field(60, ge=1)

    # openai provider (OPENAI_BASE_URL / OPENAI_API_KEY are the openai package's own variables)
    openai_connect_timeout_s: float = Field(5.0, gt=0)
    openai_first_token_timeout_s: float = Field(30.0, gt=0)
    openai_between_token_timeout_s: float = Field(30.0, gt=0)
    openai_retry_attempts: int = Field(3, ge=1)  # tries before the first token (1 = no retry)

    # auth
    auth_jwt_secret: str | None = None
    auth_jwt_public_key: str | None = None

    @property
    def allowed_origin_list(self) -> list[str]:
        return [o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()]

    def store_limits(self) -> dict[str, int]:
        return {
            "log_max_len": self.log_max_len,
            "session_ttl_ms": self.session_ttl_ms,
            "history_max_turns": self.history_max_turns,
        }


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
