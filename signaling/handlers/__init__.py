"""
The message handlers, by family: :mod:`.peers` (registration, directed
messages, presence, ``get-peers``), :mod:`.rooms` (joining, leaving, room
relay) and :mod:`.offline` (storing for offline peers, delivery, ``ack``).
They share one :class:`~signaling.handlers.context.Context`.
"""
