"""
signaling: a WebRTC signaling server on Twisted and Autobahn.

Embed it with :func:`signaling.service.make_service`; run it with
``twistd signaling`` or ``python -m signaling``.
"""

__version__ = "0.1.0"
