"""The ``twistd signaling`` plugin (no ``__init__.py`` in this directory)."""

from twisted.application.service import ServiceMaker

signaling = ServiceMaker(
    "signaling",
    "signaling.tap",
    "WebRTC signaling server (rooms, directed messages, presence, offline store)",
    "signaling",
)
