"""
The browser files on the server's port: the client library under
``/client/`` and the demo page under ``/demo/`` (PROTOCOL section 9 for CORS),
served from a fixed list with validators and safe headers.
"""

from __future__ import annotations

import configparser
import fnmatch
import hashlib
import socket
from importlib import resources
from pathlib import Path

from twisted.internet import defer, threads
from twisted.trial import unittest

from helpers import ServerTestCase, capture_log
from signaling.config import Config
from signaling.static import CLIENT_FILES, DEMO_FILES, demo_urls
from signaling.tap import Options


def package_file(directory: str, name: str) -> bytes:
    return resources.files("signaling").joinpath(directory, name).read_bytes()


def raw_get(port: int, target: bytes) -> bytes:
    """Status line of a GET for ``target`` sent byte for byte (no client normalises it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def header(response, name: str) -> str | None:
    values = response.headers.getRawHeaders(name)
    return values[0] if values else None


class LibraryTests(ServerTestCase):
    config = {"cors_origin": "https://app.example.com"}

    @defer.inlineCallbacks
    def test_library_and_typings(self):
        for path, (directory, name, content_type) in CLIENT_FILES.items():
            response, body = yield self.http_get(path)
            self.assertEqual(response.code, 200, path)
            self.assertEqual(body, package_file(directory, name))
            self.assertEqual(header(response, "content-type"), content_type)
            self.assertEqual(header(response, "access-control-allow-origin"),
                             "https://app.example.com")
            self.assertEqual(header(response, "x-content-type-options"), "nosniff")
            self.assertEqual(header(response, "cache-control"), "no-cache")
            self.assertEqual(header(response, "cross-origin-resource-policy"), "cross-origin")
            self.assertEqual(header(response, "etag").strip('"'),
                             hashlib.sha256(body).hexdigest()[:32])
        self.assertTrue(CLIENT_FILES["/client/signaling-client.js"][2].startswith("text/javascript"))

    @defer.inlineCallbacks
    def test_etag_revalidation(self):
        response, body = yield self.http_get("/client/signaling-client.js")
        etag = header(response, "etag").encode()
        for value in (etag, b"W/" + etag, b'"other", ' + etag, b"*"):
            again, empty = yield self.http_get(
                "/client/signaling-client.js", headers={b"if-none-match": [value]}
            )
            self.assertEqual((again.code, empty), (304, b""), value)
            self.assertEqual(header(again, "etag"), etag.decode())
        changed, full = yield self.http_get(
            "/client/signaling-client.js", headers={b"if-none-match": [b'"stale"']}
        )
        self.assertEqual((changed.code, full), (200, body))

    @defer.inlineCallbacks
    def test_head_options_and_other_methods(self):
        head, body = yield self.http_get("/client/signaling-client.js", method=b"HEAD")
        self.assertEqual((head.code, body), (200, b""))
        self.assertEqual(int(header(head, "content-length")),
                         len(package_file("client", "signaling-client.js")))
        options, _ = yield self.http_get("/client/signaling-client.js", method=b"OPTIONS")
        self.assertEqual(options.code, 204)
        post, _ = yield self.http_get("/client/signaling-client.js", method=b"POST")
        self.assertEqual(post.code, 405)

    @defer.inlineCallbacks
    def test_only_listed_files_no_traversal(self):
        for target in (b"/client/", b"/client/../signaling/hub.py", b"/client/%2e%2e/hub.py",
                       b"/client/signaling-client.js/", b"/client//signaling-client.js",
                       b"/demo/../client/signaling-client.js.bak", b"/demo/index.html",
                       b"/demo/%2e%2e/%2e%2e/etc/passwd", b"/hub.py", b"/demo/demo.js%00.css",
                       b"/../../etc/passwd", b"/client/SIGNALING-CLIENT.JS"):
            status = yield threads.deferToThread(raw_get, self.port, target)
            self.assertIn(status.split(b" ")[1], (b"400", b"404"), target)


class DemoTests(ServerTestCase):
    @defer.inlineCallbacks
    def test_demo_files_and_headers(self):
        for path, (directory, name, content_type) in DEMO_FILES.items():
            response, body = yield self.http_get(path + "?room=r&peerId=p")
            self.assertEqual(response.code, 200, path)
            self.assertEqual(body, package_file(directory, name))
            self.assertEqual(header(response, "content-type"), content_type)
        page, _ = yield self.http_get("/demo/")
        policy = header(page, "content-security-policy")
        for directive in ("default-src 'none'", "script-src 'self'", "connect-src 'self'",
                          "frame-ancestors 'none'"):
            self.assertIn(directive, policy)
        self.assertNotIn("unsafe", policy)
        self.assertIn("camera=(self)", header(page, "permissions-policy"))
        self.assertIn("microphone=(self)", header(page, "permissions-policy"))
        self.assertEqual(header(page, "x-frame-options"), "DENY")
        self.assertEqual(header(page, "referrer-policy"), "no-referrer")

    @defer.inlineCallbacks
    def test_demo_without_slash_redirects(self):
        response, _ = yield self.http_get("/demo")
        self.assertEqual((response.code, header(response, "location")), (301, "/demo/"))

    def test_demo_url_logged_at_start(self):
        lines = capture_log(self, lambda event: "demo video call" in event.get("log_format", ""))
        self.start_server(listen=("tcp:0:interface=127.0.0.1", "unix:demo.sock"))
        ports = [p.getHost().port for p in self.service.ports()[:2]]
        self.assertEqual([event["url"] for event in lines],
                         [f"http://127.0.0.1:{port}/demo/" for port in ports])


class NoDemoTests(ServerTestCase):
    config = {"demo": False}

    @defer.inlineCallbacks
    def test_no_demo_but_the_library(self):
        for path in DEMO_FILES:
            response, _ = yield self.http_get(path)
            self.assertEqual(response.code, 404, path)
        response, _ = yield self.http_get("/demo")
        self.assertEqual(response.code, 404)
        response, _ = yield self.http_get("/client/signaling-client.js")
        self.assertEqual(response.code, 200)

    def test_option_and_environment(self):
        self.assertTrue(Config().demo)
        for argv, environ, expected in (
            ([], {}, True),
            (["--no-demo"], {}, False),
            ([], {"SIGNALING_NO_DEMO": "1"}, False),
            ([], {"SIGNALING_NO_DEMO": "no"}, True),
        ):
            options = Options(environ)
            options.parseOptions(argv)
            self.assertEqual(options.config.demo, expected, (argv, environ))


class PackagingTests(unittest.TestCase):
    def test_library_version_is_the_package_version(self):
        from signaling import __version__

        source = package_file("client", "signaling-client.js").decode()
        self.assertIn(f'export const VERSION = "{__version__}";', source)

    def test_every_served_file_is_package_data(self):
        """``pip install .`` must ship what the server serves (setup.cfg package_data)."""
        setup = configparser.ConfigParser()
        setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
        patterns = [p.strip() for p in setup["options.package_data"]["signaling"].split(",")]
        for directory, name, _ in (*CLIENT_FILES.values(), *DEMO_FILES.values()):
            path = f"{directory}/{name}"
            self.assertTrue(any(fnmatch.fnmatch(path, p) for p in patterns), path)


class DemoUrlTests(unittest.TestCase):
    def test_urls_for_tls_and_wildcard_listeners(self):
        class Port:
            def __init__(self, host, port):
                self.address = type("Address", (), {"host": host, "port": port})()

            def getHost(self):
                return self.address

        config = Config(port=443, tls_cert="c.pem", tls_key="k.pem",
                        listen=("tcp6:9001", "ssl:8443:privateKey=k.pem", "unix:/x.sock"))
        ports = [Port("0.0.0.0", 443), Port("::1", 9001), Port("10.0.0.5", 8443),
                 Port(None, 0)]
        self.assertEqual(demo_urls(config, ports), [
            "https://localhost:443/demo/", "http://[::1]:9001/demo/", "https://10.0.0.5:8443/demo/",
        ])
