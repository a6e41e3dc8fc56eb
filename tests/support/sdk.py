"""Drive the real LiveKit SDK in a subprocess (tests/conformance/sdk_client.py) and read its events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

CLIENT = Path(__file__).resolve().parent.parent / "conformance" / "sdk_client.py"

Event = dict[str, Any]


class SdkClient:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[Event] = []
        self.stderr: list[str] = []
        self._changed = asyncio.Event()
        self._readers = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # the SDK's native core may print its own lines
            self.events.append(event)
            self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def wait_for(
        self, event: str, *, within: float = 20.0, where: Callable[[Event], bool] = lambda e: True
    ) -> Event:
        async def find() -> Event:
            while True:
                for e in self.events:
                    if e["event"] == event and where(e):
                        return e
                if self.proc.returncode is not None and self._readers[0].done():
                    raise AssertionError(self._explain(f"SDK exited before {event!r}"))
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), 0.5)

        try:
            return await asyncio.wait_for(find(), within)
        except TimeoutError:
            raise AssertionError(self._explain(f"no {event!r} from the SDK within {within}s")) from None

    def _explain(self, what: str) -> str:
        seen = [e["event"] for e in self.events]
        tail = "\n".join(self.stderr[-15:])
        return f"{what}; events: {seen}\nSDK stderr tail:\n{tail}"

    async def command(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        with contextlib.suppress(ProcessLookupError):
            await asyncio.wait_for(self.proc.wait(), 10)
        for task in self._readers:
            task.cancel()


@asynccontextmanager
async def sdk_client(url: str, token: str, *, mode: str) -> AsyncIterator[SdkClient]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CLIENT),
        "--url",
        url,
        "--token",
        token,
        "--mode",
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    client = SdkClient(proc)
    try:
        yield client
    finally:
        await client.stop()
