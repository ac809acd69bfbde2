"""Typed settings for every stage.

Sources, highest priority first: explicit keyword arguments, environment
variables ``SOUNDWATCH_<SECTION>__<FIELD>`` (e.g. ``SOUNDWATCH_KAFKA__BOOTSTRAP_SERVERS``),
a TOML file (``--config FILE``, ``SOUNDWATCH_CONFIG`` or ``./soundwatch.toml``),
then the defaults below, which point at the local stack on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from soundwatch.errors import ConfigError
from soundwatch.params import FeatureParams
from soundwatch.redaction import register_secret

CONFIG_ENV = "SOUNDWATCH_CONFIG"
DEFAULT_CONFIG_FILE = Path("soundwatch.toml")
MIN_SIGNING_KEY_CHARS = 16


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w)", re.IGNORECASE)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(value: Any, unit_s: float = 1.0) -> Any:
    """A duration as a number of ``unit_s``: numbers pass through; ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``,
    ``"500ms"``, ``"1h30m"`` are converted. Anything else is left for pydantic to refuse."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    compact = re.sub(r"\s+", "", text)
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts).lower() != compact.lower():
        raise ValueError(
            f"{value!r} is not a duration: give seconds (90) or numbers with units ms, s, m, h, d, w (90s, 15m, 1d)"
        )
    return sum(float(n) * _UNIT_S[u.lower()] for n, u in parts) / unit_s


Seconds = Annotated[float, BeforeValidator(parse_duration)]
"""A duration setting in seconds; also accepts ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``."""
Millis = Annotated[int, BeforeValidator(lambda v: parse_duration(v, 0.001))]
"""A duration setting in milliseconds; also accepts ``"500ms"``, ``"2s"``."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#]*)@(?P<rest>.*)$", re.DOTALL)


def _credentials_out_of_url(data: Any, section: str) -> Any:
    """Move ``user:password@`` out of ``data["url"]`` into the ``username``/``password`` fields.

    A URL is printed and logged as an address; credentials in it would travel with it. Moved, the
    password is a :class:`SecretStr` like every other secret (masked by ``config show``, redacted
    in logs) and the URL is safe to show. A password given both ways must agree. The error never
    repeats a value (pydantic errors would otherwise show the input).
    """
    if not isinstance(data, dict) or not isinstance(data.get("url"), str):
        return data
    match = _USERINFO.match(data["url"])
    if match is None:
        return data
    user, _, password = match["userinfo"].partition(":")
    out = {**data, "url": match["scheme"] + match["rest"]}
    if password:
        given = out.get("password")
        given = given.get_secret_value() if isinstance(given, SecretStr) else given
        if given and given != unquote(password):
            raise ValueError(
                f"{section}.url holds a password and {section}.password another one: keep only {section}.password"
            )
        out["password"] = SecretStr(unquote(password))
    if user:
        if out.get("username") and out["username"] != unquote(user):
            raise ValueError(
                f"{section}.url names a user and {section}.username another one: keep only {section}.username"
            )
        out["username"] = unquote(user)
    return out


TOPIC_FIELDS = ("audio_raw", "features", "alerts", "scores", "deadletter")
_TOPIC_PREFIX = r"^[A-Za-z0-9._\-]*$"


class TopicSettings(_Section):
    """Topic names (``kafka.topic_prefix`` is put in front of each) and the configs soundwatch creates them with
    (see :func:`soundwatch.kafka.topic_configs` for the sizing arithmetic)."""

    audio_raw: str = "audio.raw"
    features: str = "features.logmel"
    alerts: str = "alerts"
    scores: str = "scores"
    deadletter: str = "deadletter"
    partitions: int = Field(4, ge=1, description="partitions when soundwatch creates a topic")
    replication_factor: int = Field(1, ge=1)
    machines: int = Field(100, ge=1, description="machines sending audio: sizes audio.raw's retention.bytes")
    audio_raw_retention_s: Seconds = Field(
        86400.0, gt=0, description="how long audio.raw keeps audio (consumer outages, first-model bootstrap)"
    )
    features_retention_s: Seconds = Field(86400.0, gt=0)
    scores_retention_s: Seconds = Field(3 * 86400.0, gt=0)
    alerts_retention_s: Seconds = Field(90 * 86400.0, gt=0, description="alert events are few; a CMMS may replay")
    deadletter_retention_s: Seconds = Field(14 * 86400.0, gt=0, description="time to inspect and replay")


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    topic_prefix: str = Field(
        "",
        pattern=_TOPIC_PREFIX,
        description="put in front of every topic name (and the feature workers' Faust app id, which names "
        "their changelog topic), e.g. 'plant1.' on a shared cluster",
    )
    session_timeout_s: Seconds = Field(6.0, gt=0, description="consumer-group session timeout (Tansu joins take ~half)")
    heartbeat_interval_s: Seconds = Field(1.0, gt=0)
    topics: TopicSettings = TopicSettings()

    @model_validator(mode="before")
    @classmethod
    def _prefix_topic_names(cls, data: Any) -> Any:
        """Put ``topic_prefix`` in front of every topic name that does not start with it yet (idempotent:
        settings passed on as environment variables, names already prefixed, keep one prefix)."""
        if not isinstance(data, dict) or not data.get("topic_prefix"):
            return data
        prefix = str(data["topic_prefix"])
        topics = data.get("topics", {})
        topics = dict(topics.model_dump() if isinstance(topics, TopicSettings) else topics)
        for name in TOPIC_FIELDS:
            value = str(topics.get(name, TopicSettings.model_fields[name].default))
            topics[name] = value if value.startswith(prefix) else prefix + value
        return {**data, "topics": topics}

    def prefixed(self, name: str) -> str:
        """``name`` with ``topic_prefix`` in front (once)."""
        return name if name.startswith(self.topic_prefix) else self.topic_prefix + name

    def client_kwargs(self) -> dict[str, Any]:
        """Connection/security keyword arguments shared by kafka-python producers, consumers and admins."""
        kw: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        for key, value in (
            ("ssl_cafile", self.ssl_cafile),
            ("ssl_certfile", self.ssl_certfile),
            ("ssl_keyfile", self.ssl_keyfile),
        ):
            if value is not None:
                kw[key] = str(value)
        return kw


class RedisSettings(_Section):
    url: str = Field("redis://127.0.0.1:6390/0", description="credentials in it move to username/password")
    username: str | None = Field(None, description="Redis 6+ ACL user")
    password: SecretStr | None = None
    ssl_ca_certs: Path | None = None
    key_prefix: str = "soundwatch"

    @model_validator(mode="before")
    @classmethod
    def move_url_credentials(cls, data: Any) -> Any:
        return _credentials_out_of_url(data, "redis")

    def client_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.username:
            kw["username"] = self.username
        if self.password is not None:
            kw["password"] = self.password.get_secret_value()
        if self.ssl_ca_certs is not None:
            kw["ssl_ca_certs"] = str(self.ssl_ca_certs)
        return kw


class InfluxSettings(_Section):
    api: Literal["v1", "v2"] = Field("v1", description="v1 = InfluxDB 1.x API (Basic auth); v2 = 2.x/3.x (Token)")
    url: str = Field("http://127.0.0.1:8086", description="credentials in it move to username/password")
    # v1
    database: str = "soundwatch"
    retention_policy: str = ""
    username: str | None = None
    password: SecretStr | None = None
    # v2 / v3
    token: SecretStr | None = None
    org: str = "soundwatch"
    bucket: str = "soundwatch"
    # writer behaviour
    batch_size: int = Field(500, ge=1)
    flush_interval_ms: Millis = Field(
        200, ge=1, description="the scoring worker writes once batch_size points wait or the oldest waited this long"
    )
    max_buffer_points: int = Field(1_000_000, ge=1, description="points held in memory during an outage")
    timeout_s: Seconds = Field(10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def move_url_credentials(cls, data: Any) -> Any:
        return _credentials_out_of_url(data, "influx")


class GrafanaSettings(_Section):
    url: str = "http://127.0.0.1:3000"
    public_url: str | None = Field(
        None, description="Grafana URL people open (alert links); default: url, the one push talks to"
    )
    token: SecretStr | None = None
    datasource_uid: str = "soundwatch-influx"
    folder: str = "soundwatch"
    nodata_after: str = Field("5m", description="a machine silent this long raises a no-data alert")
    webhook_url: SecretStr | None = Field(None, description="its URL usually embeds a token: a secret")
    email_addresses: list[str] = []


class IngestSettings(_Section):
    gateway_id: str = "gw-local"
    chunk_seconds: Seconds = Field(1.0, gt=0, le=60)
    spool_dir: Path = Path("var/spool")
    spool_max_bytes: int = Field(512 * 1024 * 1024, ge=1024)
    state_dir: Path = Path("var/gateway")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4", description="lz4: cheap on CPU; gzip costs ~3x the gateway throughput for ~5-25% smaller PCM"
    )


class ScoringSettings(_Section):
    group_id: str = "soundwatch-scoring"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_batch: int = Field(256, ge=1)
    max_wait_ms: Millis = Field(50, ge=0)
    median_k: int = Field(5, ge=1, description="median filter length in windows (odd)")
    alert_after: int = Field(3, ge=1, description="consecutive anomalous windows before alerting")
    resolve_after: int = Field(5, ge=1, description="consecutive normal windows before resolving")
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9464, ge=0, le=65535)
    status_interval_s: Seconds = Field(10.0, gt=0, description="how often each known machine's status is written")
    stale_after_s: Seconds = Field(60.0, gt=0, description="a machine without new audio this long is stale")
    stall_after_s: Seconds = Field(
        120.0, gt=0, description="/healthz turns 503 when input waits and no record was handled for this long"
    )
    forget_after_s: Seconds = Field(
        7 * 86400.0, gt=0, description="a machine silent this long is dropped from the known machines (decommissioned)"
    )


class FeatureStreamSettings(_Section):
    app_id: str = "soundwatch-features"
    workers_web_host: str = Field("127.0.0.1", description="address of the worker's web server (0.0.0.0 in a pod)")
    workers_web_port: int = Field(6066, ge=0, le=65535)
    stall_after_s: Seconds = Field(
        120.0, gt=0, description="/healthz turns 503 when input waits and no record was handled for this long"
    )
    data_dir: Path = Path("var/faust")
    batch_max_records: int = Field(
        500,
        ge=1,
        description="audio.raw records a feature worker handles per batch (one ack wait and one state record per "
        "machine per batch); 1: one at a time (3x fewer machines per core, see the README's capacity section)",
    )
    batch_max_wait_ms: Millis = Field(
        20, ge=1, description="how long a feature worker waits to fill a batch (latency added at low load)"
    )


class ArchiveSettings(_Section):
    """The raw-audio archive retraining reads (``soundwatch archive run``)."""

    root: Path = Path("var/archive")
    group_id: str = "soundwatch-archive"
    segment_seconds: Seconds = Field(60.0, gt=0, description="audio seconds per FLAC segment")
    idle_flush_s: Seconds = Field(10.0, gt=0, description="flush a machine's open segment after this much silence")
    max_age_s: Seconds = Field(30 * 86400.0, gt=0, description="delete segments whose audio ended longer ago")
    max_bytes: int = Field(20 * 1024**3, ge=1, description="delete the oldest segments above this total size")


class GateSettings(_Section):
    """Tolerances of the retraining promotion gate (absolute differences)."""

    far_tolerance: float = Field(0.02, ge=0, description="candidate FAR may exceed the current model's by this")
    auc_tolerance: float = Field(0.02, ge=0, description="candidate AUC may be lower by this")
    pauc_tolerance: float = Field(0.03, ge=0, description="candidate pAUC may be lower by this")
    far_target: float | None = Field(
        None, ge=0, le=1, description="if set, the candidate FAR on confirmed audio must also be <= this"
    )


EncoderUpdate = Literal["bank", "head", "full"]  # how retraining updates an encoder method's model


class RetrainSettings(_Section):
    """Retraining from confirmed-normal audio (``soundwatch retrain``)."""

    data_root: Path | None = Field(
        None,
        description="original training data (DCASE layout) for replay, the "
        "earlier validation set and labelled test clips; default: the model's data_root",
    )
    encoder_update: EncoderUpdate = Field(
        "bank",
        description="encoder methods (clp, ...): bank = keep the weights, add the confirmed audio to the kNN "
        "bank (cannot forget); head = fine-tune projection + ID head; full = fine-tune everything",
    )
    epochs: int = Field(
        6,
        ge=0,
        description="fine-tuning epochs for ae and for encoder_update head/full; 0 = keep the weights, only "
        "rebuild the kNN bank and thresholds",
    )
    lr: float = Field(2e-4, gt=0, description="fine-tuning learning rate (lower than training from scratch)")
    batch_size: int = Field(64, ge=2)
    replay_ratio: float = Field(1.0, ge=0, description="replayed earlier windows per new window")
    replay_max_windows: int = Field(4000, ge=0)
    block_seconds: Seconds = Field(10.0, gt=0, description="confirmed audio is split into blocks of this length")
    calib_fraction: float = Field(0.2, ge=0, lt=0.5)
    gate_fraction: float = Field(0.2, ge=0, lt=0.5)
    min_confirmed_seconds: Seconds = Field(30.0, ge=0, description="skip a round with less new confirmed audio")
    holdout_fraction: float = Field(0.15, gt=0, lt=1, description="the original training's held-out fraction")
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    gate: GateSettings = GateSettings()


class ServicesSettings(_Section):
    state_dir: Path = Path("var/services")
    kafka_port: int = 9092
    redis_port: int = 6390
    influx_port: int = 8086


class Settings(BaseSettings):
    """All soundwatch settings. Read with :func:`load_settings`."""

    model_config = SettingsConfigDict(env_prefix="SOUNDWATCH_", env_nested_delimiter="__", extra="forbid", frozen=True)

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    influx: InfluxSettings = InfluxSettings()
    grafana: GrafanaSettings = GrafanaSettings()
    ingest: IngestSettings = IngestSettings()
    features: FeatureParams = FeatureParams()
    stream: FeatureStreamSettings = FeatureStreamSettings()
    scoring: ScoringSettings = ScoringSettings()
    services: ServicesSettings = ServicesSettings()
    archive: ArchiveSettings = ArchiveSettings()
    retrain: RetrainSettings = RetrainSettings()
    registry_root: Path = Path("var/registry")
    registry_signing_key: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key that signs model artifacts; when set, unsigned or mis-signed artifacts are "
        "refused. `soundwatch models sign` signs an existing registry (and rotates the key)",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("registry_signing_key")
    @classmethod
    def _strong_signing_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is not None and len(key.get_secret_value()) < MIN_SIGNING_KEY_CHARS:
            raise ValueError(
                f"must be at least {MIN_SIGNING_KEY_CHARS} characters; generate one with "
                "`python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        return key

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_path()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def to_env(self) -> dict[str, str]:
        """These settings as ``SOUNDWATCH_*`` environment variables, for child processes.

        Contains secrets in clear text: pass it to ``subprocess`` only, never log it.
        """
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, sub in value.items():
                    walk(f"{prefix}__{key.upper()}" if prefix else key.upper(), sub)
            elif value is not None:
                if isinstance(value, SecretStr):
                    value = value.get_secret_value()
                out[f"SOUNDWATCH_{prefix}"] = json.dumps(value) if isinstance(value, list) else str(value)

        walk("", self.model_dump(mode="python"))
        return out

    def masked(self) -> dict[str, Any]:
        """Effective settings as plain data, secrets shown as ``'**********'``."""
        return _mask(self.model_dump(mode="python"))

    def secret_values(self) -> list[str]:
        """The clear-text value of every :class:`SecretStr` setting that is set (for log redaction)."""
        out: list[str] = []

        def walk(value: Any) -> None:
            if isinstance(value, SecretStr):
                if value.get_secret_value():
                    out.append(value.get_secret_value())
            elif isinstance(value, dict):
                for sub in value.values():
                    walk(sub)
            elif isinstance(value, list | tuple):
                for sub in value:
                    walk(sub)

        walk(self.model_dump(mode="python"))
        return out


def _config_path() -> Path | None:
    explicit = os.environ.get(CONFIG_ENV)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{CONFIG_ENV}={explicit} does not name a file", "fix the path or unset the variable")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_mask(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def load_settings(**overrides: Any) -> Settings:
    """Build settings from the environment and config file; raise :class:`ConfigError` with each bad field."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            env = "SOUNDWATCH_" + "__".join(str(p).upper() for p in err["loc"])
            lines.append(f"  {loc}: {err['msg']} (env {env})")
        # `from None`: pydantic's own error text repeats the input values, secrets included
        raise ConfigError(
            "invalid settings:\n" + "\n".join(lines), "fix the value in your environment or TOML file"
        ) from None
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"cannot read settings: {exc}", "check the TOML file named by SOUNDWATCH_CONFIG") from exc
    for secret in settings.secret_values():
        register_secret(secret)
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
