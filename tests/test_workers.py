"""
``--workers`` with real processes: ``python -m signaling --workers 2`` and
``twistd -n signaling --workers 2``, each with a private ``redis-server``.
Connections land on both workers, TLS goes through them, a killed worker
is replaced, SIGHUP reloads every worker's certificate, SIGTERM drains them
all, and the parent binds the sockets and refuses what it cannot run.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import ssl
import sys
from typing import Any

from cryptography import x509
from twisted.internet import defer, reactor, task
from twisted.internet.ssl import Certificate, optionsForClientTLS

from certs import PKI
from helpers import ConnectionRefused, connect
from processes import (
    MODULE,
    START_TIMEOUT,
    TWISTD,
    ProcessTestCase,
    ServerProcess,
    last_line,
    occupied_port,
    run,
)
from redis_server import start_redis
from signaling.workers import DRAIN_MARGIN

#: Requests or connections a test makes at most to see both workers.
SPREAD_ATTEMPTS = 200

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")
_READY = r"serving on \d+ inherited sockets"


def health(port: int, context: ssl.SSLContext | None = None) -> tuple[int, int | None]:
    """
    GET /health on a new connection (blocking; the server is another
    process): the pid that answered, and the serial of the certificate the
    connection saw (None without TLS).
    """
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("GET", "/health")
        response = conn.getresponse()
        body = json.loads(response.read())
        serial = None
        if context is not None:
            der = conn.sock.getpeercert(binary_form=True)
            serial = x509.load_der_x509_certificate(der).serial_number
    finally:
        conn.close()
    if response.status != 200:
        raise AssertionError(f"/health answered {response.status}")
    return body["pid"], serial


def answers_until_both(port: int, pids: set[int], context: Any = None) -> list[tuple[int, Any]]:
    """
    /health answers until every pid of ``pids`` has answered at least once.
    The requests go eight at a time: one after the other, the worker that
    happens to be awake can win every accept() on a busy machine.
    """
    from concurrent.futures import ThreadPoolExecutor

    answers: list[tuple[int, Any]] = []
    with ThreadPoolExecutor(8) as pool:
        for _ in range(SPREAD_ATTEMPTS // 8):
            answers += pool.map(lambda _: health(port, context), range(8))
            if pids <= {pid for pid, _ in answers}:
                return answers
    raise AssertionError(f"not every worker of {pids} answered: {sorted(set(answers))}")


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def json_lines(server: ServerProcess) -> list[dict]:
    """The parent's log (``--log-format json``), one dict per line."""
    return [json.loads(line) for line in server.log.splitlines() if line.startswith("{")]


class WorkersTestCase(ProcessTestCase):
    """Starts servers with ``--workers`` against this test's own Redis."""

    def setUp(self) -> None:
        self.redis = start_redis(self)

    @defer.inlineCallbacks
    def start_workers(self, command: Any, *args: str, workers: int = 2) -> Any:
        """A server with ``workers`` workers, all serving; fires with (process, port)."""
        server, port = yield self.start(
            command, "--port", "0", "--workers", str(workers), "--redis", self.redis.url, *args
        )
        yield server.wait_for_log(_READY, count=workers)
        return server, port

    def worker_pids(self, server: ServerProcess) -> dict[int, int]:
        """Worker number -> pid of its latest process, from the parent's log."""
        return {int(n): int(pid) for n, pid in _STARTED.findall(server.log)}

    @defer.inlineCallbacks
    def wait_gone(self, pids: Any) -> Any:
        deadline = reactor.seconds() + START_TIMEOUT
        while any(alive(pid) for pid in pids):
            if reactor.seconds() > deadline:
                raise AssertionError(f"workers still alive: {[p for p in pids if alive(p)]}")
            yield task.deferLater(reactor, 0.05, lambda: None)

    @defer.inlineCallbacks
    def clients_on_every_worker(self, server: ServerProcess, url: str, workers: int = 2) -> Any:
        """
        Registered clients until the JSON log shows registrations on every
        worker; fires with {worker number: [clients]}.
        """
        placed: dict[int, list] = {}
        for number in range(SPREAD_ATTEMPTS):
            client = yield self.register(url, f"c{number}")
            peer = client.transport.getHost()
            address = f"{peer.host}:{peer.port}"
            yield server.wait_for_log(r'"event": "register".*' + re.escape(f'"peer": "{address}"'))
            [event] = [e for e in json_lines(server)
                       if e.get("event") == "register" and e.get("peer") == address]
            placed.setdefault(event["worker"], []).append(client)
            if len(placed) == workers:
                return placed
        raise AssertionError(f"registrations landed on {sorted(placed)} only")


class SpreadTests(WorkersTestCase):
    @defer.inlineCallbacks
    def test_connections_land_on_both_workers(self):
        server, port = yield self.start_workers(
            MODULE, "--log-format", "json", "--metrics-listen", "tcp:0:interface=127.0.0.1",
            "--auth-secret", "a-secret-given-on-the-command-line-32b",
        )
        pids = self.worker_pids(server)
        self.assertEqual(sorted(pids), [1, 2])
        self.assertNotIn(server.pid, pids.values())
        for number, pid in pids.items():
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
            self.assertEqual(argv, [sys.executable.encode(), b"-m", b"signaling.worker",
                                    str(number).encode()])

        answers = answers_until_both(port, set(pids.values()))
        self.assertEqual({pid for pid, _ in answers}, set(pids.values()))

        placed = yield self.clients_on_every_worker(server, f"ws://127.0.0.1:{port}/")
        # Each worker has its own metrics port and counts its own connections.
        metrics_ports = {
            int(n): int(p)
            for n, p in re.findall(r"worker (\d+) metrics socket starting on (\d+)", server.log)
        }
        self.assertEqual(sorted(metrics_ports), [1, 2])
        for number, metrics_port in metrics_ports.items():
            self.assertEqual(health(metrics_port)[0], pids[number])
            conn = http.client.HTTPConnection("127.0.0.1", metrics_port, timeout=5)
            conn.request("GET", "/metrics")
            body = conn.getresponse().read().decode()
            conn.close()
            self.assertIn(f"signaling_connections {float(len(placed[number]))}", body)


class TlsTests(WorkersTestCase):
    @defer.inlineCallbacks
    def test_twistd_tls_through_workers_and_sighup_reload(self):
        pki = PKI.create()
        first = pki.write(self.mktemp())
        server, port = yield self.start_workers(
            TWISTD, "--tls-cert", str(first.fullchain), "--tls-key", str(first.key),
        )
        pids = set(self.worker_pids(server).values())
        context = ssl.create_default_context(cafile=str(first.root))
        context.set_alpn_protocols(["h2", "http/1.1"])  # as browsers offer
        answers = answers_until_both(port, pids, context)
        self.assertEqual({serial for _, serial in answers}, {first.leaf.serial})
        trust = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pki.root_pem))
        url = f"wss://127.0.0.1:{port}/"
        old = yield self.register(url, "old", context_factory=trust)
        self.assertEqual(old.transport.getPeerCertificate().get_serial_number(), first.leaf.serial)
        yield self.assertFailure(connect(f"ws://127.0.0.1:{port}/"), ConnectionRefused)

        second = pki.write(first.directory, common_name="renewed")
        server.send_signal(signal.SIGHUP)
        reloads = yield server.wait_for_log(r"worker (\d+)\] TLS certificate reloaded", count=2)
        self.assertEqual(sorted(m.group(1) for m in reloads), ["1", "2"])
        answers = answers_until_both(port, pids, context)
        self.assertEqual({serial for _, serial in answers}, {second.leaf.serial})
        new = yield self.register(url, "new", context_factory=trust)
        self.assertEqual(new.transport.getPeerCertificate().get_serial_number(), second.leaf.serial)
        yield self.until_pong(old)  # open connections are not disturbed

        server.send_signal(signal.SIGTERM)
        closes = yield defer.gatherResults([old.wait_closed(), new.wait_closed()])
        self.assertEqual([code for code, _ in closes], [1001, 1001])
        status = yield server.wait_exit(5 + DRAIN_MARGIN)
        self.assert_clean_exit(server, status)
        yield self.wait_gone(pids)


class RestartTests(WorkersTestCase):
    @defer.inlineCallbacks
    def test_killed_worker_is_replaced_and_the_port_keeps_serving(self):
        server, port = yield self.start_workers(MODULE)
        pids = self.worker_pids(server)
        os.kill(pids[1], signal.SIGKILL)
        yield server.wait_for_log(
            rf"worker 1 \(pid {pids[1]}\) exited: killed by SIGKILL; starting it again in [\d.]+ s"
        )
        # Meanwhile the other worker serves every connection.
        for _ in range(10):
            self.assertEqual(health(port)[0], pids[2])
        yield server.wait_for_log(_READY, count=3)
        replaced = self.worker_pids(server)
        self.assertEqual(replaced[2], pids[2])
        self.assertNotIn(replaced[1], pids.values())
        answers_until_both(port, set(replaced.values()))
        self.assertFalse(alive(pids[1]))
        client = yield self.register(f"ws://127.0.0.1:{port}/", "after")
        yield self.until_pong(client)


class StopTests(WorkersTestCase):
    @defer.inlineCallbacks
    def test_sigterm_drains_every_worker(self):
        server, port = yield self.start_workers(
            MODULE, "--log-format", "json", "--reconnect-jitter", "1")
        pids = self.worker_pids(server)
        placed = yield self.clients_on_every_worker(server, f"ws://127.0.0.1:{port}/")
        clients = [client for group in placed.values() for client in group]
        server.send_signal(signal.SIGTERM)
        for client in clients:
            notice = yield client.expect("server-shutdown", skip=("peer-status",))
            self.assertLessEqual(notice["reconnectAfterMs"], 1000)
            code, _ = yield client.wait_closed()
            self.assertEqual(code, 1001)
        status = yield server.wait_exit(5 + DRAIN_MARGIN)
        self.assertEqual(status, 0, server.log)
        self.assertNotIn("Traceback", server.log)
        yield self.wait_gone(pids.values())
        shutdowns = [e["worker"] for e in json_lines(server) if e.get("event") == "shutdown"]
        self.assertEqual(sorted(shutdowns), [1, 2])
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

    @defer.inlineCallbacks
    def signal_every_process(self, command: Any, signum: int) -> Any:
        """
        Signal parent and workers at once; every client must still get a
        graceful drain. Fires with the parent's exit status.
        """
        server, port = yield self.start_workers(command, "--shutdown-timeout", "30")
        pids = self.worker_pids(server)
        answers_until_both(port, set(pids.values()))
        clients = []
        for number in range(6):
            client = yield self.register(f"ws://127.0.0.1:{port}/", f"c{number}")
            clients.append(client)
        # A client that never answers the close keeps its worker draining:
        # a worker that took the signal twice as "stop now" would cut it at once.
        stubborn = clients[0]
        stubborn.sendCloseFrame = lambda *args, **kwargs: None
        os.killpg(server.pid, signum)
        for client in clients:
            yield client.expect("server-shutdown", skip=("peer-status",))
        for client in clients[1:]:
            code, _ = yield client.wait_closed()
            self.assertEqual(code, 1001)
        yield stubborn.wait_closed(timeout=START_TIMEOUT)
        status = yield server.wait_exit(30 + DRAIN_MARGIN)
        yield self.wait_gone(pids.values())
        self.assertNotIn("exited: exit status 1", server.log)
        return status

    @defer.inlineCallbacks
    def test_ctrl_c_on_the_process_group_drains(self):
        """A terminal's Ctrl-C signals parent and workers alike; still one graceful drain."""
        status = yield self.signal_every_process(MODULE, signal.SIGINT)
        self.assertEqual(status, 0)

    @defer.inlineCallbacks
    def test_sigterm_to_every_process_drains(self):
        """``systemctl stop`` (KillMode=control-group) sends SIGTERM to all processes."""
        status = yield self.signal_every_process(TWISTD, signal.SIGTERM)
        self.assertIn(status, (0, -signal.SIGTERM))

    @defer.inlineCallbacks
    def test_workers_leave_when_the_parent_dies(self):
        server, port = yield self.start_workers(MODULE)
        pids = self.worker_pids(server)
        client = yield self.register(f"ws://127.0.0.1:{port}/", "alice")
        os.kill(server.pid, signal.SIGKILL)
        code, _ = yield client.wait_closed(timeout=START_TIMEOUT)
        self.assertEqual(code, 1001)
        yield self.wait_gone(pids.values())


class RefusalTests(ProcessTestCase):
    def test_workers_without_redis_is_a_usage_error(self):
        directory = self.mkdtemp()
        result = run(MODULE, ["--workers", "2", "--port", "0"], directory)
        self.assertEqual(result.returncode, 2, result.stderr)
        message, hint = result.stderr.strip().splitlines()
        self.assertIn("--workers 2 needs --redis", message)
        self.assertIn("--help", hint)
        result = run(TWISTD, ["--workers", "2", "--port", "0"], directory,
                     env={"SIGNALING_WORKERS": "3"})
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--workers 2 needs --redis", result.stdout + result.stderr)
        result = run(MODULE, ["--port", "0"], directory, env={"SIGNALING_WORKERS": "2"})
        self.assertIn("2 needs --redis", result.stderr)
        self.assertEqual(os.listdir(directory), [])

    def test_port_in_use_fails_the_parent_before_any_worker(self):
        redis = start_redis(self)
        number = str(occupied_port(self))
        for command in (MODULE, TWISTD):
            result = run(command, ["--workers", "2", "--redis", redis.url, "--port", number,
                                   "--interface", "127.0.0.1"], self.mkdtemp())
            output = result.stdout + result.stderr
            self.assertEqual(result.returncode, 1, output)
            message = last_line(output)
            self.assertIn("signaling: cannot start:", message)
            self.assertIn("Address already in use", message)
            self.assertIn(number, message)
            self.assertNotIn("worker 1", output)
            self.assertNotIn("Traceback", output)
