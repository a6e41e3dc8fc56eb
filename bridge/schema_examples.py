"""Example ``data`` for every event and command type, and what each signal command does.

The generator (``bridge/asyncapi.py``) puts these in ``schemas/asyncapi.yaml`` and the README catalogues.
They are the protobuf JSON mapping of a plausible message in room ``standup`` (alice and bob, the bridge as
``livekit-bridge``); ``tests/unit/test_schemas.py`` parses each one into its message, validates it against
its JSON Schema and runs every command example through the command validator, and it fails when a type has
no entry here (the generator falls back to ``{}`` so a LiveKit upgrade never breaks generation itself).
"""

from __future__ import annotations

from typing import Any, Final

ROOM: Final = "standup"
ROOM_SID: Final = "RM_k3Jd8sP2qWxe"
SESSION: Final = "9f1c2e7a"
SOURCE: Final = "livekit://lk.example.com/rooms/standup"
TIME: Final = "2025-06-10T09:30:12.345678Z"
TRACEPARENT: Final = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

_ALICE: Final[dict[str, Any]] = {
    "sid": "PA_alice7Kd2",
    "identity": "alice",
    "name": "Alice",
    "state": "ACTIVE",
    "metadata": '{"role":"host"}',
    "joinedAt": "1749547800",
    "version": 4,
    "isPublisher": True,
    "attributes": {"team": "blue"},
    "permission": {"canSubscribe": True, "canPublish": True, "canPublishData": True},
    "tracks": [
        {
            "sid": "TR_AMk2s9dLq",
            "type": "AUDIO",
            "name": "microphone",
            "source": "MICROPHONE",
            "mimeType": "audio/opus",
        }
    ],
}
_ROOM_INFO: Final[dict[str, Any]] = {
    "sid": ROOM_SID,
    "name": ROOM,
    "metadata": '{"topic":"daily standup"}',
    "numParticipants": 3,
    "numPublishers": 1,
    "creationTime": "1749547200",
    "emptyTimeout": 300,
}
_BRIDGE_PARTICIPANT: Final[dict[str, Any]] = {
    "sid": "PA_bridge9Qx1",
    "identity": "livekit-bridge",
    "state": "JOINED",
    "permission": {"canSubscribe": True, "canPublishData": True, "hidden": True},
}
_TURN: Final[dict[str, Any]] = {
    "urls": ["turn:turn.example.com:3478?transport=udp"],
    "username": "REDACTED",
    "credential": "REDACTED",
}

# Signal events: the SignalResponse oneof field -> data.
SIGNAL_EVENTS: Final[dict[str, Any]] = {
    "join": {
        "room": _ROOM_INFO,
        "participant": _BRIDGE_PARTICIPANT,
        "otherParticipants": [_ALICE],
        "serverVersion": "1.8.4",
        "serverRegion": "eu-west",
        "iceServers": [_TURN],
        "subscriberPrimary": True,
        "pingTimeout": 15,
        "pingInterval": 5,
    },
    "answer": {"type": "answer", "sdp": "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n...", "id": 2},
    "offer": {"type": "offer", "sdp": "v=0\r\no=- 3012897434 1 IN IP4 0.0.0.0\r\n...", "id": 1},
    "trickle": {
        "candidateInit": '{"candidate":"candidate:1 1 udp 2130706431 10.0.0.5 50000 typ host",'
        '"sdpMid":"0","sdpMLineIndex":0}',
        "target": "SUBSCRIBER",
    },
    "update": {"participants": [_ALICE]},
    "track_published": {
        "cid": "bridge-audio-1",
        "track": {"sid": "TR_AMbr1dge", "type": "AUDIO", "name": "announcements", "source": "MICROPHONE"},
    },
    "leave": {"canReconnect": True, "reason": "SERVER_SHUTDOWN", "action": "RECONNECT"},
    "mute": {"sid": "TR_AMbr1dge", "muted": True},
    "speakers_changed": {
        "speakers": [
            {"sid": "PA_alice7Kd2", "level": 0.72, "active": True},
            {"sid": "PA_bob3Fq9", "level": 0.0, "active": False},
        ]
    },
    "room_update": {"room": {**_ROOM_INFO, "activeRecording": True}},
    "connection_quality": {
        "updates": [{"participantSid": "PA_alice7Kd2", "quality": "EXCELLENT", "score": 4.6}]
    },
    "stream_state_update": {
        "streamStates": [{"participantSid": "PA_bob3Fq9", "trackSid": "TR_VCb0bCam", "state": "PAUSED"}]
    },
    "subscribed_quality_update": {
        "trackSid": "TR_VCbr1dge",
        "subscribedQualities": [{"quality": "LOW", "enabled": True}, {"quality": "HIGH", "enabled": False}],
    },
    "subscription_permission_update": {
        "participantSid": "PA_bob3Fq9",
        "trackSid": "TR_VCb0bCam",
        "allowed": False,
    },
    "refresh_token": "REDACTED",
    "track_unpublished": {"trackSid": "TR_AMbr1dge"},
    "pong": "1749547812345",
    "reconnect": {"iceServers": [_TURN], "lastMessageSeq": 42},
    "pong_resp": {"lastPingTimestamp": "1749547812300", "timestamp": "1749547812345"},
    "subscription_response": {"trackSid": "TR_VCgone", "err": "SE_TRACK_NOTFOUND"},
    "request_response": {"requestId": 7, "reason": "NOT_ALLOWED", "message": "does not have permission"},
    "track_subscribed": {"trackSid": "TR_AMbr1dge"},
    "room_moved": {
        "room": {"sid": "RM_Zp4n7Qw1", "name": "standup-breakout"},
        "token": "REDACTED",
        "participant": _BRIDGE_PARTICIPANT,
    },
    "media_sections_requirement": {"numAudios": 2, "numVideos": 1},
    "subscribed_audio_codec_update": {
        "trackSid": "TR_AMbr1dge",
        "subscribedAudioCodecs": [{"codec": "opus", "enabled": True}],
    },
    "publish_data_track_response": {"info": {"pubHandle": 1, "sid": "DT_tel3m3try", "name": "telemetry"}},
    "unpublish_data_track_response": {"info": {"pubHandle": 1, "sid": "DT_tel3m3try", "name": "telemetry"}},
    "data_track_subscriber_handles": {
        "subHandles": {
            "3": {"publisherIdentity": "alice", "publisherSid": "PA_alice7Kd2", "trackSid": "DT_s3nsors"}
        }
    },
    "store_data_blob_response": {"requestId": 12, "key": {"generic": "agenda"}},
    "get_data_blob_response": {
        "requestId": 13,
        "blob": {"key": {"generic": "agenda"}, "contents": "eyJpdGVtcyI6WyJkZW1vIl19"},
    },
}

# Data events: the DataPacket oneof field -> data (the sender, alice, is the event's subject).
DATA_EVENTS: Final[dict[str, Any]] = {
    "user": {
        "participantIdentity": "alice",
        "payload": "eyJoZWxsbyI6IndvcmxkIn0=",
        "topic": "chat",
        "destinationIdentities": ["livekit-bridge"],
    },
    "speaker": {"speakers": [{"sid": "PA_alice7Kd2", "level": 0.5, "active": True}]},
    "sip_dtmf": {"code": 5, "digit": "5"},
    "transcription": {
        "transcribedParticipantIdentity": "alice",
        "trackId": "TR_AMk2s9dLq",
        "segments": [
            {
                "id": "seg-1",
                "text": "Good morning everyone",
                "startTime": "0",
                "endTime": "1800",
                "final": True,
                "language": "en",
            }
        ],
    },
    "metrics": {"timestampMs": "1749547812345", "strData": ["alice"]},
    "chat_message": {"id": "chat-5a1", "timestamp": "1749547812345", "message": "Shall we start?"},
    "rpc_request": {
        "id": "rpc-8c2",
        "method": "getAgenda",
        "payload": '{"day":"today"}',
        "responseTimeoutMs": 10000,
        "version": 1,
    },
    "rpc_ack": {"requestId": "rpc-8c2"},
    "rpc_response": {"requestId": "rpc-8c2", "payload": '{"items":["demo","retro"]}'},
    "stream_header": {
        "streamId": "st-71b",
        "timestamp": "1749547812345",
        "topic": "lk.chat",
        "mimeType": "text/plain",
        "totalLength": "21",
        "textHeader": {"version": 1},
    },
    "stream_chunk": {"streamId": "st-71b", "chunkIndex": "0", "content": "R29vZCBtb3JuaW5nIGV2ZXJ5b25l"},
    "stream_trailer": {"streamId": "st-71b"},
    "encrypted_packet": {"encryptionType": "GCM", "iv": "AAECAwQFBgcICQoL", "encryptedValue": "3q2+7w=="},
}

# Bridge events: the bridge event name -> data.
BRIDGE_EVENTS: Final[dict[str, Any]] = {
    "session_started": {
        "room": ROOM,
        "roomSid": ROOM_SID,
        "participantSid": "PA_bridge9Qx1",
        "identity": "livekit-bridge",
        "serverVersion": "1.8.4",
        "serverRegion": "eu-west",
        "serverProtocol": 16,
    },
    "session_resumed": {"room": ROOM, "participantSid": "PA_bridge9Qx1", "resumes": 1},
    "session_ended": {"room": ROOM, "reason": "left by command", "disconnectReason": "CLIENT_INITIATED"},
    "room_snapshot": {
        "cause": "CAUSE_JOIN",
        "room": _ROOM_INFO,
        "participants": [_ALICE],
        "bridgeParticipantSid": "PA_bridge9Qx1",
    },
    "gap": {
        "bus": "kafka",
        "dropped": "3",
        "firstSequence": "118",
        "lastSequence": "120",
        "reason": "outbox_full",
    },
    "command_result": {
        "commandId": "cmd-2f6b",
        "commandType": "io.livekit.command.bridge.send_data.v1",
        "status": "STATUS_APPLIED",
    },
    "text_stream": {
        "streamId": "st-71b",
        "topic": "lk.chat",
        "text": "Good morning everyone",
        "participantIdentity": "alice",
        "timestamp": "1749547812345",
        "mimeType": "text/plain",
        "chunks": 1,
    },
    "recording_finished": {
        "trackSid": "TR_AMb0bMic",
        "path": "standup/bob-mic.ogg",
        "codec": "opus",
        "frames": "1500",
        "bytes": "96000",
        "durationS": 30.0,
        "reason": "duration",
    },
    "forward_finished": {
        "trackSid": "TR_VCb0bCam",
        "codec": "h264",
        "host": "10.0.0.7",
        "address": "10.0.0.7",
        "port": 5004,
        "payloadType": 102,
        "frames": "900",
        "packets": "4210",
        "bytes": "3911044",
        "skipped": "3",
        "durationS": 30.2,
        "reason": "stopped",
    },
    "publish_finished": {
        "trackSid": "TR_AMbr1dge",
        "kind": "audio",
        "source": "clips/welcome.ogg",
        "mimeType": "audio/opus",
        "passthrough": True,
        "frames": "500",
        "durationS": 10.0,
        "reason": "end_of_file",
    },
    "ownership_changed": {
        "room": ROOM,
        "acquired": True,
        "mode": "nats",
        "replica": "bridge-7f9c4-1-a3b2c1",
        "fencingToken": "4182",
        "reason": "lease change",
    },
}

# Signal commands: the SignalRequest oneof field -> data.
SIGNAL_COMMANDS: Final[dict[str, Any]] = {
    "add_track": {
        "cid": "bridge-audio-1",
        "name": "announcements",
        "type": "AUDIO",
        "source": "MICROPHONE",
    },
    "mute": {"sid": "TR_AMbr1dge", "muted": True},
    "subscription": {"trackSids": ["TR_VCb0bCam"], "subscribe": True},
    "track_setting": {"trackSids": ["TR_VCb0bCam"], "quality": "LOW", "width": 320, "height": 180},
    "update_layers": {"trackSid": "TR_VCbr1dge", "layers": [{"quality": "LOW", "width": 320, "height": 180}]},
    "subscription_permission": {
        "allParticipants": False,
        "trackPermissions": [{"participantIdentity": "alice", "allTracks": True}],
    },
    "update_metadata": {"metadata": '{"status":"recording"}', "attributes": {"role": "recorder"}},
    "update_audio_track": {"trackSid": "TR_AMbr1dge", "features": ["TF_NO_DTX"]},
    "update_video_track": {"trackSid": "TR_VCbr1dge", "width": 1280, "height": 720},
    "publish_data_track_request": {"pubHandle": 1, "name": "telemetry"},
    "unpublish_data_track_request": {"pubHandle": 1},
    "update_data_subscription": {"updates": [{"trackSid": "DT_tel3m3try", "subscribe": True}]},
    "store_data_blob_request": {
        "requestId": 12,
        "blob": {"key": {"generic": "agenda"}, "contents": "eyJpdGVtcyI6WyJkZW1vIl19"},
    },
    "get_data_blob_request": {"requestId": 13, "participantIdentity": "alice", "key": {"generic": "agenda"}},
}

# Bridge commands: the bridge command name -> data.
BRIDGE_COMMANDS: Final[dict[str, Any]] = {
    "send_data": {
        "payload": "eyJhbGVydCI6InN0YXJ0aW5nIn0=",
        "topic": "alerts",
        "destinationIdentities": ["alice"],
    },
    "join_room": {"room": ROOM},
    "leave_room": {"room": ROOM},
    "mute_track": {"identity": "bob", "trackSid": "TR_AMb0bMic", "muted": True},
    "remove_participant": {"identity": "bob"},
    "update_participant": {"identity": "alice", "name": "Alice (host)", "attributes": {"team": "green"}},
    "update_room_metadata": {"metadata": '{"topic":"retro"}'},
    "perform_rpc": {
        "destinationIdentity": "alice",
        "method": "getAgenda",
        "payload": '{"day":"today"}',
        "responseTimeoutMs": 5000,
    },
    "record_track": {"trackSid": "TR_AMb0bMic", "path": "standup/bob-mic.ogg", "durationS": 30},
    "stop_recording": {"trackSid": "TR_AMb0bMic"},
    "forward_track": {"trackSid": "TR_AMb0bMic", "host": "10.0.0.7", "port": 5004, "sdpPath": "bob-mic.sdp"},
    "stop_forward": {"trackSid": "TR_AMb0bMic"},
    "publish_track": {"path": "clips/intro.mp4", "name": "intro", "kind": "video", "loop": True},
    "unpublish_track": {"trackSid": "TR_AMbr1dge"},
}

# What each signal command does (livekit-signaling.md §5.1, SignalRequest).
SIGNAL_COMMAND_DESCRIPTIONS: Final[dict[str, str]] = {
    "add_track": "Announces a track before the bridge adds it to its PeerConnection (cid, name, type, "
    "source, dimensions, layers, codecs...). Answered by track_published or request_response.",
    "mute": "Mutes or unmutes one of the bridge's own published tracks.",
    "subscription": "Manually subscribes the bridge to, or unsubscribes it from, remote tracks.",
    "track_setting": "Per subscribed track: disabled, quality / width / height / fps, priority.",
    "update_layers": "Deprecated: the simulcast layers of one of the bridge's published video tracks.",
    "subscription_permission": "Who may subscribe to the bridge's own tracks.",
    "update_metadata": "Changes the bridge participant's own metadata, name or attributes (an attribute "
    'set to "" is deleted). Requires canUpdateOwnMetadata.',
    "update_audio_track": "Changes the audio features (DTX, stereo, ...) of a published track.",
    "update_video_track": "Changes the dimensions of a published video track.",
    "publish_data_track_request": "Publishes a data track; answered by publish_data_track_response.",
    "unpublish_data_track_request": "Unpublishes one of the bridge's data tracks.",
    "update_data_subscription": "Subscribes to or unsubscribes from remote data tracks.",
    "store_data_blob_request": "Stores a schema or data blob (up to 50 KB) in the room. Disabled unless "
    "the server sets enable_participant_data_blob.",
    "get_data_blob_request": "Retrieves a blob stored in the room; answered by get_data_blob_response.",
}
