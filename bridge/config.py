"""The bridge's settings: typed, frozen, and built once at the edge.

``load_settings(path, environ)`` reads a YAML file, applies ``BRIDGE_<SECTION>__<KEY>`` environment
overrides on top (nested ``__`` for deeper keys) and returns a frozen :class:`Settings`. Every problem is a
:class:`~bridge.errors.ConfigError` whose message names the key by its dotted path and, for an override,
the variable it came from::

    kafka.compresion_type: unknown key (did you mean compression_type?)
    livekit.url: must start with ws://, wss://, http:// or https:// (from BRIDGE_LIVEKIT__URL)

Secrets are :class:`Secret`: they print as ``**********``, serialise as ``**********`` and never appear
in an error message (no message quotes a value it was given). ``Settings.redacted()`` is what
``livekit-bridge check-config`` prints. Units are in the names: durations end in ``_s`` (seconds),
sizes in ``_bytes``. An absent ``kafka`` or ``nats`` section turns that bus off.
"""

from __future__ import annotations

import difflib
import hmac
import re
import types
from collections.abc import Hashable, Iterator, Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Self, TextIO, Union, final, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
    model_validator,
)
from pydantic_core import core_schema

from bridge.errors import ConfigError

__all__ = [
    "REDACTED",
    "CommandsSettings",
    "DiscoverySettings",
    "EventsSettings",
    "HttpSettings",
    "KafkaSettings",
    "LiveKitSettings",
    "LoggingSettings",
    "MediaSettings",
    "NatsSettings",
    "OutboxSettings",
    "OwnershipSettings",
    "RoomsSettings",
    "Secret",
    "Settings",
    "SubscribeRule",
    "check_config_main",
    "load_settings",
]

ENV_PREFIX: Final = "BRIDGE_"
REDACTED: Final = "**********"


@final
class Secret:
    """A string that will not print itself. ``reveal()`` is for the one call that needs the value."""

    __slots__ = ("_value",)
    _value: str

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def reveal(self) -> str:
        return self._value

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        # Constant time, so comparing secrets never becomes a timing oracle.
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # copy/deepcopy would otherwise restore slots through the blocked __setattr__.
        return (Secret, (self._value,))

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._coerce,
            serialization=core_schema.plain_serializer_function_ser_schema(lambda _: REDACTED),
        )

    @classmethod
    def _coerce(cls, value: object) -> Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            # Never echo the value: it is somebody's password.
            raise ValueError("must be a string (quote it in YAML)")  # noqa: TRY004 (pydantic wants ValueError)
        if not value:
            raise ValueError("must not be empty")
        return cls(value)


class _FieldProblem(ValueError):
    """Raised by a cross-field check so the error is reported against ``field``, not the whole section."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def _non_empty(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value


def _string_list(value: object) -> object:
    # A list, or one comma-separated string (the Kafka/NATS habit, and what env overrides give).
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list):
        return tuple(value)
    return value


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _existing_file(value: Path) -> Path:
    # Checked at start-up so a typo names the key now, not as a TLS failure at first connect.
    if not value.is_file():
        raise ValueError(f"no such file: {value}")
    return value


def _websocket_url(url: str) -> str:
    """``http(s)://`` becomes ``ws(s)://`` (LiveKit hands out both); anything else is refused."""
    parts = urlsplit(url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError("must start with ws://, wss://, http:// or https://")
    if not parts.hostname:
        raise ValueError("must include a host")
    return urlunsplit(parts._replace(scheme=scheme, path=parts.path.rstrip("/")))


Text = Annotated[str, Field(strict=True), AfterValidator(_non_empty)]
Texts = Annotated[tuple[Text, ...], BeforeValidator(_string_list)]
Seconds = Annotated[float, Field(strict=True, gt=0, allow_inf_nan=False)]
Flag = Annotated[bool, Field(strict=True)]
Count = Annotated[int, Field(strict=True, gt=0)]
File = Annotated[Path, AfterValidator(_existing_file)]


def _host_port(value: str) -> str:
    _, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be HOST:PORT, e.g. 0.0.0.0:8080 or [::]:8080")
    return value


HostPort = Annotated[str, Field(strict=True), AfterValidator(_host_port)]
Url = Annotated[str, Field(strict=True), AfterValidator(_websocket_url)]


class _Section(BaseModel):
    # hide_input_in_errors: a ValidationError that escapes (direct construction) must not carry secrets.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class LiveKitSettings(_Section):
    """Where the LiveKit server is, who we are there, and how the signaling connector behaves."""

    url: Url
    api_key: Text
    api_secret: Secret
    identity: Text = "livekit-bridge"
    ping_interval_s: Seconds | None = None  # None: use the interval the server sends in the join
    reconnect_backoff_initial_s: Seconds = 0.5
    reconnect_backoff_max_s: Seconds = 30.0
    token_ttl_s: Seconds = 600.0
    can_publish: Flag = False
    can_update_own_metadata: Flag = False
    # Join hidden (invisible to others). LiveKit blanks the sender of a hidden participant's data, so
    # data the bridge sends shows its identity only with ``hidden: false``.
    hidden: Flag = True
    auto_subscribe: Flag = False
    leave_deadline_s: Seconds = 5.0
    max_frame_bytes: Count = 2 * 1024 * 1024

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.reconnect_backoff_max_s < self.reconnect_backoff_initial_s:
            raise _FieldProblem("reconnect_backoff_max_s", "must be >= reconnect_backoff_initial_s")
        return self


class RoomsSettings(_Section):
    """Rooms joined at start-up, whatever commands arrive later."""

    static: Texts = ()

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        for room in self.static:
            if room in seen:
                raise _FieldProblem("static", f"room {room!r} is listed twice")
            seen.add(room)
        return self


class EventsSettings(_Section):
    """Which events are published and how their payload is encoded."""

    data_format: Literal["protobuf", "json"] = "protobuf"
    include: Texts = ("*",)  # globs over the CloudEvents ``type``
    exclude: Texts = ()
    # Also publish each completed text stream (chat, transcriptions) as one ``bridge.text_stream`` event.
    assemble_text_streams: Flag = False
    text_stream_max_bytes: Count = 1024 * 1024  # per stream; the rest is dropped (``truncated``)
    text_streams_max_open: Count = 64  # per room; a new stream evicts the oldest unfinished one

    def selects(self, event_type: str) -> bool:
        """True if ``event_type`` matches an ``include`` glob and no ``exclude`` glob."""
        return any(fnmatchcase(event_type, g) for g in self.include) and not any(
            fnmatchcase(event_type, g) for g in self.exclude
        )


def _command_types(names: tuple[str, ...] | None) -> tuple[str, ...] | None:
    if names is None:
        return None
    from bridge.commands.model import allowed_types  # pure; imported late to keep config light

    return tuple(sorted(allowed_types(names)))  # ValueError names the entry


class CommandsSettings(_Section):
    """How commands from the buses are checked and applied."""

    enabled: Flag = True
    # Command types accepted: ``mute``, ``bridge.send_data`` or full types. None (absent): every
    # type but transport plumbing, which can never be allowed.
    allowed: Annotated[Texts | None, AfterValidator(_command_types)] = None
    max_bytes: Count = 256 * 1024
    response_timeout_s: Seconds = 5.0  # how long to wait for LiveKit's answer before ``failed/timeout``
    dedup_window_s: Seconds = 600.0
    dedup_max_ids: Count = 100_000
    max_in_flight: Count = 1_000  # commands received and not yet settled; fetching pauses beyond it
    # ``bridge.send_data``: on the bridge's own data channel (its publisher PeerConnection), falling back
    # to the server API when that cannot be set up; or always through the server API (``SendData``).
    send_data_via: Literal["data_channel", "server_api"] = "data_channel"

    def allowed_set(self) -> frozenset[str]:
        from bridge.commands.model import DEFAULT_ALLOWED

        return DEFAULT_ALLOWED if self.allowed is None else frozenset(self.allowed)


_KAFKA_TOPIC: Final = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
KafkaTopic = Annotated[str, Field(strict=True, pattern=_KAFKA_TOPIC.pattern)]
_SASL: Final = ("SASL_PLAINTEXT", "SASL_SSL")
_TLS: Final = ("SSL", "SASL_SSL")


class KafkaSettings(_Section):
    """The Kafka bus. The section being present is what turns it on."""

    bootstrap_servers: Annotated[Texts, Field(min_length=1)]
    events_topic: KafkaTopic = "livekit.events"
    commands_topic: KafkaTopic = "livekit.commands"
    dead_letter_topic: KafkaTopic = "livekit.commands.dlq"
    # "started" markers that keep a crash from applying a command twice; None turns them off (then a
    # command in flight at a crash may be applied again). Give it retention >= commands.dedup_window_s.
    commands_state_topic: KafkaTopic | None = "livekit.commands.state"
    commands_group_id: Text = "livekit-bridge"
    commands_offset_reset: Literal["latest", "earliest"] = "latest"  # for a group with no commit yet
    commit_interval_s: Seconds = 0.2
    # How long the broker may hold a commands fetch open when there is nothing new. Kafka answers as
    # soon as records arrive; some Kafka-protocol brokers (tansu) wait the whole time, so it bounds
    # command latency there. 20 ms costs ~50 empty fetches/s per replica when idle.
    commands_fetch_max_wait_s: Annotated[float, Field(strict=True, gt=0, le=10, allow_inf_nan=False)] = 0.02
    enable_idempotence: Flag = True
    acks: Literal["all", 0, 1] = "all"
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"
    # Kafka's linger: how long records may wait for more before a produce request. Spent in the outbox,
    # whose batches to Kafka start at most this often (or ``outbox.batch_interval_s``, if longer), then go
    # out at once -- not in aiokafka, where a handed-over batch would wait while the next one gathers.
    linger_s: Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)] = 0.005
    security_protocol: Annotated[
        Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"], BeforeValidator(_upper)
    ] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: Text | None = None
    sasl_password: Secret | None = None
    ssl_cafile: File | None = None
    ssl_certfile: File | None = None
    ssl_keyfile: File | None = None
    # The command consumer's group session: a replica that stops heartbeating loses its partitions (and,
    # with ``ownership.mode: kafka``, its rooms) after this long.
    session_timeout_s: Annotated[float, Field(strict=True, ge=1, le=300, allow_inf_nan=False)] = 10.0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.enable_idempotence and self.acks != "all":
            raise _FieldProblem("acks", "must be 'all' when enable_idempotence is true")
        if self.commands_topic == self.events_topic:
            raise _FieldProblem("commands_topic", "must differ from events_topic")
        if self.dead_letter_topic in (self.events_topic, self.commands_topic):
            raise _FieldProblem("dead_letter_topic", "must differ from events_topic and commands_topic")
        if self.commands_state_topic in (self.events_topic, self.commands_topic, self.dead_letter_topic):
            raise _FieldProblem("commands_state_topic", "must differ from the other topics")
        sasl = self.security_protocol in _SASL
        for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
            given = getattr(self, name) is not None
            if sasl and not given:
                raise _FieldProblem(name, f"required when security_protocol is {self.security_protocol}")
            if given and not sasl:
                raise _FieldProblem(name, "needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            if getattr(self, name) is not None and self.security_protocol not in _TLS:
                raise _FieldProblem(name, "needs security_protocol SSL or SASL_SSL")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise _FieldProblem("ssl_keyfile", "ssl_certfile and ssl_keyfile go together")
        return self


_NATS_SCHEMES: Final = ("nats", "tls", "ws", "wss")
_SUBJECT_TOKEN: Final = re.compile(r"[^\s.*>]+")


class NatsSettings(_Section):
    """The NATS bus. The section being present is what turns it on."""

    servers: Annotated[Texts, Field(min_length=1)]
    subject_prefix: Text = "livekit"
    jetstream: Flag = False
    binary_mode: Flag = False  # CloudEvents binary content mode (attributes in headers)
    queue_group: Text = "livekit-bridge"  # replicas share <prefix>.commands.* through it
    dead_letter_subject: Text | None = None  # default <prefix>.dlq.commands
    user: Text | None = None
    password: Secret | None = None
    token: Secret | None = None
    creds_file: File | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for server in map(urlsplit, self.servers):
            if server.scheme not in _NATS_SCHEMES or not server.hostname:
                raise _FieldProblem(
                    "servers", "each must look like nats://HOST:PORT (or tls://, ws://, wss://)"
                )
            if "@" in server.netloc:
                # Credentials in a URL end up in logs and check-config output; the typed keys do not.
                raise _FieldProblem(
                    "servers", "must not contain credentials; use nats.user/password or token"
                )
        if not all(_SUBJECT_TOKEN.fullmatch(t) for t in self.subject_prefix.split(".")):
            raise _FieldProblem("subject_prefix", "must be dot-separated tokens without spaces or wildcards")
        if self.dead_letter_subject is not None and (
            not all(_SUBJECT_TOKEN.fullmatch(t) for t in self.dead_letter_subject.split("."))
            or self.dead_letter_subject.startswith(f"{self.subject_prefix}.commands.")
        ):
            raise _FieldProblem(
                "dead_letter_subject", "must be a plain subject outside <prefix>.commands.* (no wildcards)"
            )
        if self.user is not None and self.password is None:
            raise _FieldProblem("password", "required when user is set")
        if self.password is not None and self.user is None:
            raise _FieldProblem("user", "required when password is set")
        if sum(x is not None for x in (self.user, self.token, self.creds_file)) > 1:
            raise _FieldProblem(
                "token" if self.token else "creds_file", "use one of user/password, token or creds_file"
            )
        return self

    @property
    def dlq_subject(self) -> str:
        return self.dead_letter_subject or f"{self.subject_prefix}.dlq.commands"


_OPS_PATHS: Final = ("/livez", "/readyz", "/metrics", "/rooms")


def _webhook_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError("must be a URL path starting with /, e.g. /webhook")
    if value in _OPS_PATHS:
        raise ValueError(f"must differ from {', '.join(_OPS_PATHS)}")
    return value


class HttpSettings(_Section):
    """The health, metrics and (with ``discovery.webhook``) LiveKit webhook endpoint."""

    listen: HostPort = "0.0.0.0:8080"
    webhook_path: Annotated[str, Field(strict=True), AfterValidator(_webhook_path)] = "/webhook"

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class OutboxSettings(_Section):
    """The bounded queue between rooms and buses, and what happens when it is full."""

    capacity: Count = 10_000  # events
    overflow: Literal["block", "drop_oldest"] = "block"
    # Batches to a bus start at most this often (a full batch goes at once): fewer, fuller broker requests
    # for at most this much added latency. 0 sends whatever is queued as soon as the last batch is confirmed.
    batch_interval_s: Annotated[float, Field(strict=True, ge=0, le=1, allow_inf_nan=False)] = 0.002
    # Batches handed to a bus before the oldest is confirmed, so events need not wait out a round trip.
    # Core NATS only (one connection keeps their order); Kafka and JetStream keep 1. 1 turns it off.
    max_in_flight: Annotated[int, Field(strict=True, ge=1, le=64)] = 4


class LoggingSettings(_Section):
    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], BeforeValidator(_upper)] = (
        "INFO"
    )
    # ``json`` is the key; the attribute is ``json_`` because BaseModel already has a ``json`` method.
    json_: Flag = Field(default=False, alias="json")


class DiscoverySettings(_Section):
    """How rooms beyond ``rooms.static`` are found: LiveKit webhooks and a periodic ListRooms."""

    # Accept LiveKit's webhooks at ``http.webhook_path``: room_started joins, room_finished leaves.
    webhook: Flag = False
    # Reconcile with LiveKit's ListRooms this often (webhooks are lossy); None: never.
    list_rooms_interval_s: Seconds | None = None
    # Join rooms that start or exist. False: discovery only leaves rooms that finished.
    auto_join: Flag = True


class OwnershipSettings(_Section):
    """Which of the candidate rooms (``rooms.static`` plus discovery) this replica runs."""

    # static: all of them. kafka: those whose partition of kafka.commands_topic the consumer group assigns
    # to this replica. nats: those whose JetStream KV lease this replica holds.
    mode: Literal["static", "kafka", "nats"] = "static"
    # A room given up keeps its socket until the new owner's join evicts it, at most this long.
    handover_timeout_s: Seconds = 15.0
    # nats: lease length; a crashed replica's rooms are claimed again about this long after it died.
    lease_ttl_s: Annotated[float, Field(strict=True, ge=1, le=3600, allow_inf_nan=False)] = 10.0
    # nats: at most this many rooms per replica (None: the fair share of the candidates only).
    capacity: Count | None = None
    bucket: Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "livekit-bridge-ownership"
    # This replica's name in ownership_changed events and (nats) in the lease bucket (default: host name,
    # process id and a random suffix).
    replica_id: Text | None = None


def _forward_targets(entries: tuple[str, ...]) -> tuple[str, ...]:
    """``media.forward_allow``: each entry an address, a CIDR range or a host name (checked here)."""
    import ipaddress
    import re

    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})", entry):
                raise ValueError(f"{entry!r} is not an address, a CIDR range or a host name") from None
    return entries


def _url_prefixes(entries: tuple[str, ...]) -> tuple[str, ...]:
    """``media.publish_url_allow``: each entry a URL with a scheme and a host, and nothing secret in it."""
    for n, entry in enumerate(entries):
        if any(c in entry for c in "@?#"):
            # Matched on scheme, host, port and path only; credentials in it would be logged. Not echoed.
            raise ValueError(f"entry {n + 1} has a user, password, query or fragment: a prefix has none")
        try:
            parts = urlsplit(entry)
            parts.port  # noqa: B018 (raises ValueError for a bad port)
        except ValueError:
            raise ValueError(f"{entry!r} is not a URL") from None
        if not parts.scheme or not parts.hostname:
            raise ValueError(f"{entry!r} needs a scheme and a host, e.g. https://media.example.com/clips/")
    return entries


class SubscribeRule(_Section):
    """One ``media.subscribe`` rule: a remote track matches when all three fields match."""

    kind: Literal["*", "audio", "video"] = "*"
    source: Literal["*", "camera", "microphone", "screen_share", "screen_share_audio", "unknown"] = "*"
    identity: Text = "*"  # glob over the publisher's identity


class MediaSettings(_Section):
    """What the bridge receives over WebRTC, and where it may record."""

    # Tracks to subscribe to (any rule matching is enough); empty: none. VP9/AV1-only tracks are skipped.
    subscribe: tuple[SubscribeRule, ...] = ()
    # ``bridge.record_track`` writes below this directory (its ``path`` is relative); None: refused.
    recordings_dir: Path | None = None
    max_recordings: Count = 8  # per room, at the same time
    recording_queue_frames: Count = 512  # per recording; beyond it frames are dropped and counted
    # ``bridge.forward_track`` sends RTP only to these: addresses, CIDR ranges or host names; empty: refused.
    forward_allow: Annotated[Texts, AfterValidator(_forward_targets)] = ()
    max_forwards: Count = 8  # per room, at the same time
    forward_queue_packets: Count = 256  # per forward; beyond it RTP packets are dropped and counted
    # ``bridge.publish_track`` plays files from below this directory (``path`` is relative); None: refused.
    publish_dir: Path | None = None
    max_published_tracks: Count = 4  # per room, at the same time
    # ``bridge.publish_track`` opens a ``url`` only below one of these prefixes (same scheme, host and port,
    # path at or below the prefix's), e.g. ``https://media.example.com/clips/``; empty: every URL refused.
    publish_url_allow: Annotated[Texts, AfterValidator(_url_prefixes)] = ()


class Settings(_Section):
    """Everything the bridge is configured with. Build it with :func:`load_settings`."""

    livekit: LiveKitSettings
    rooms: RoomsSettings = RoomsSettings()
    events: EventsSettings = EventsSettings()
    commands: CommandsSettings = CommandsSettings()
    kafka: KafkaSettings | None = None
    nats: NatsSettings | None = None
    http: HttpSettings = HttpSettings()
    outbox: OutboxSettings = OutboxSettings()
    logging: LoggingSettings = LoggingSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    media: MediaSettings = MediaSettings()
    ownership: OwnershipSettings = OwnershipSettings()

    @model_validator(mode="after")
    def _ownership_backend(self) -> Self:
        mode = self.ownership.mode
        if mode == "kafka" and (self.kafka is None or not self.commands.enabled):
            raise _FieldProblem("ownership.mode", "kafka needs the kafka section and commands.enabled")
        if mode == "nats" and self.nats is None:
            raise _FieldProblem("ownership.mode", "nats needs the nats section")
        return self

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, secrets replaced by ``**********``."""
        return self.model_dump(mode="json", by_alias=True)


# --- loading ----------------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses duplicate keys: a second ``kafka:`` silently replacing the first is a trap."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"cannot read: {exc.__class__.__name__}") from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.MarkedYAMLError as exc:
        # Only the problem and position: the snippet PyYAML would add may quote a secret.
        where = f" at line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise ConfigError(str(path), f"not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError:
        raise ConfigError(str(path), "not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "must be a mapping of sections (livekit:, kafka:, ...)")
    return data


def _field_type(path: tuple[str, ...]) -> object:
    """The annotation at a dotted path, with Optional stripped; ``None`` for an unknown path."""
    model: object = Settings
    annotation: object = None
    for key in path:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        if key not in fields:
            return None
        annotation = _strip_optional(fields[key].annotation)
        model = annotation
    return annotation


def _strip_optional(annotation: object) -> object:
    """``Annotated[X, ...] | None`` -> ``X``."""
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return _strip_optional(rest[0])
    if get_origin(annotation) is Annotated:
        return _strip_optional(get_args(annotation)[0])
    return annotation


def _parse_env_value(path: tuple[str, ...], raw: str, var: str) -> object:
    target = _field_type(path)
    # Strings stay verbatim: YAML would turn a password "0123" into 83 and a room "yes" into True.
    if target in (str, Secret, Path) or target is None:
        return raw
    if get_origin(target) is tuple and not raw.lstrip().startswith("["):
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(".".join(path), f"not a valid YAML value (from {var})") from None


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Writes the ``BRIDGE_*__*`` overrides into ``data``; returns which variable set which path."""
    sources: dict[tuple[str, ...], str] = {}
    sections = set(Settings.model_fields)
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX):
            continue
        rest = var[len(ENV_PREFIX) :]
        if "__" not in rest:
            # BRIDGE_TEST_... and friends are not settings; BRIDGE_KAFKA_TOPIC almost certainly is one.
            head = rest.split("_", 1)[0].lower()
            if head in sections:
                raise ConfigError(var, f"settings use a double underscore, e.g. BRIDGE_{head.upper()}__KEY")
            continue
        path = tuple(part.lower() for part in rest.split("__"))
        if not all(path):
            raise ConfigError(var, "empty key between double underscores")
        node = data
        for depth, key in enumerate(path[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            elif not isinstance(child, dict):
                dotted = ".".join(path[: depth + 1])
                raise ConfigError(dotted, f"is not a section, so {var} cannot set a key inside it")
            node = child
        node[path[-1]] = _parse_env_value(path, environ[var], var)
        sources[path] = var
    return sources


_MESSAGES: Final = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "model_type": "must be a mapping (a section of keys)",
    "dict_type": "must be a mapping (a section of keys)",
    "string_type": "must be a string (quote it in YAML)",
    "tuple_type": "must be a list",
}


def _problems(exc: ValidationError, sources: Mapping[tuple[str, ...], str]) -> Iterator[tuple[str, str]]:
    for err in exc.errors(include_input=False, include_url=False):
        loc = tuple(str(part) for part in err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, _FieldProblem):
            loc, problem = (*loc, cause.field), cause.problem
        elif err["type"] in _MESSAGES:
            problem = _MESSAGES[err["type"]]
        else:
            problem = err["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
        if err["type"] == "extra_forbidden":
            problem += _suggestion(loc)
        elif err["type"] == "missing":
            problem += f" (set it in the file or as {ENV_PREFIX}{'__'.join(loc).upper()})"
        var = next(
            (v for p, v in sources.items() if loc and (loc[: len(p)] == p or p[: len(loc)] == loc)), None
        )
        if var is not None:
            problem += f" (from {var})"
        yield _dotted(loc), problem


def _suggestion(loc: tuple[str, ...]) -> str:
    parent = Settings if len(loc) == 1 else _field_type(loc[:-1])
    if not (isinstance(parent, type) and issubclass(parent, BaseModel)):
        return ""
    names = [f.alias or name for name, f in parent.model_fields.items()]
    close = difflib.get_close_matches(loc[-1], names, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _dotted(loc: tuple[str, ...]) -> str:
    return "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc).lstrip(".")


def load_settings(path: Path | None, environ: Mapping[str, str]) -> Settings:
    """Reads ``path`` (optional), applies ``BRIDGE_<SECTION>__<KEY>`` overrides, validates.

    Overrides win over the file. Their values are YAML scalars or flow lists (``'[a, b]'``, ``5``,
    ``true``), except string settings, which are taken verbatim. Raises ConfigError naming the key.
    """
    data = _read_file(path) if path is not None else {}
    # An empty section (``kafka:`` with nothing under it) counts as absent.
    data = {key: value for key, value in data.items() if value is not None}
    sources = _apply_env(data, environ)
    # So a missing section reports livekit.url, livekit.api_key... rather than just "livekit".
    data.setdefault("livekit", {})
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        (key, problem), *more = _problems(exc, sources)
        if more:
            problem += "".join(f"; {k}: {p}" for k, p in more)
        # from None: the ValidationError adds nothing for the user, and keeps tracebacks short.
        raise ConfigError(key, problem) from None


def check_config_main(path: Path, environ: Mapping[str, str], out: TextIO) -> int:
    """``livekit-bridge check-config``: prints the effective settings (secrets redacted), or the error."""
    try:
        settings = load_settings(path, environ)
    except ConfigError as exc:
        print(f"livekit-bridge: {exc}", file=out)
        return 2
    yaml.safe_dump(settings.redacted(), out, sort_keys=False, default_flow_style=False)
    return 0
