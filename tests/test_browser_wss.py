"""
``wss://`` from a real browser: headless Chromium offers ALPN (``h2`` and
``http/1.1``), as every browser does, and must still complete the TLS
handshake, open the WebSocket, register and relay.
"""

from twisted.internet import defer

from browser import BrowserTestCase, session_certificates


class WssBrowserTests(BrowserTestCase):
    def setUp(self):
        files = session_certificates()
        self.config = {"tls_cert": str(files.fullchain), "tls_key": str(files.key)}
        return super().setUp()

    @defer.inlineCallbacks
    def test_page_over_https_opens_wss_registers_and_relays_an_offer(self):
        driver = yield self.browser()
        origin = f"https://127.0.0.1:{self.port}"
        yield self.open(driver, origin + "/health")
        # The page itself came over TLS, and so does the library it imports.
        protocol = yield self.js(driver, "return location.protocol;")
        self.assertEqual(protocol, "https:")
        yield self.make_client(driver, "browser", f"wss://127.0.0.1:{self.port}/app")
        registered = yield self.call(driver, "browser", "return client.connect();")
        self.assertEqual(registered["peerId"], "browser")

        # The browser's connection negotiated http/1.1 by ALPN (it offered h2 too).
        connection = self.registry.identities["browser"].conn
        self.assertEqual(connection.transport.negotiatedProtocol, b"http/1.1")

        peer = yield self.register("desktop", url=f"wss://127.0.0.1:{self.port}/",
                                   context_factory=self.trust())
        yield self.call(driver, "browser", """
            client.send('desktop', {type: 'offer', offer: {type: 'offer', sdp: 'v=0 from a browser'}});
        """)
        offer = yield peer.expect("offer")
        self.assertEqual((offer["from"], offer["offer"]["sdp"]), ("browser", "v=0 from a browser"))
        peer.send({"type": "answer", "to": "browser", "answer": {"type": "answer", "sdp": "v=0 back"}})
        [answer] = yield self.wait_event(driver, "browser", "answer")
        self.assertEqual((answer["from"], answer["answer"]["sdp"]), ("desktop", "v=0 back"))

    def trust(self):
        from twisted.internet.ssl import Certificate, optionsForClientTLS

        root = Certificate.loadPEM(session_certificates().root.read_bytes())
        return optionsForClientTLS("localhost", trustRoot=root)
