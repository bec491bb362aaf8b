"""The signaling server's load generator and benchmark (``python -m signaling.bench``).

Runs on picows + uvloop (the ``bench`` extra) so that the load generator is not the bottleneck.
Scenarios: ``connect``, ``idle``, ``relay``, ``rate`` and ``fanout``; every delivery is checked
against a ledger (:mod:`signaling.bench.ledger`), see ``docs/performance.md``.
"""
