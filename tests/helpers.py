"""
Test support: a real WebSocket client over loopback and a server fixture.

The server runs in this process on the real reactor, bound to 127.0.0.1
port 0; its timers run on a ``task.Clock`` the test advances by hand.
Also here: bounded waits on the real reactor, HTTP GET, Prometheus text
parsing and log capture, shared by the in-process and process tests.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    connectWS,
)
from twisted.internet import defer, reactor, task
from twisted.trial import unittest
from twisted.internet.protocol import Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent
from twisted.web.http_headers import Headers
from prometheus_client.parser import text_string_to_metric_families

from signaling.config import Config
from signaling.service import make_service

#: Seconds a test waits for a message before failing.
WAIT = 5.0


class Client(WebSocketClientProtocol):
    """A WebSocket client that queues every JSON message it receives."""

    answer_pings = True

    def __init__(self) -> None:
        super().__init__()
        self.inbox: defer.DeferredQueue = defer.DeferredQueue()
        self.opened: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.close_code: int | None = None
        self.close_reason: str | None = None
        #: Every text frame received, as it came.
        self.frames: list[bytes] = []

    def onOpen(self) -> None:
        self.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.frames.append(payload)
        self.inbox.put(json.loads(payload))

    def onPing(self, payload: bytes) -> None:
        if self.answer_pings:
            super().onPing(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.close_code = code
        self.close_reason = reason
        if not self.opened.called:
            self.opened.errback(ConnectionRefused(code, reason))
        self.closed.callback((code, reason))

    def send(self, message: Any) -> None:
        """Send one message (a dict is sent as JSON text)."""
        if isinstance(message, (bytes, str)):
            data = message.encode() if isinstance(message, str) else message
            self.sendMessage(data)
        else:
            self.sendMessage(json.dumps(message).encode())

    def next(self, timeout: float = WAIT) -> defer.Deferred:
        """The next message received (fails after ``timeout`` seconds)."""
        return self.inbox.get().addTimeout(timeout, reactor)

    @defer.inlineCallbacks
    def expect(self, type_: str, timeout: float = WAIT, skip: tuple[str, ...] = ()) -> Any:
        """The next message, which must have type ``type_`` (types in ``skip`` are passed over)."""
        message = yield self.next(timeout)
        while message.get("type") in skip:
            message = yield self.next(timeout)
        if message.get("type") != type_:
            raise AssertionError(f"expected {type_!r}, got {message!r}")
        return message

    @defer.inlineCallbacks
    def expect_error(self, code: str) -> Any:
        """The next message, which must be an error with ``code``."""
        message = yield self.expect("error")
        if message.get("code") != code:
            raise AssertionError(f"expected error {code}, got {message!r}")
        return message

    def assert_quiet(self) -> None:
        """Nothing unread has arrived."""
        pending = list(self.inbox.pending)
        if pending:
            raise AssertionError(f"unexpected messages: {pending!r}")

    def wait_closed(self, timeout: float = WAIT) -> defer.Deferred:
        """Fires with (code, reason) once the connection is closed."""
        done: defer.Deferred = defer.Deferred()
        self.closed.addBoth(lambda result: (done.callback(result), result)[1])
        return done.addTimeout(timeout, reactor)

    def drop(self) -> defer.Deferred:
        """Cut the TCP connection now and wait for it to be gone."""
        if not self.closed.called:
            self.transport.abortConnection()
        return self.wait_closed()


class ConnectionRefused(Exception):
    """The WebSocket handshake did not succeed."""

    def __init__(self, code: int | None, reason: str | None) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def record_protocols(factory: Any) -> list[Any]:
    """Make ``factory`` remember every protocol it builds, in the returned list."""
    built: list[Any] = []
    original = factory.buildProtocol

    def build(address: Any) -> Any:
        protocol = original(address)
        built.append(protocol)
        return protocol

    factory.buildProtocol = build
    return built


def connect(url: str, headers: dict[str, str] | None = None, client_class: type = Client,
            context_factory: Any = None) -> defer.Deferred:
    """Open a WebSocket connection; fires with the :class:`Client` once open."""
    factory = WebSocketClientFactory(url, headers=headers or {})
    factory.protocol = client_class
    factory.setProtocolOptions(autoPingInterval=0, failByDrop=False, openHandshakeTimeout=WAIT)
    created = record_protocols(factory)
    connector = connectWS(factory, contextFactory=context_factory, timeout=WAIT)
    done: defer.Deferred = defer.Deferred()

    def check_open() -> None:
        if created:
            created[0].opened.chainDeferred(done)
        elif connector.state == "disconnected":
            done.errback(ConnectionRefused(None, "TCP connection failed"))
        else:
            reactor.callLater(0.01, check_open)

    check_open()
    return done.addTimeout(WAIT, reactor)


@defer.inlineCallbacks
def settle_autobahn_timers() -> Any:
    """
    Wait for Autobahn's batched close-handshake timers to run out: a cancelled
    timer stays in its bucket until the bucket's time, and trial counts the
    bucket as a dirty reactor.
    """
    while any("_BatchedTimer" in repr(call) for call in reactor.getDelayedCalls()):
        yield task.deferLater(reactor, 0.05, lambda: None)


class ServerTestCase(unittest.TestCase):
    """Starts a server on 127.0.0.1 for each test; closes everything after."""

    #: Config values for the server of this test case.
    config: dict[str, Any] = {}
    #: Run the server with the fast path of signaling.internals (False: public API).
    fast_path = True

    def setUp(self) -> Any:
        self.clock = task.Clock()
        self.clients: list[Client] = []
        self.start_server(**self.config)

    def start_server(self, **overrides: Any) -> None:
        """Start this test's server (``self.config`` is not applied again)."""
        overrides.setdefault("fast_path", self.fast_path)
        self.service = make_service(server_config(**overrides), reactor, clock=self.clock)
        self.service.startService()
        self.addCleanup(self._stop_server, self.service)
        self.hub = self.service.hub
        self.registry = self.service.registry
        self.store = self.service.store
        self.port = self.service.ports()[0].getHost().port
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.http = f"http://127.0.0.1:{self.port}"

    @defer.inlineCallbacks
    def restart_server(self) -> Any:
        """Drop every client, stop this test's server and start it again with ``self.config``."""
        for client in self.clients:
            yield client.drop()
        self.clients.clear()
        yield self.service.stopService()
        self.start_server(**self.config)

    @defer.inlineCallbacks
    def _stop_server(self, service: Any) -> Any:
        for client in self.clients:
            yield client.drop()
        if service.running:
            yield service.stopService()
        yield settle_autobahn_timers()

    @defer.inlineCallbacks
    def connect(self, path: str = "/", headers: dict[str, str] | None = None,
                client_class: type = Client, url: str | None = None,
                context_factory: Any = None) -> Any:
        """
        A new client connected to this test's server at ``path`` (or to
        ``url``, another listener); dropped at cleanup.
        """
        if url is None:
            url = self.url.rstrip("/") + path
        client = yield connect(url, headers, client_class, context_factory)
        self.clients.append(client)
        return client

    @defer.inlineCallbacks
    def register(self, peer_id: str, url: str | None = None, context_factory: Any = None,
                 **fields: Any) -> Any:
        """A new client registered as ``peer_id`` (its ``registered`` consumed)."""
        client = yield self.connect(url=url, context_factory=context_factory)
        client.send({"type": "register", "peerId": peer_id, **fields})
        yield client.expect("registered")
        return client

    @defer.inlineCallbacks
    def join(self, room_id: str, user_id: str, client: Client | None = None) -> Any:
        """A client (new unless given) that joined ``room_id`` as ``user_id``."""
        if client is None:
            client = yield self.connect()
        client.send({"type": "join-room", "roomId": room_id, "sender": user_id})
        yield client.expect("join-success")
        return client

    @defer.inlineCallbacks
    def roundtrip(self, client: Client) -> Any:
        """Wait until the server handled everything ``client`` sent so far."""
        client.send({"type": "ping"})
        yield client.expect("pong")

    def http_get(self, path: str, method: bytes = b"GET",
                 headers: dict[bytes, list[bytes]] | None = None) -> defer.Deferred:
        """(response, body bytes) for an HTTP request to this server."""
        return http_get(self.http + path, method, headers)


class SqliteFileMixin:
    """Put before :class:`ServerTestCase`: the server keeps its offline store in a SQLite file of the test's own."""

    def setUp(self) -> Any:
        self.config = dict(self.config, db=self.mktemp() + ".sqlite")
        return super().setUp()


def server_config(**overrides: Any) -> Config:
    """A server configuration on 127.0.0.1 port 0 with an in-memory store, plus ``overrides``."""
    values: dict[str, Any] = {"port": 0, "interface": "127.0.0.1", "db": ":memory:"}
    values.update(overrides)
    return Config(**values)


def start_service(testcase: unittest.TestCase, clock: Any = None, **overrides: Any) -> Any:
    """
    A second, independent server on the real reactor (its timers on
    ``clock`` when given), stopped at cleanup.
    """
    service = make_service(server_config(**overrides), reactor, clock=clock)
    service.startService()
    testcase.addCleanup(service.stopService)
    return service


@defer.inlineCallbacks
def http_get(url: str, method: bytes = b"GET",
             headers: dict[bytes, list[bytes]] | None = None, agent: Any = None) -> Any:
    """(response, body bytes) of an HTTP request (a fresh Agent unless ``agent``)."""
    agent = Agent(reactor) if agent is None else agent
    response = yield agent.request(method, url.encode(), Headers(headers or {}))
    body = yield read_body(response)
    return response, body


def pause(seconds: float = 0.01) -> defer.Deferred:
    """Let the real reactor run for ``seconds``."""
    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``condition`` on the real reactor until it holds; fail after ``timeout`` seconds."""
    deadline = reactor.seconds() + timeout
    while not condition():
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        yield pause()


#: Prometheus samples: (name, sorted label pairs) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(body: bytes) -> Samples:
    """Every sample of a Prometheus text body."""
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode("utf-8")):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a missing sample fails the test with KeyError."""
    return samples[(name, tuple(sorted(labels.items())))]


def total(samples: Samples, name: str) -> float:
    """The sum of every sample named ``name`` (all label values)."""
    return sum(value for (n, _), value in samples.items() if n == name)


def capture_log(testcase: unittest.TestCase, keep: Callable[[dict], bool]) -> list[dict]:
    """
    A list that collects every global log event for which ``keep`` is true,
    from now until the test's cleanup.
    """
    events: list[dict] = []
    _observe(testcase, lambda event: events.append(event) if keep(event) else None)
    return events


def capture_log_lines(testcase: unittest.TestCase, prefix: str) -> list[str]:
    """
    A list that collects the text of every global log event that starts
    with ``prefix`` (``"[Stats]"``: the stats line), until the test's cleanup.
    """
    lines: list[str] = []

    def observer(event: dict) -> None:
        text = formatEvent(event)
        if text.startswith(prefix):
            lines.append(text)

    _observe(testcase, observer)
    return lines


def _observe(testcase: unittest.TestCase, observer: Callable[[dict], None]) -> None:
    globalLogPublisher.addObserver(observer)
    testcase.addCleanup(globalLogPublisher.removeObserver, observer)


class _Body(Protocol):
    """Collects a response body (readBody warns on Agent's proxy transport)."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.done: defer.Deferred = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.done.callback(b"".join(self.chunks))


def read_body(response: Any) -> defer.Deferred:
    """The whole body of an Agent response."""
    body = _Body()
    response.deliverBody(body)
    return body.done
