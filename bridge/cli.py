"""The ``livekit-bridge`` command line (also ``python -m bridge``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from bridge.errors import BridgeError


def _sim_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sim", help="run the LiveKit-protocol room simulator")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=7880)
    p.add_argument("--api-key", required=True)
    p.add_argument("--api-secret", required=True)
    p.add_argument("--scenario", type=Path, help="YAML scenario to play once a room is ready")
    p.add_argument("--room", action="append", default=[], help="room that exists at start (repeatable)")
    p.add_argument("--no-auto-create", action="store_true", help="404 for rooms that do not exist")
    p.add_argument("--no-v1", action="store_true", help="404 on /rtc/v1 so clients fall back to /rtc")
    p.add_argument("--join-timeout-s", type=float, default=60.0)
    p.add_argument("--refresh-interval-s", type=float, default=300.0)
    p.add_argument("--load-rooms", type=int, default=0, help="load mode: this many busy rooms")
    p.add_argument("--load-rate", type=float, default=100.0, help="load mode: events per second in all")
    p.add_argument(
        "--webhook-url", action="append", default=[], help="POST room_started/room_finished here (repeatable)"
    )


async def _run_sim(args: argparse.Namespace) -> int:
    from bridge.media.tuning import apply_scaling_knobs
    from bridge.sim.load import LoadGenerator
    from bridge.sim.scenario import Scenario
    from bridge.sim.server import SimConfig, SimServer

    config = SimConfig(
        keys={args.api_key: args.api_secret},
        host=args.host,
        port=args.port,
        auto_create_rooms=not args.no_auto_create,
        v1_enabled=not args.no_v1,
        join_timeout_s=args.join_timeout_s,
        refresh_interval_s=args.refresh_interval_s,
        rooms=tuple(args.room),
        webhook_urls=tuple(args.webhook_url),
    )
    apply_scaling_knobs()  # the simulator hosts one PC per bridge room as well
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SimServer(config) as server:
        print(f"simulator listening on {server.url}", flush=True)
        jobs: list[asyncio.Task[object]] = []
        if args.scenario is not None:
            jobs.append(asyncio.create_task(Scenario(server).run_file(args.scenario)))
        if args.load_rooms:
            load = LoadGenerator(server, rooms=args.load_rooms, rate_per_s=args.load_rate)
            jobs.append(asyncio.create_task(load.run()))
        await stop.wait()
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="livekit-bridge", description=__doc__)
    parser.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo", help="simulator + NATS + bridge on a scripted room, printing the events; no setup needed"
    )
    demo.add_argument("--scenario", type=Path, help="play this YAML scenario instead of the bundled one")
    demo.add_argument("--kafka", action="store_true", help="also start a Kafka-protocol broker (tansu)")
    demo.add_argument("--memory", action="store_true", help="no nats-server: use the in-memory bus")
    tail = sub.add_parser(
        "tail",
        help="pretty-print events from Kafka or NATS (filter by room and type)",
        description="Pretty-print the bridge's CloudEvents from Kafka or NATS, one line each (or --json).",
    )
    from bridge.tail import add_tail_arguments

    add_tail_arguments(tail)
    send = sub.add_parser(
        "send",
        help="publish a command to a room and wait for its result",
        description="Publish one command (NATS request or Kafka record) and print its command_result.",
    )
    from bridge.send import add_send_arguments

    add_send_arguments(send)
    run = sub.add_parser("run", help="the service: join the configured rooms and bridge them")
    run.add_argument("--config", type=Path, required=True, help="YAML settings file")
    check = sub.add_parser("check-config", help="validate settings and print them, secrets redacted")
    check.add_argument("--config", type=Path, required=True, help="YAML settings file")
    schemas = sub.add_parser(
        "schemas", help="generate the JSON Schemas, the AsyncAPI document and the README catalogues"
    )
    schemas.add_argument("--out", type=Path, default=Path("schemas"), help="output folder (default schemas)")
    schemas.add_argument("--check", action="store_true", help="fail with a diff if --out is out of date")
    schemas.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="also write (or with --check, compare) the event and command catalogues in this README",
    )
    _sim_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "demo":
            from bridge.demo import run_demo

            # Ctrl-C / SIGTERM: run_demo stops what it started and returns 130.
            return asyncio.run(
                run_demo(sys.stdout, scenario_file=args.scenario, kafka=args.kafka, use_nats=not args.memory)
            )
        if args.command == "tail":
            from bridge.tail import run_tail

            try:
                return asyncio.run(run_tail(args, sys.stdout, sys.stderr))
            except BrokenPipeError:
                # `tail | head`: the reader left, a normal way to stop. Point stdout at /dev/null so the
                # interpreter's final flush does not complain again.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
        if args.command == "send":
            from bridge.send import main_send

            return main_send(args)
        if args.command == "run":
            from bridge.app import run_service
            from bridge.config import load_settings
            from bridge.ops.logging import configure_logging, secrets_in

            settings = load_settings(args.config, os.environ)
            # logging.level/json from the settings; an explicit --log-level still wins over the level.
            configure_logging(
                settings.logging,
                secrets=secrets_in(settings),
                level=None if args.log_level == "WARNING" else args.log_level,
            )
            return asyncio.run(run_service(settings))
        if args.command == "check-config":
            from bridge.config import check_config_main

            return check_config_main(args.config, os.environ, sys.stdout)
        if args.command == "schemas":
            from bridge import schemas

            if args.check:
                drift = schemas.check(args.out, readme=args.readme)
                for line in drift:
                    print(line, file=sys.stderr)
                if drift:
                    print(f"livekit-bridge: {args.out} is out of date; run `make schemas`", file=sys.stderr)
                    return 1
                return 0
            written = schemas.write(args.out, readme=args.readme)
            print(f"wrote {len(written)} files to {args.out}")
            return 0
        if args.command == "sim":
            with contextlib.suppress(KeyboardInterrupt):
                return asyncio.run(_run_sim(args))
            return 0
    except BridgeError as exc:
        print(f"livekit-bridge: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
