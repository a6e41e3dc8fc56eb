"""PlaybackTrack on real files and a real (local) HTTP source, without a room.

- opening and reading never use the event loop's default executor (shared with aiortc's encoders and
  the recorder): playback runs while that executor is fully taken;
- a URL is read one item at a time: packets a live source has delivered reach ``recv`` at once, not
  when a whole batch has arrived (or never, when the source stalls before the batch is complete);
- an error of a kind the reader does not expect still ends the track (``recv`` does not wait forever).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http.server
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from aiortc.mediastreams import MediaStreamError

from bridge.media.playback import PlaybackTrack, open_playback
from bridge.media.sources import choose_kind, describe, open_source
from support.media_files import _tone, write_ogg_opus

WAIT = 5.0


async def _recv(track: PlaybackTrack, count: int, within: float = WAIT) -> None:
    for _ in range(count):
        await asyncio.wait_for(track.recv(), within)


async def test_playback_runs_while_the_default_executor_is_taken(tmp_path: Path) -> None:
    path = tmp_path / "tone.ogg"
    await asyncio.to_thread(write_ogg_opus, path, 1.0)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="default"))
    gate = threading.Event()
    taken = loop.run_in_executor(None, gate.wait, 60)  # its only thread, until the test is done
    try:
        track = await asyncio.wait_for(
            open_playback(str(path), url=False, shown="tone.ogg", kind="", loop=False), WAIT
        )
        try:
            track.start()
            await _recv(track, 10)
        finally:
            await asyncio.wait_for(track.aclose(), WAIT)
        assert track.sent == 10
    finally:
        gate.set()
        await taken


async def _recv_to_the_end(track: PlaybackTrack) -> int:
    """Items received until the track ends (``recv`` raises MediaStreamError); each within ``WAIT``."""
    received = 0
    while True:
        try:
            await asyncio.wait_for(track.recv(), WAIT)
        except MediaStreamError:
            return received
        received += 1


def _packets_in(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(container.streams[0]) if packet.size)


def _ogg_pages(path: Path) -> tuple[bytes, list[int]]:
    data = path.read_bytes()
    starts = [i for i in range(len(data) - 3) if data[i : i + 4] == b"OggS"]
    return data, starts


def _write_paged_ogg(path: Path, seconds: float) -> None:
    """An opus tone in Ogg with one 20 ms packet per page, so a prefix of the file holds whole packets."""
    with av.open(str(path), "w", options={"page_duration": "20000"}) as container:
        stream: Any = container.add_stream("libopus", rate=48000)
        stream.layout = "mono"
        for i in range(int(seconds * 50)):
            container.mux(stream.encode(_tone(i)))
        container.mux(stream.encode(None))


@contextlib.contextmanager
def _stalling_server(data: bytes, sent: int) -> Iterator[tuple[str, threading.Event]]:
    """Serves ``data``'s first ``sent`` bytes as if the rest were still coming (a live source), until the
    event it yields is set."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "audio/ogg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:sent])
            self.wfile.flush()
            release.wait(60)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="stalling-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/live.ogg", release
    finally:
        release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


async def test_a_url_track_hands_over_each_packet_as_it_arrives(tmp_path: Path) -> None:
    path = tmp_path / "live.ogg"
    await asyncio.to_thread(_write_paged_ogg, path, 2.0)
    data, pages = _ogg_pages(path)
    delivered = 12  # data pages (one packet each) after the two header pages; fewer than one read batch
    with _stalling_server(data, pages[2 + delivered]) as (url, release):
        track = await open_playback(url, url=True, shown="live.ogg", kind="", loop=False)
        try:
            track.start()
            # Paced at 20 ms each, far sooner than FFmpeg's 5 s socket timeout would end a stalled read.
            await _recv(track, delivered - 2, within=2.0)
            assert track.readyState == "live"
            assert not track.error
        finally:
            release.set()  # the server hangs up: a read still waiting for more returns
            await asyncio.wait_for(track.aclose(), WAIT)


async def test_an_unexpected_error_ends_the_track(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "tone.ogg"
    await asyncio.to_thread(write_ogg_opus, path, 0.2)
    container = await asyncio.to_thread(open_source, str(path), url=False, shown="tone.ogg")
    stream = choose_kind("audio", describe(container))

    def reopen() -> Any:
        raise RuntimeError("not a source error")  # the second pass of the loop fails unexpectedly

    track = PlaybackTrack(container, stream, reopen=reopen, shown="tone.ogg", loop=True)
    try:
        track.start()
        received = await _recv_to_the_end(track)
        assert received == await asyncio.to_thread(_packets_in, path)  # the first pass, whole
        assert track.exhausted
        assert track.stopped.is_set()
        assert track.error == "RuntimeError: unexpected error"
    finally:
        await asyncio.wait_for(track.aclose(), WAIT)
    logged = [r for r in caplog.records if r.getMessage().startswith("playback of tone.ogg ended")]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None
