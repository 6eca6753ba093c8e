"""All of Parley's settings in one object; every field is also ``PARLEY_<NAME>``."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from parley.sessions import keys

#: Accepted ``log_level`` values (uvicorn's names; ``trace`` is uvicorn's most verbose).
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class Settings(BaseSettings):
    """Built once at start-up (CLI flags override the environment) and passed down explicitly."""

    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore")

    # serving
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)  # > 1 needs a shared store (Redis): see _check_workers
    store: str = "memory://"  # memory:// or a Redis URL (sessions.STORE_SCHEMES)
    model: str = "echo"  # "echo" or "openai:<model>": a one-profile default
    profiles: str | None = None  # TOML file of profiles (see docs/providers.md)

    # protocol timing and limits
    heartbeat_interval_ms: int = Field(15_000, ge=100)  # app-level heartbeat; also the WS ping interval
    hello_timeout_ms: int = Field(5_000, ge=100)  # a socket that never says hello is closed (4008)
    max_frame_bytes: int = Field(64 * 1024, ge=1024)  # larger frames close the socket with 1009
    max_message_chars: int = Field(32_000, ge=1)  # a user turn longer than this is payload_too_large
    send_buffer_events: int = Field(4096, ge=16)  # events queued per connection before 4009
    send_timeout_ms: int = Field(10_000, ge=100)  # a frame write stalled this long: slow consumer, 4009
    ws_per_message_deflate: bool = False  # compression costs CPU per frame; off unless asked
    ws_impl: str = "auto"  # uvicorn WebSocket implementation: auto (websockets-sansio), websockets, wsproto
    allowed_origins: str = ""  # comma-separated origins allowed besides the server's own
    # comma-separated Host names served ("*" any, "*.example.com" subdomains); empty: loopback names
    # (and --host) with auth off, any host with auth on (server/guard.py, docs/security.md)
    allowed_hosts: str = ""
    handshake_timeout_ms: int = Field(10_000, ge=100)  # TCP accept to a complete request (handshake.py)
    max_pending_per_address: int = Field(256, ge=0)  # connections before session.ready, per peer; 0: no cap

    # generation
    event_timestamps: bool = False  # stamp response.delta with its append time (load tests measure delivery)
    coalesce_ms: float = Field(0.0, ge=0)  # extra wait before each delta flush (0: flush when idle)
    # under load, wait before a flush so a session's next tokens join its frame (fewer frames, Lua calls
    # and client wake-ups per token); "load" = text of coalesce_busy_writes sessions piled up while the
    # previous flush's write was in flight (a congested loop or a slow Redis)
    coalesce_busy_ms: float = Field(20.0, ge=0)
    coalesce_busy_writes: int = Field(100, ge=1)
    # turn starts begun per event-loop iteration; the rest of a burst waits for the next ones, so the
    # first tokens of the first turns leave before the last turns start (server/core/pacer.py); 0: off
    turn_starts_per_tick: int = Field(48, ge=0)
    lease_ms: int = Field(5_000, ge=500)  # a generation's lease; expiry means its process died
    lease_renew_ms: int = Field(1_500, ge=100)  # renew period, well under the lease
    reaper_interval_ms: int = Field(1_000, ge=100)  # how often to look for expired leases
    drain_timeout_ms: int = Field(10_000, ge=0)  # SIGTERM: how long running responses may finish

    # tool calls (docs/protocol.md "Tool calls")
    # a response waiting for tool results (or approvals) longer than this ends with tool_timeout
    tool_result_timeout_ms: int = Field(600_000, ge=100)
    tool_run_timeout_ms: int = Field(30_000, ge=100)  # one server tool call; then an is_error result

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

    # auth: a JWT in hello.token (never in the URL, never logged); see docs/security.md
    auth_jwt_secret: str | None = None  # HS256 shared secret, at least 32 bytes
    auth_jwt_public_key: str | None = None  # RS256: a PEM public key, or the path of a PEM file
    auth_jwt_audience: str | None = None  # when set, tokens must carry this `aud`
    auth_jwt_issuer: str | None = None  # when set, tokens must carry this `iss`
    auth_leeway_s: int = Field(10, ge=0, le=30)  # clock skew tolerated on exp/nbf/iat
    auth_revalidate_ms: int = Field(10_000, ge=50)  # an open connection's token is re-checked this often
    admin_token: str | None = None  # bearer token for GET /v1/feedback (>= 32 chars); unset: endpoint off
    metrics_token: str | None = None  # when set, GET /metrics needs it as a bearer token

    # per-user and per-tenant limits ("auto": on when auth is on); each number 0 = no limit
    identity_limits: Literal["auto", "on", "off"] = "auto"
    max_connections_per_user: int = Field(20, ge=0)  # open WebSockets per (tenant, user), all instances
    max_sessions_per_user: int = Field(1000, ge=0)  # new sessions per user within one session TTL
    user_messages_per_minute: int = Field(60, ge=0)
    tenant_messages_per_minute: int = Field(3_000, ge=0)
    user_tokens_per_minute: int = Field(100_000, ge=0)  # generated (output) tokens
    tenant_tokens_per_minute: int = Field(2_000_000, ge=0)
    frames_per_minute: int = Field(600, ge=0)  # per connection, every frame after hello (always on)
    abuse_strikes: int = Field(10, ge=1)  # rate_limited answers within a minute before close 4029

    # logging: "auto" is text for a person at a terminal (stderr is a TTY), JSON lines otherwise
    log_format: Literal["auto", "json", "text"] = "auto"
    log_level: str = "info"  # one of LOG_LEVELS

    # webhooks of async jobs (server/webhooks.py, docs/security.md "Webhooks"): signed as Standard
    # Webhooks says, retried with backoff, sent only to the hosts listed here
    webhook_secret: str | None = None  # "whsec_" + base64 of 24-64 random bytes; unset: webhooks off
    webhook_allowed_hosts: str = ""  # comma-separated names, *.suffixes, IPs and CIDR networks
    webhook_max_attempts: int = Field(8, ge=1, le=30)  # at-least-once: same webhook-id on every try
    webhook_timeout_ms: int = Field(10_000, ge=100)  # one attempt, name resolution included
    webhook_backoff_base_ms: int = Field(1_000, ge=1)  # wait before the 2nd attempt; doubles after
    webhook_backoff_max_ms: int = Field(600_000, ge=1)  # cap of one wait (before jitter)
    webhook_poll_ms: int = Field(500, ge=10)  # how often each instance looks for due deliveries

    # the HTTP patterns (server/transports/http.py, docs/http.md): a synchronous call waits this long
    # for its turn, then answers 202 with the job's Location instead of holding the request
    sync_timeout_ms: int = Field(60_000, ge=100)

    @field_validator(
        "auth_jwt_secret",
        "auth_jwt_public_key",
        "auth_jwt_audience",
        "auth_jwt_issuer",
        "admin_token",
        "metrics_token",
    )
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        """Only the scheme is checked here (and echoed: the rest of a URL may hold a password)."""
        from parley.sessions import UnsupportedStoreUrl, parse_store_url

        try:
            parse_store_url(value)
        except UnsupportedStoreUrl as exc:
            raise ValueError(f"{exc.what}: {exc.fix}") from None
        return value

    @model_validator(mode="after")
    def _check_model(self) -> Settings:
        """``--model`` is only read without ``--profiles``; a bad one stops start-up, not the first turn."""
        if self.profiles is None:
            from .profiles import default_profile

            try:
                default_profile(self.model)
            except ValueError:
                raise ValueError(
                    f"--model {self.model!r} is not a model: use echo or openai:MODEL "
                    "(e.g. openai:gpt-4o-mini), or --profiles FILE"
                ) from None
        return self

    @model_validator(mode="after")
    def _check_workers(self) -> Settings:
        """Each worker is a separate process: with a memory store a session exists in one of them only,
        so resumes that land on another worker fail (session_not_found)."""
        from parley.sessions import parse_store_url

        if self.workers > 1 and not parse_store_url(self.store).shared:
            raise ValueError(
                f"--workers {self.workers} needs a shared store, but the store is memory:// (one per "
                "process; resumes would fail): pass --store redis://HOST:6379/0, or run one worker"
            )
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        """Refuse weak or ambiguous auth configuration at start-up, never at the first request."""
        if self.auth_jwt_secret is not None and self.auth_jwt_public_key is not None:
            raise ValueError(
                "PARLEY_AUTH_JWT_SECRET and PARLEY_AUTH_JWT_PUBLIC_KEY are both set: "
                "set one (HS256 or RS256), not both"
            )
        if self.auth_jwt_secret is not None and len(self.auth_jwt_secret.encode()) < 32:
            raise ValueError(
                "PARLEY_AUTH_JWT_SECRET is too short for HS256: use at least 32 bytes, e.g. the output of "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if self.admin_token is not None and len(self.admin_token) < 32:
            raise ValueError("PARLEY_ADMIN_TOKEN is too short: use at least 32 characters")
        if self.metrics_token is not None and len(self.metrics_token) < 16:
            raise ValueError("PARLEY_METRICS_TOKEN is too short: use at least 16 characters")
        return self

    @property
    def auth_enabled(self) -> bool:
        return bool(self.auth_jwt_secret or self.auth_jwt_public_key)

    @property
    def identity_limits_enabled(self) -> bool:
        """Per-user/per-tenant limits need an identity: by default only when tokens prove it."""
        if self.identity_limits == "auto":
            return self.auth_enabled
        return self.identity_limits == "on"

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
