"""``livekit-bridge tail``: pretty-print the bridge's CloudEvents as they arrive on Kafka or NATS.

Where from: ``--kafka BOOTSTRAP [--topic T]``, ``--nats URL [--prefix P]`` or ``--config FILE`` (the bus
configured there; ``--bus`` picks one when both are). Kafka is read without a consumer group: every
partition is assigned, starting at the end (``--from-beginning``: at the start). NATS is a core
subscription on ``<prefix>.events.<room token>.>`` per ``--room`` (``<prefix>.events.>`` without one).

What: ``--room NAME`` (repeatable; Kafka filters on the record key / ``lkroom``) and ``--type GLOB``
(repeatable; against the CloudEvent ``type``, short forms such as ``speakers_changed``, ``signal.update``
or ``data.*`` accepted). How: one line per event (:func:`format_line`), or ``--json``: one JSON object per
event with every attribute and ``data`` decoded to the protobuf JSON mapping (:func:`event_json`).

Stops on ``--count N`` events, ``--timeout S`` seconds without a matching event, Ctrl-C or SIGTERM.
Decoding goes through the protobuf descriptor pool by the type's registered message name; this is a
tool, not the hot path, so ``json_format`` is fine here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import math
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Final, Protocol, TextIO

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf import wrappers_pb2 as _wrappers  # noqa: F401 (registers the wrapper types)
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import DecodeError, Message

import bridge._proto.events_pb2 as _bridge_events  # noqa: F401 (registers livekit.bridge.v1.*)
from bridge.bus.bindings import event_from_kafka, event_from_nats, is_json_content_type, room_token
from bridge.config import KafkaSettings, NatsSettings, Settings, load_settings
from bridge.errors import ConfigError
from bridge.events.types import ALL, TYPE_PREFIX

__all__ = [
    "DEFAULT_WIDTH",
    "KafkaSource",
    "NatsSource",
    "TailError",
    "TypeMatcher",
    "add_tail_arguments",
    "compact",
    "decode_data",
    "event_json",
    "format_line",
    "run_tail",
]

DEFAULT_WIDTH: Final = 160
REDACTED: Final = "REDACTED"
# Keys whose values are credentials wherever they appear in decoded data. The bridge redacts them before
# publishing; tail masks them again so a foreign or older producer cannot make it print a secret.
_SECRET_KEYS: Final = frozenset(
    {"token", "refreshtoken", "credential", "password", "turnpassword", "apisecret", "secret"}
)
_BARE: Final = re.compile(r"[A-Za-z0-9_.:/@+#=-]+")
_KAFKA_LOGGERS: Final = ("aiokafka", "kafka")

Event = dict[str, Any]  # decoded attributes + "data" (bytes) [+ "data_json"], as the bindings return


class TailError(Exception):
    """A one-line, user-facing failure (exit 2): names what was tried and the option that fixes it."""


# --- decoding and formatting (pure) -----------------------------------------------------------------


def _message_class(name: str) -> type[Message] | None:
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        return None
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls


def decode_data(event: Mapping[str, Any], *, readable: bool = False) -> Any:
    """``data`` as the protobuf JSON mapping (a dict, or a scalar for wrapper types).

    JSON data is returned as parsed; protobuf data is decoded with the message the type is registered
    with. Unknown types or undecodable bytes come back as ``{"data_base64": ...}``. ``readable`` (the
    one-line format) shows ``bytes`` fields that hold UTF-8 text as that text instead of base64.
    """
    if "data_json" in event:
        return _redact(event["data_json"])
    raw = event.get("data", b"")
    data = raw if isinstance(raw, bytes) else str(raw).encode()
    content_type = str(event.get("datacontenttype", ""))
    if content_type and is_json_content_type(content_type):
        try:
            return _redact(json.loads(data)) if data else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
    etype = ALL.get(str(event.get("type", "")))
    cls = _message_class(etype.message) if etype is not None else None
    if cls is not None:
        try:
            message = cls.FromString(data)
            mapped = json_format.MessageToDict(message)
            return _redact(_text_bytes(message, mapped) if readable else mapped)
        except DecodeError:
            pass
    return {"data_base64": base64.b64encode(data).decode()}


def _text_bytes(message: Message, mapped: Any) -> Any:
    """``mapped`` (MessageToDict of ``message``) with UTF-8 text in ``bytes`` fields shown as text."""
    if not isinstance(mapped, dict):
        return mapped
    for fd, value in message.ListFields():
        key = fd.json_name
        if key not in mapped:
            continue
        is_map = fd.message_type is not None and fd.message_type.GetOptions().map_entry
        repeated = fd.is_repeated
        if fd.type == FieldDescriptor.TYPE_BYTES:
            if repeated:
                mapped[key] = [_as_text(v, m) for v, m in zip(value, mapped[key], strict=False)]
            else:
                mapped[key] = _as_text(value, mapped[key])
        elif fd.type == FieldDescriptor.TYPE_MESSAGE and not is_map:
            if repeated:
                mapped[key] = [_text_bytes(v, m) for v, m in zip(value, mapped[key], strict=False)]
            else:
                mapped[key] = _text_bytes(value, mapped[key])
    return mapped


def _as_text(raw: bytes, mapped: Any) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return mapped
    return text if text.isprintable() else mapped


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: (REDACTED if k.lower().replace("_", "") in _SECRET_KEYS and v else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def event_json(event: Mapping[str, Any]) -> dict[str, Any]:
    """Every attribute, then ``data`` decoded (the ``--json`` output of one event)."""
    out = {k: v for k, v in event.items() if k not in ("data", "data_json")}
    out["data"] = decode_data(event)
    return out


def compact(value: Any) -> str:
    """A short flow rendering: ``{speakers: [{sid: PA_x, level: 0.82, active: true}]}``."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_scalar_text(str(k))}: {compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(compact(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # float32 fields come back as 0.8199999928474426: six significant digits say the same thing.
        return format(value, ".6g") if math.isfinite(value) else str(value)
    if isinstance(value, int):
        return str(value)
    return _scalar_text(str(value))


def _scalar_text(text: str) -> str:
    if _BARE.fullmatch(text) and text not in ("true", "false", "null"):
        return text
    return json.dumps(text, ensure_ascii=False)


def short_type(event_type: str) -> str:
    """``io.livekit.signal.speakers_changed.v1`` -> ``signal.speakers_changed``."""
    short = event_type.removeprefix(TYPE_PREFIX)
    return re.sub(r"\.v\d+$", "", short) if short != event_type else event_type


def _clock(time_attr: str, tz: tzinfo | None) -> str:
    try:
        when = datetime.fromisoformat(time_attr.replace("Z", "+00:00"))
    except ValueError:
        return (time_attr or "?")[:12].ljust(12)
    local = when.astimezone(tz)
    return local.strftime("%H:%M:%S.") + f"{local.microsecond // 1000:03d}"


def format_line(event: Mapping[str, Any], *, width: int = DEFAULT_WIDTH, tz: tzinfo | None = None) -> str:
    """One readable line: time, room, sequence, short type, subject and the decoded data, cut to ``width``.

    ``tz`` is the zone the time is shown in (None: local time).
    """
    room = str(event.get("lkroom") or event.get("partitionkey") or "?")
    seq = str(event.get("sequence", "?"))
    parts = [
        _clock(str(event.get("time", "")), tz),
        f"{room:<5}",
        f"#{seq}",
        f"{short_type(str(event.get('type', '?'))):<26}",
    ]
    subject = event.get("subject")
    if subject:
        parts.append(f" subject={subject}")
    parts.append(" " + compact(decode_data(event, readable=True)))
    line = " ".join(parts)
    # Control characters (a newline in chat text) would break the one-line promise.
    line = re.sub(r"[\x00-\x1f\x7f]", " ", line)
    if len(line) > width:
        line = line[: max(1, width - 1)] + "…"
    return line


def output_width(stream: TextIO) -> int:
    """The terminal's width when writing to one, else :data:`DEFAULT_WIDTH`."""
    try:
        if stream.isatty():
            return max(40, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)
    except (AttributeError, ValueError, OSError):
        pass
    return DEFAULT_WIDTH


@dataclass(frozen=True)
class TypeMatcher:
    """``--type`` globs; a short form (``speakers_changed``, ``signal.update``) means the full type."""

    globs: tuple[str, ...] = ()
    _expanded: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        expanded: list[str] = []
        for glob in self.globs:
            expanded.append(glob)
            if not glob.startswith(TYPE_PREFIX):
                core = glob if "." in glob.strip("*") else f"*.{glob}"
                if not re.search(r"\.v(\d+|\*)$", core):
                    core += ".v*"
                expanded.append(TYPE_PREFIX + core)
        object.__setattr__(self, "_expanded", tuple(expanded))

    def __call__(self, event_type: str) -> bool:
        return not self.globs or any(fnmatchcase(event_type, g) for g in self._expanded)


# --- sources -------------------------------------------------------------------------------------


class Source(Protocol):
    """Where events come from: ``start()`` (raises TailError), iterate, ``aclose()``."""

    description: str

    async def start(self) -> None: ...

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def aclose(self) -> None: ...


class NatsSource:
    """A core NATS subscription per room (or one for every room) under ``<prefix>.events``."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        prefix: str = "livekit",
        rooms: Sequence[str] = (),
        settings: NatsSettings | None = None,
        fix_hint: str = "--nats",
        connect_timeout_s: float = 3.0,
    ) -> None:
        self.servers = [url] if isinstance(url, str) else list(url)
        self.prefix = prefix
        self.subjects = [f"{prefix}.events.{room_token(r)}.>" for r in rooms] or [f"{prefix}.events.>"]
        self.description = f"NATS {', '.join(self.servers)} subject {', '.join(self.subjects)}"
        self._settings = settings
        self._hint = fix_hint
        self._timeout = connect_timeout_s
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._nc: Any = None
        self.undecodable = 0

    async def start(self) -> None:
        import nats
        import nats.errors
        from nats.aio.msg import Msg

        s = self._settings

        async def quiet(_: Exception) -> None:
            """nats-py prints every connection error with a traceback otherwise."""

        try:
            self._nc = await nats.connect(
                servers=self.servers,
                name="livekit-bridge-tail",
                connect_timeout=self._timeout,
                # One retry per server, then NoServersError (0 would mean "forever" in nats-py).
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=quiet,
                user=s.user if s else None,
                password=s.password.reveal() if s and s.password else None,
                token=s.token.reveal() if s and s.token else None,
                user_credentials=str(s.creds_file) if s and s.creds_file else None,
            )
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise TailError(
                f"cannot reach NATS at {', '.join(self.servers)} ({type(exc).__name__}); check {self._hint}"
            ) from None
        # Keep reconnecting for as long as tail runs (the first connect above was the strict one).
        self._nc.options["max_reconnect_attempts"] = -1
        self._nc.options["reconnect_time_wait"] = 1.0

        async def on_msg(msg: Msg) -> None:
            try:
                event = event_from_nats(msg.subject, msg.data, msg.headers)
            except ValueError:
                self.undecodable += 1
                return
            await self._queue.put(event)

        for subject in self.subjects:
            await self._nc.subscribe(subject, cb=on_msg)
        await self._nc.flush()  # the subscriptions are registered once the server answered

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()

    async def aclose(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None


class KafkaSource:
    """Every partition of ``topic``, no consumer group; from the end, or the beginning if asked."""

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        topic: str = "livekit.events",
        rooms: Sequence[str] = (),
        from_beginning: bool = False,
        settings: KafkaSettings | None = None,
        fix_hint: str = "--kafka",
        topic_wait_s: float | None = None,
    ) -> None:
        self.bootstrap = bootstrap if isinstance(bootstrap, str) else ",".join(bootstrap)
        self.topic = topic
        self.rooms = frozenset(rooms)
        self.from_beginning = from_beginning
        where = "from the beginning" if from_beginning else "new events"
        self.description = f"Kafka {self.bootstrap} topic {topic} ({where}, every partition, no group)"
        self._settings = settings
        self._hint = fix_hint
        self._topic_wait_s = topic_wait_s
        self._consumer: Any = None  # aiokafka is untyped: Any stays at this boundary
        self.on_waiting: Callable[[str], None] | None = None

    def _kwargs(self) -> dict[str, Any]:
        s = self._settings
        if s is None:
            return {}
        kwargs: dict[str, Any] = {"security_protocol": s.security_protocol}
        if s.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(
                cafile=str(s.ssl_cafile) if s.ssl_cafile else None,
                certfile=str(s.ssl_certfile) if s.ssl_certfile else None,
                keyfile=str(s.ssl_keyfile) if s.ssl_keyfile else None,
            )
        if s.sasl_mechanism is not None:
            kwargs["sasl_mechanism"] = s.sasl_mechanism
            kwargs["sasl_plain_username"] = s.sasl_username
            kwargs["sasl_plain_password"] = s.sasl_password.reveal() if s.sasl_password else None
        return kwargs

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition
        from aiokafka.errors import KafkaError

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="livekit-bridge-tail",
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self.from_beginning else "latest",
            request_timeout_ms=10_000,
            **self._kwargs(),
        )
        try:
            async with asyncio.timeout(15):
                await consumer.start()
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(Exception):
                await consumer.stop()
            raise TailError(
                f"cannot reach Kafka at {self.bootstrap} ({type(exc).__name__}); check {self._hint}"
            ) from None
        self._consumer = consumer
        partitions = await self._partitions()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        if self.from_beginning:
            await consumer.seek_to_beginning(*tps)
        else:
            await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # resolve the offsets now, so "new" means after start() returned

    async def _partitions(self) -> set[int]:
        """The topic's partitions, waiting (and saying so once) while the topic does not exist yet."""
        waited = 0.0
        while True:
            await self._consumer.topics()  # refreshes the metadata
            partitions = self._consumer.partitions_for_topic(self.topic)
            if partitions:
                return set(partitions)
            if waited == 0.0 and self.on_waiting is not None:
                self.on_waiting(f"topic {self.topic} does not exist yet on {self.bootstrap}; waiting for it")
            if self._topic_wait_s is not None and waited >= self._topic_wait_s:
                raise TailError(f"topic {self.topic} does not exist on {self.bootstrap}; check --topic")
            await asyncio.sleep(0.5)  # metadata poll interval while waiting for the topic
            waited += 0.5

    async def __aiter__(self) -> AsyncIterator[Event]:
        async for record in self._consumer:
            event = event_from_kafka(record.key, record.value, list(record.headers))
            if self.rooms and (
                (record.key or b"").decode(errors="replace") not in self.rooms
                and event.get("lkroom") not in self.rooms
            ):
                continue
            yield event

    async def aclose(self) -> None:
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None


# --- the command -----------------------------------------------------------------------------------


def add_tail_arguments(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--kafka", metavar="BOOTSTRAP", help="Kafka bootstrap servers, host:port[,host:port]")
    where.add_argument("--nats", metavar="URL", help="NATS server URL, e.g. nats://127.0.0.1:4222")
    where.add_argument("--config", type=Path, metavar="FILE", help="read the bus from bridge settings")
    p.add_argument("--bus", choices=("kafka", "nats"), help="with --config: which bus, when both are set")
    p.add_argument("--topic", help="Kafka events topic (default livekit.events, or the config's)")
    p.add_argument("--prefix", help="NATS subject prefix (default livekit, or the config's)")
    p.add_argument("--room", action="append", default=[], metavar="NAME", help="only this room (repeatable)")
    p.add_argument(
        "--type",
        action="append",
        default=[],
        metavar="GLOB",
        help="only types matching (repeatable): io.livekit.signal.*, speakers_changed, data.*",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per event, data decoded")
    p.add_argument("--from-beginning", action="store_true", help="Kafka: start at the oldest record")
    p.add_argument("--count", type=int, metavar="N", help="stop after N events")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds without an event")


def build_source(args: argparse.Namespace, environ: Mapping[str, str]) -> Source:
    """The source the options name; TailError for a contradiction or missing choice."""
    rooms = tuple(args.room)
    if args.kafka:
        if args.prefix:
            raise TailError("--prefix is for NATS; with --kafka use --topic")
        return KafkaSource(
            args.kafka,
            topic=args.topic or "livekit.events",
            rooms=rooms,
            from_beginning=args.from_beginning,
        )
    if args.nats:
        if args.topic or args.from_beginning:
            raise TailError("--topic and --from-beginning are for Kafka; with --nats use --prefix")
        return NatsSource(args.nats, prefix=args.prefix or "livekit", rooms=rooms)
    if args.config is None:
        raise TailError("say where to read from: --kafka BOOTSTRAP, --nats URL or --config FILE")
    try:
        settings: Settings = load_settings(args.config, environ)
    except ConfigError as exc:
        raise TailError(str(exc)) from None
    bus = args.bus
    if bus is None:
        configured = [name for name in ("kafka", "nats") if getattr(settings, name) is not None]
        if not configured:
            raise TailError(f"{args.config} configures neither kafka nor nats; use --kafka or --nats")
        if len(configured) == 2:
            raise TailError(f"{args.config} configures both kafka and nats; choose one with --bus")
        bus = configured[0]
    if bus == "kafka":
        if settings.kafka is None:
            raise TailError(f"{args.config} has no kafka section; use --bus nats or --kafka")
        return KafkaSource(
            settings.kafka.bootstrap_servers,
            topic=args.topic or settings.kafka.events_topic,
            rooms=rooms,
            from_beginning=args.from_beginning,
            settings=settings.kafka,
            fix_hint=f"kafka.bootstrap_servers in {args.config}",
        )
    if settings.nats is None:
        raise TailError(f"{args.config} has no nats section; use --bus kafka or --nats")
    if args.from_beginning:
        raise TailError("--from-beginning is for Kafka (NATS core subscriptions only see new events)")
    return NatsSource(
        settings.nats.servers,
        prefix=args.prefix or settings.nats.subject_prefix,
        rooms=rooms,
        settings=settings.nats,
        fix_hint=f"nats.servers in {args.config}",
    )


@dataclass
class _Stats:
    printed: int = 0


async def pump(
    source: Source,
    emit: Callable[[Event], None],
    *,
    rooms: Sequence[str] = (),
    types: TypeMatcher | None = None,
    count: int | None = None,
    timeout_s: float | None = None,
    stop: asyncio.Event | None = None,
) -> tuple[int, str]:
    """Hand matching events to ``emit`` until count / silence / ``stop``; returns (emitted, why stopped)."""
    stats = _Stats()
    wanted_rooms = frozenset(rooms)
    matcher = types or TypeMatcher()

    async def consume() -> None:
        async for event in source:
            if wanted_rooms and event.get("lkroom", event.get("partitionkey")) not in wanted_rooms:
                continue
            if not matcher(str(event.get("type", ""))):
                continue
            emit(event)
            stats.printed += 1
            progressed.set()
            if count is not None and stats.printed >= count:
                return

    progressed = asyncio.Event()
    consumer = asyncio.create_task(consume())
    stopper = asyncio.create_task((stop or asyncio.Event()).wait())
    reason = "stopped"
    try:
        while True:
            progressed.clear()
            ticker = asyncio.create_task(progressed.wait())
            done, _ = await asyncio.wait(
                {consumer, stopper, ticker}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            ticker.cancel()
            if consumer in done:
                consumer.result()  # re-raises what the source raised
                reason = "count" if count is not None and stats.printed >= count else "end"
                break
            if stopper in done:
                reason = "signal"
                break
            if not done:
                reason = "timeout"
                break
    finally:
        for task in (consumer, stopper):
            task.cancel()
        await asyncio.gather(consumer, stopper, return_exceptions=True)
    return stats.printed, reason


async def run_tail(
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    *,
    environ: Mapping[str, str] | None = None,
) -> int:
    """``livekit-bridge tail``; 0 on count / Ctrl-C / SIGTERM, 1 if ``--timeout`` came before ``--count``,
    2 on a usage or connection error (one line on ``err``)."""
    if args.count is not None and args.count <= 0:
        print("livekit-bridge tail: --count must be positive", file=err)
        return 2
    if args.timeout is not None and args.timeout <= 0:
        print("livekit-bridge tail: --timeout must be positive", file=err)
        return 2
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        # aiokafka logs every failed connection attempt with a traceback; tail reports it in one line.
        for name in _KAFKA_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    width = output_width(out)

    def emit(event: Event) -> None:
        if args.json:
            text = json.dumps(event_json(event), ensure_ascii=False, separators=(",", ":"))
        else:
            text = format_line(event, width=width)
        out.write(text + "\n")
        out.flush()

    def note(message: str) -> None:
        print(f"livekit-bridge tail: {message}", file=err, flush=True)

    source: Source | None = None
    try:
        source = build_source(args, os.environ if environ is None else environ)
        if isinstance(source, KafkaSource):
            source.on_waiting = note
        start = asyncio.create_task(source.start())
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({start, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not start.done():
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            return 0
        start.result()
        note(f"reading {source.description} (Ctrl-C to stop)")
        printed, why = await pump(
            source,
            emit,
            rooms=args.room,
            types=TypeMatcher(tuple(args.type)),
            count=args.count,
            timeout_s=args.timeout,
            stop=stop,
        )
    except TailError as exc:
        note(str(exc))
        return 2
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if source is not None:
            await source.aclose()
    if why == "timeout" and args.count is not None:
        note(f"{printed} of {args.count} events before {args.timeout:g} s of silence")
        return 1
    return 0
