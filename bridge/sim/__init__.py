"""A LiveKit-protocol room simulator (signaling + aiortc SFU) for development, demos and tests."""
