"""livekit-bus-bridge: LiveKit rooms on Kafka and NATS as CloudEvents, and commands back in."""

__version__ = "0.1.0"
