"""
The route of one message (docs/architecture.md) over real sockets, as
pytest tests run by pytest-twisted with the ``server`` fixture: in through
``Hub.receive_payload``, out through the recipient's connection, refusals
answered to the sender; on the fast path and on Autobahn's public API.
"""

import json

import pytest
import pytest_twisted

from helpers import connect, http_get


def url(service):
    return f"ws://127.0.0.1:{service.ports()[0].getHost().port}/"


@pytest_twisted.inlineCallbacks
def registered(service, peer_id):
    client = yield connect(url(service))
    client.send({"type": "register", "peerId": peer_id})
    yield client.expect("registered")
    return client


@pytest.mark.parametrize("fast_path", [True, False])
@pytest_twisted.inlineCallbacks
def test_directed_message_route(server, fast_path):
    service = server(fast_path=fast_path)
    assert service.fast_path is fast_path
    alice = yield registered(service, "alice")
    bob = yield registered(service, "bob")
    yield alice.expect("peer-status")
    alice.send({"type": "offer", "to": "bob", "from": "mallory", "sdp": "é" * 100})
    offer = yield bob.expect("offer", skip=("peer-status",))
    assert offer == {"type": "offer", "to": "bob", "from": "alice", "sender": "alice",
                     "sdp": "é" * 100}
    assert service.hub.stats()["forwarded"] == 1
    for client in (alice, bob):
        yield client.drop()


@pytest_twisted.inlineCallbacks
def test_every_refusal_is_answered_to_the_sender(server):
    service = server()
    client = yield connect(url(service))
    requests = [
        (b"not json", "INVALID_MESSAGE", None),
        ({"type": "mystery", "messageId": "m1"}, "UNKNOWN_MESSAGE_TYPE", "mystery"),
        ({"type": "chat", "roomId": "r"}, "NOT_IN_ROOM", "chat"),
        ({"type": "offer", "to": "bob"}, "REGISTRATION_REQUIRED", "offer"),
        ({"type": "register", "peerId": ""}, "INVALID_FIELD", "register"),
    ]
    for request, code, request_type in requests:
        client.send(request)
        error = yield client.expect("error")
        assert error["code"] == code
        assert error.get("requestType") == request_type
    yield client.drop()


@pytest_twisted.inlineCallbacks
def test_stats_endpoint_reads_the_hub(server):
    service = server()
    alice = yield registered(service, "alice")
    port = service.ports()[0].getHost().port
    response, body = yield http_get(f"http://127.0.0.1:{port}/stats")
    stats = json.loads(body)
    assert response.code == 200
    assert (stats["connections"], stats["peers"], stats["connectionsTotal"]) == (1, 1, 1)
    yield alice.drop()
