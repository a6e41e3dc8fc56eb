"""The scenario API (plus a client's own requests) makes every SignalResponse variant happen.

A new variant in livekit-protocol fails ``test_every_variant_is_produced`` until the simulator can
produce it: nothing LiveKit can send goes untested downstream.
"""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection
from livekit.protocol import models, rtc

from support.signal_client import SignalClient, make_token
from support.simulator import running_sim

ALL_VARIANTS = {f.name for f in rtc.SignalResponse.DESCRIPTOR.oneofs_by_name["message"].fields}


async def publisher_offer() -> tuple[RTCPeerConnection, rtc.SessionDescription]:
    pc = RTCPeerConnection()
    pc.createDataChannel("_reliable")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, rtc.SessionDescription(type="offer", sdp=pc.localDescription.sdp, id=1)


async def test_every_variant_is_produced() -> None:
    seen: dict[str, rtc.SignalResponse] = {}
    async with running_sim() as (server, scenario):
        scenario.join("r1", "alice", name="Alice")
        mic = scenario.publish("r1", "alice", kind="audio")
        token = make_token("bridge", "r1", hidden=True, can_update_own_metadata=True)
        client = await SignalClient.open(server.url, token, params={"protocol": "17"})
        join = await client.expect("join")
        await client.expect("offer")
        await client.expect("trickle")

        pc, offer = await publisher_offer()
        await client.send(rtc.SignalRequest(offer=offer))
        answer = await client.expect("answer")
        assert answer.id == 1
        await pc.close()

        await client.send(
            rtc.SignalRequest(
                add_track=rtc.AddTrackRequest(
                    cid="cid-1", name="voice", type=models.AUDIO, source=models.MICROPHONE
                )
            )
        )
        published = await client.expect("track_published")
        own_track = published.track.sid
        await client.send(rtc.SignalRequest(ping=1))
        await client.send(rtc.SignalRequest(ping_req=rtc.Ping(timestamp=1)))
        await client.send(
            rtc.SignalRequest(subscription=rtc.UpdateSubscription(track_sids=["TR_missing"], subscribe=True))
        )
        await client.send(
            rtc.SignalRequest(update_metadata=rtc.UpdateParticipantMetadata(metadata="hello", request_id=7))
        )
        await client.send(
            rtc.SignalRequest(
                publish_data_track_request=rtc.PublishDataTrackRequest(pub_handle=3, name="telemetry")
            )
        )
        await client.expect("publish_data_track_response")
        await client.send(
            rtc.SignalRequest(unpublish_data_track_request=rtc.UnpublishDataTrackRequest(pub_handle=3))
        )
        key = models.DataBlobKey(generic="schema")
        await client.send(
            rtc.SignalRequest(
                store_data_blob_request=rtc.StoreDataBlobRequest(
                    request_id=8, blob=models.DataBlob(key=key, contents=b"{}")
                )
            )
        )
        await client.expect("store_data_blob_response")
        await client.send(
            rtc.SignalRequest(
                get_data_blob_request=rtc.GetDataBlobRequest(
                    request_id=9, participant_identity="bridge", key=key
                )
            )
        )

        scenario.speak("r1", {"alice": 0.7})
        scenario.quality("r1", {"alice": "excellent"})
        scenario.set_room_metadata("r1", metadata='{"topic": "demo"}')
        scenario.mute("r1", "bridge", track=own_track)
        scenario.stream_state("r1", "bridge", publisher="alice", track=mic)
        scenario.subscribed_quality("r1", "bridge", track=own_track)
        scenario.permission_update("r1", "bridge", publisher="alice", track=mic, allowed=False)
        scenario.subscribed("r1", "bridge", track=own_track)
        scenario.subscribed_audio_codec("r1", "bridge", track=own_track)
        scenario.media_sections("r1", "bridge", audios=1, videos=1)
        scenario.publish_data_track("r1", "alice", name="lidar")
        scenario.data_track_handles("r1", "bridge")
        scenario.unpublish("r1", "bridge", track=own_track)
        scenario.move("r1", "bridge", to_room="r2")
        await client.expect("room_moved")

        # Resume on a fresh socket, then get kicked.
        server.session("r2", "bridge")._on_connected()
        scenario.drop_socket("r2", "bridge")
        await asyncio.wait_for(client.closed.wait(), 5)
        for r in client.responses:
            seen.setdefault(r.WhichOneof("message") or "", r)
        await client.close()
        new_token = seen["room_moved"].room_moved.token
        params = {"reconnect": "1", "sid": seen["room_moved"].room_moved.participant.sid}
        async with await SignalClient.open(server.url, new_token, params=params) as resumed:
            await resumed.expect("reconnect")
            scenario.kick("r2", "bridge")
            await resumed.expect("leave")
            for r in resumed.responses:
                seen.setdefault(r.WhichOneof("message") or "", r)

    missing = ALL_VARIANTS - set(seen)
    assert not missing, f"scenario never produced: {sorted(missing)}"
    for kind, response in seen.items():
        message = getattr(response, kind)
        if isinstance(message, str | int):
            assert message, f"{kind} arrived empty"
        else:
            assert message.ListFields(), f"{kind} arrived empty"
        # Round trip through livekit-protocol's own parser.
        assert rtc.SignalResponse.FromString(response.SerializeToString()) == response

    assert join.room.name == "r1"
    assert seen["room_moved"].room_moved.room.name == "r2"
    assert seen["leave"].leave.reason == models.PARTICIPANT_REMOVED
    assert seen["request_response"].request_response.request_id in (7, 9)
    assert seen["speakers_changed"].speakers_changed.speakers[0].level > 0.5
    assert seen["get_data_blob_response"].get_data_blob_response.blob.contents == b"{}"
