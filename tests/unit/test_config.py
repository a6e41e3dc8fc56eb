"""Settings load from YAML plus BRIDGE_* overrides, name the key in every error, and never show a secret."""

from __future__ import annotations

import io
import re
import string
import traceback
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from bridge.config import REDACTED, Secret, Settings, check_config_main, load_settings
from bridge.errors import ConfigError

MINIMAL = "livekit:\n  url: wss://lk.example.com\n  api_key: key\n  api_secret: sesame-secret\n"
REQUIRED_ENV = {
    "BRIDGE_LIVEKIT__URL": "wss://lk.example.com",
    "BRIDGE_LIVEKIT__API_KEY": "key",
    "BRIDGE_LIVEKIT__API_SECRET": "sesame-secret",
}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(text)
    return path


def from_data(tmp_path: Path, data: dict[str, Any], environ: dict[str, str] | None = None) -> Settings:
    return load_settings(write(tmp_path, yaml.safe_dump(data)), environ or {})


def minimal(**sections: Any) -> dict[str, Any]:
    return {
        "livekit": {"url": "wss://lk.example.com", "api_key": "key", "api_secret": "sesame-secret"},
        **sections,
    }


def test_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL), {})
    lk = s.livekit
    assert (lk.identity, lk.ping_interval_s, lk.token_ttl_s) == ("livekit-bridge", None, 600.0)
    assert (lk.reconnect_backoff_initial_s, lk.reconnect_backoff_max_s, lk.leave_deadline_s) == (
        0.5,
        30.0,
        5.0,
    )
    assert (lk.can_publish, lk.can_update_own_metadata, lk.auto_subscribe) == (False, False, False)
    assert lk.max_frame_bytes == 2 * 1024 * 1024
    assert s.rooms.static == ()
    assert s.events.data_format == "protobuf"
    assert s.kafka is None
    assert s.nats is None
    assert (s.http.listen, s.http.host, s.http.port) == ("0.0.0.0:8080", "0.0.0.0", 8080)
    assert (s.outbox.capacity, s.outbox.overflow) == (10_000, "block")
    assert (s.logging.level, s.logging.json_) == ("INFO", False)


def test_bus_sections_turn_buses_on_with_documented_defaults(tmp_path: Path) -> None:
    s = from_data(
        tmp_path,
        minimal(kafka={"bootstrap_servers": "k1:9092, k2:9092"}, nats={"servers": ["nats://n:4222"]}),
    )
    assert s.kafka is not None
    assert s.kafka.bootstrap_servers == ("k1:9092", "k2:9092")
    assert (s.kafka.events_topic, s.kafka.commands_topic, s.kafka.dead_letter_topic) == (
        "livekit.events",
        "livekit.commands",
        "livekit.commands.dlq",
    )
    assert (s.kafka.enable_idempotence, s.kafka.acks, s.kafka.compression_type) == (True, "all", "none")
    assert s.nats is not None
    assert s.nats.servers == ("nats://n:4222",)
    assert (s.nats.subject_prefix, s.nats.jetstream, s.nats.binary_mode) == ("livekit", False, False)


def test_empty_bus_section_counts_as_absent(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL + "kafka:\nnats:\n"), {})
    assert s.kafka is None
    assert s.nats is None


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "rooms:\n  static: [x]\nlogging:\n  level: debug\n")
    s = load_settings(
        path,
        {
            "BRIDGE_LIVEKIT__IDENTITY": "bridge-7",
            "BRIDGE_ROOMS__STATIC": "[a, b]",
            "BRIDGE_LIVEKIT__TOKEN_TTL_S": "120",
            "BRIDGE_LIVEKIT__AUTO_SUBSCRIBE": "true",
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": "kafka:9092",
            "BRIDGE_LOGGING__JSON": "yes",
            "BRIDGE_TEST_ALLOW_SKIPS": "1",  # not a setting: no double underscore, not a section name
            "PATH": "/usr/bin",
        },
    )
    assert s.livekit.identity == "bridge-7"
    assert s.livekit.url == "wss://lk.example.com"  # untouched file value survives
    assert s.rooms.static == ("a", "b")
    assert s.livekit.token_ttl_s == 120.0
    assert s.livekit.auto_subscribe is True
    assert s.kafka is not None
    assert s.kafka.bootstrap_servers == ("kafka:9092",)
    assert s.logging.json_ is True
    assert s.logging.level == "DEBUG"  # from the file


def test_env_alone_is_enough() -> None:
    s = load_settings(None, {**REQUIRED_ENV, "BRIDGE_NATS__SERVERS": "nats://a:4222,nats://b:4222"})
    assert s.livekit.api_secret.reveal() == "sesame-secret"
    assert s.nats is not None
    assert s.nats.servers == ("nats://a:4222", "nats://b:4222")


@pytest.mark.parametrize("value", ["0123", "yes", "null", "1:30", "[x]"])
def test_env_strings_and_secrets_are_taken_verbatim(value: str) -> None:
    env = {**REQUIRED_ENV, "BRIDGE_LIVEKIT__API_KEY": value, "BRIDGE_LIVEKIT__API_SECRET": value}
    s = load_settings(None, env)
    assert s.livekit.api_key == value
    assert s.livekit.api_secret.reveal() == value


def test_a_single_room_name_from_env_is_not_yaml_parsed() -> None:
    assert load_settings(None, {**REQUIRED_ENV, "BRIDGE_ROOMS__STATIC": "yes"}).rooms.static == ("yes",)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://lk:7880", "ws://lk:7880"),
        ("https://lk.example.com/", "wss://lk.example.com"),
        ("WSS://lk.example.com", "wss://lk.example.com"),
        ("ws://127.0.0.1:7880", "ws://127.0.0.1:7880"),
    ],
)
def test_url_becomes_a_websocket_url(given: str, expected: str) -> None:
    assert load_settings(None, {**REQUIRED_ENV, "BRIDGE_LIVEKIT__URL": given}).livekit.url == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            minimal(kafka={"bootstrap_servers": "k:9092", "compresion_type": "gzip"}),
            "kafka.compresion_type: unknown key",
        ),
        (minimal(kafak={}), "kafak: unknown key (did you mean kafka?)"),
        (
            minimal(kafka={"bootstrap_servers": "k:9092", "compression_type": "brotli"}),
            "kafka.compression_type: ",
        ),
        (minimal(kafka={"bootstrap_servers": "k:9092", "acks": 1}), "kafka.acks: must be 'all' when"),
        (minimal(kafka={"bootstrap_servers": []}), "kafka.bootstrap_servers: "),
        (minimal(kafka={"events_topic": "x"}), "kafka.bootstrap_servers: required"),
        (minimal(kafka={"bootstrap_servers": "k", "events_topic": "bad topic"}), "kafka.events_topic: "),
        (
            minimal(kafka={"bootstrap_servers": "k", "security_protocol": "SASL_SSL"}),
            "kafka.sasl_mechanism: required",
        ),
        (
            minimal(kafka={"bootstrap_servers": "k", "ssl_cafile": "/nonexistent/ca.pem"}),
            "kafka.ssl_cafile: ",
        ),
        (minimal(kafka="k:9092"), "kafka: must be a mapping"),
        (minimal(rooms=["a"]), "rooms: must be a mapping"),
        (minimal(rooms={"static": ["a", 7]}), "rooms.static[1]: must be a string"),
        (minimal(rooms={"static": ["a", "a"]}), "rooms.static: room 'a' is listed twice"),
        (minimal(events={"data_format": "xml"}), "events.data_format: must be 'protobuf' or 'json'"),
        (minimal(nats={"servers": "localhost:4222"}), "nats.servers: each must look like nats://"),
        (minimal(nats={"servers": "nats://n", "subject_prefix": "a.*"}), "nats.subject_prefix: "),
        (minimal(nats={"servers": "nats://u:pw@n:4222"}), "nats.servers: must not contain credentials"),
        (minimal(nats={"servers": "nats://n", "user": "u"}), "nats.password: required when user is set"),
        (minimal(http={"listen": "8080"}), "http.listen: must be HOST:PORT"),
        (minimal(outbox={"capacity": 0}), "outbox.capacity: must be greater than 0"),
        (minimal(outbox={"overflow": "drop_newest"}), "outbox.overflow: "),
        (minimal(logging={"level": "LOUD"}), "logging.level: "),
        (minimal(logging={"json": "yes please"}), "logging.json: must be a valid boolean"),
        (
            {"livekit": {"url": "ftp://x", "api_key": "k", "api_secret": "s"}},
            "livekit.url: must start with ws://",
        ),
        (
            {"livekit": {"url": "ws://", "api_key": "k", "api_secret": "s"}},
            "livekit.url: must include a host",
        ),
        ({"livekit": {"api_key": "k", "api_secret": "s"}}, "livekit.url: required"),
        ({}, "livekit.url: required (set it in the file or as BRIDGE_LIVEKIT__URL)"),
        ({"livekit": "wss://x"}, "livekit: must be a mapping"),
        (
            minimal(livekit={**minimal()["livekit"], "token_ttl_s": "10m"}),
            "livekit.token_ttl_s: must be a valid number",
        ),
        (
            minimal(livekit={**minimal()["livekit"], "can_publish": 1}),
            "livekit.can_publish: must be a valid boolean",
        ),
        (
            minimal(livekit={**minimal()["livekit"], "reconnect_backoff_max_s": 0.1}),
            "livekit.reconnect_backoff_max_s: must be >= reconnect_backoff_initial_s",
        ),
    ],
)
def test_bad_file_values_name_the_dotted_key(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_data(tmp_path, data)
    assert message in str(info.value)
    assert str(info.value).startswith(info.value.key + ": ")


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("BRIDGE_LIVEKIT__URL", "ftp://x", "livekit.url: must start with ws://, wss://, http:// or https://"),
        ("BRIDGE_OUTBOX__CAPACTY", "5", "outbox.capacty: unknown key (did you mean capacity?)"),
        ("BRIDGE_OUTBOX__CAPACITY", "lots", "outbox.capacity: must be a valid integer"),
        ("BRIDGE_LIVEKIT__MAX_FRAME_BYTES", "-1", "livekit.max_frame_bytes: must be greater than 0"),
        ("BRIDGE_EVENTS__INCLUDE", "[a, [b]]", "events.include[1]: must be a string"),
    ],
)
def test_bad_env_values_name_the_key_and_the_variable(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{re.escape(message)}.*\(from {var}\)") as info:
        load_settings(None, {**REQUIRED_ENV, var: value})
    assert info.value.key == message.split(":", maxsplit=1)[0]


@pytest.mark.parametrize(
    ("var", "message"),
    [
        (
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS",
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS: settings use a double underscore",
        ),
        ("BRIDGE_LIVEKIT____URL", "BRIDGE_LIVEKIT____URL: empty key"),
        ("BRIDGE_LIVEKIT__URL__HOST", "livekit.url: is not a section"),
    ],
)
def test_malformed_env_names_are_errors(var: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}"):
        load_settings(None, {**REQUIRED_ENV, var: "x"})


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        from_data(tmp_path, minimal(outbox={"capacity": 0, "overflow": "x"}))
    assert info.value.key == "outbox.capacity"
    assert "outbox.overflow" in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("livekit: [unclosed\n", "not valid YAML at line"),
        ("- a\n- b\n", "must be a mapping of sections"),
        (MINIMAL + "livekit:\n  identity: again\n", "duplicate key 'livekit'"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_settings(path, {})
    assert info.value.key == str(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file") as info:
        load_settings(tmp_path / "absent.yaml", {})
    assert info.value.key == str(tmp_path / "absent.yaml")


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, MINIMAL), {})
    with pytest.raises(ValidationError, match="frozen"):
        s.livekit.identity = "other"
    with pytest.raises(ValidationError, match="frozen"):
        s.kafka = None
    with pytest.raises(AttributeError):
        s.livekit.api_secret._value = "x"


def test_secret_type() -> None:
    secret = Secret("hunter2-hunter2")
    assert str(secret) == repr(secret) == f"{secret}" == REDACTED
    assert secret.reveal() == "hunter2-hunter2"
    assert secret == Secret("hunter2-hunter2")
    assert secret != Secret("other")


def test_kafka_sasl_and_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    kafka = {
        "bootstrap_servers": ["k:9093"],
        "security_protocol": "sasl_ssl",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "bridge",
        "sasl_password": "kafka-pass-123",
        "ssl_cafile": str(ca),
        "compression_type": "zstd",
        "linger_s": 0.02,
    }
    s = from_data(tmp_path, minimal(kafka=kafka))
    assert s.kafka is not None
    assert s.kafka.security_protocol == "SASL_SSL"
    assert s.kafka.sasl_password is not None
    assert s.kafka.sasl_password.reveal() == "kafka-pass-123"
    assert s.kafka.ssl_cafile == ca
    assert s.redacted()["kafka"]["sasl_password"] == REDACTED
    assert s.redacted()["kafka"]["ssl_cafile"] == str(ca)


def test_events_selection_globs(tmp_path: Path) -> None:
    events = {"include": ["io.livekit.signal.*"], "exclude": ["*.speakers_changed.v1"]}
    s = from_data(tmp_path, minimal(events=events))
    assert s.events.selects("io.livekit.signal.join.v1")
    assert not s.events.selects("io.livekit.signal.speakers_changed.v1")
    assert not s.events.selects("io.livekit.bridge.command_result.v1")


def test_check_config_prints_redacted_yaml(tmp_path: Path) -> None:
    out = io.StringIO()
    path = write(tmp_path, MINIMAL)
    assert (
        check_config_main(
            path, {"BRIDGE_NATS__TOKEN": "nats-token-xyz", "BRIDGE_NATS__SERVERS": "nats://n"}, out
        )
        == 0
    )
    printed = yaml.safe_load(out.getvalue())
    assert printed["livekit"]["api_secret"] == REDACTED
    assert printed["nats"]["token"] == REDACTED
    assert printed["livekit"]["url"] == "wss://lk.example.com"
    assert "sesame-secret" not in out.getvalue()
    assert "nats-token-xyz" not in out.getvalue()


def test_check_config_reports_errors_with_exit_status_2(tmp_path: Path) -> None:
    out = io.StringIO()
    assert check_config_main(write(tmp_path, MINIMAL + "bogus: 1\n"), {}, out) == 2
    assert out.getvalue() == "livekit-bridge: bogus: unknown key\n"


# --- secrets never leak --------------------------------------------------------------------------------

secret_text = st.text(string.ascii_letters + string.digits + "!#$%&*+-=?@^_~", min_size=10, max_size=40)


def _everything_shown(environ: dict[str, str]) -> str:
    """All text a user or log could see for these settings: repr, str, redacted(), check-config output."""
    s = load_settings(None, environ)
    out = io.StringIO()
    check_config_main(Path("/dev/null"), environ, out)
    return "\n".join([repr(s), str(s), repr(s.redacted()), out.getvalue()])


def _error_text(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ)
    return "".join(traceback.format_exception(info.value))


@settings(max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(secret=secret_text)
def test_secrets_never_appear_in_repr_or_redacted_output(secret: str) -> None:
    def env(value: str) -> dict[str, str]:
        return {
            **REQUIRED_ENV,
            "BRIDGE_LIVEKIT__API_SECRET": value,
            "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": "k:9092",
            "BRIDGE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "BRIDGE_KAFKA__SASL_MECHANISM": "PLAIN",
            "BRIDGE_KAFKA__SASL_USERNAME": "u",
            "BRIDGE_KAFKA__SASL_PASSWORD": value,
            "BRIDGE_NATS__SERVERS": "nats://n:4222",
            "BRIDGE_NATS__TOKEN": value,
        }

    assume(secret not in _everything_shown(env("placeholder-value")))
    assert secret not in _everything_shown(env(secret))


@settings(max_examples=50)
@given(secret=secret_text)
def test_secrets_never_appear_in_errors(secret: str) -> None:
    baseline = _error_text({**REQUIRED_ENV, "BRIDGE_LIVEKIT__URL": "placeholder-value"})
    assume(secret not in baseline)
    # The overflow error lists the allowed values; a "secret" that is part of them is not a leak.
    assume(secret not in "'block' or 'drop_oldest'")
    cases = [
        # A secret pasted into the wrong key, an unknown key, a secret key that is not allowed here.
        {**REQUIRED_ENV, "BRIDGE_LIVEKIT__URL": secret},
        {**REQUIRED_ENV, "BRIDGE_LIVEKIT__API_SECRETT": secret},
        {**REQUIRED_ENV, "BRIDGE_NATS__SERVERS": "nats://n", "BRIDGE_NATS__PASSWORD": secret},
        {**REQUIRED_ENV, "BRIDGE_KAFKA__BOOTSTRAP_SERVERS": "k", "BRIDGE_KAFKA__SASL_PASSWORD": secret},
        {**REQUIRED_ENV, "BRIDGE_OUTBOX__OVERFLOW": secret},
    ]
    for environ in cases:
        assert secret not in _error_text(environ)


def test_secret_given_as_a_non_string_names_the_key_only(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        from_data(tmp_path, minimal(livekit={**minimal()["livekit"], "api_secret": ["hidden-value-42"]}))
    assert str(info.value) == "livekit.api_secret: must be a string (quote it in YAML)"
