"""
The embedding entry point: :func:`make_service` builds the whole server as
one Twisted ``MultiService``.

    from twisted.internet import reactor
    from signaling.config import Config
    from signaling.service import make_service

    service = make_service(Config(port=9001), reactor)
    service.setServiceParent(application)   # or startService() yourself
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import internals
from .admission import GatedFactory, RequestLimits
from .auth import TokenVerifier
from .config import Config
from .hub import Hub
from .ice import IceServers
from .limits import ConnectionGate
from .listeners import InheritedSockets, listener_specs
from .messages import CLOSE_GOING_AWAY
from .metrics import Metrics
from .origins import OriginPolicy
from .proxies import ProxyPolicy
from .registry import LocalRegistry
from .sqlite_store import SqliteStore
from .static import demo_urls
from .store import IOfflineStore, MemoryStore, StoreLimits
from .tls import ReloadableTLS, listen_endpoint, tls_from_options, tls_server_endpoint
from .web import StatusEndpoints, make_metrics_site, make_site
from .websocket import SignalingFactory, UpgradeResource

__all__ = [
    "make_service", "SignalingService", "Listener", "Timers", "Policies",
    "install_signal_handlers", "freeze_startup_objects",
]

#: Seconds between sweeps that drop expired offline messages.
EXPIRY_SWEEP_INTERVAL = 60.0
#: Seconds between checks whether every client has gone during a drain.
DRAIN_POLL_INTERVAL = 0.05

_log = Logger()


def make_service(
    config: Config,
    reactor: Any,
    clock: Any = None,
    policies: "Policies | None" = None,
    inherited: InheritedSockets | None = None,
) -> "SignalingService":
    """
    Build the server described by ``config``: one process (``--workers`` is
    run by :mod:`signaling.workers`, whose workers each build one of these).

    ``reactor`` does the networking; ``clock`` (default: the reactor) drives
    heartbeats, stats and expiry, so tests can pass a ``task.Clock``.
    ``policies`` are the checked security settings when the caller built them
    already (the command line does, to report errors as usage errors).
    ``inherited``: listening sockets bound by a parent process, served
    instead of binding new ones. Errors in the TLS files or the store are
    raised here, before anything listens.
    """
    clock = reactor if clock is None else clock
    if policies is None:
        policies = Policies.from_config(config)
    if config.redis_url is not None:
        # Cluster mode: state and offline store in Redis (--db is not used).
        from .cluster.node import ClusterNode

        cluster = ClusterNode(config, reactor, clock)
        return SignalingService(
            config, reactor, clock, cluster.store, policies, inherited, cluster
        )
    return SignalingService(
        config, reactor, clock, open_store(config, reactor, clock), policies, inherited
    )


class Policies:
    """
    The checked, ready-to-use forms of the settings that name files, keys,
    patterns and URLs: TLS context, token verifier, origin and proxy
    policies, ICE servers. Building them validates them, once, at start.
    """

    def __init__(
        self,
        tls: ReloadableTLS | None,
        verifier: TokenVerifier | None,
        origins: OriginPolicy,
        proxies: ProxyPolicy,
        ice: IceServers,
    ) -> None:
        self.tls = tls
        self.verifier = verifier
        self.origins = origins
        self.proxies = proxies
        self.ice = ice

    @classmethod
    def from_config(cls, config: Config) -> "Policies":
        """
        :raises ValueError: a setting names an unusable file, key, pattern or
            address (``TLSConfigError`` is a ``ValueError`` too).
        """
        verifier = None
        with _naming("--auth-secret"):
            if config.auth_secret:
                verifier = TokenVerifier.from_secret(config.auth_secret)
        with _naming("--auth-public-key"):
            if config.auth_public_key:
                verifier = TokenVerifier.from_public_key_file(config.auth_public_key)
        with _naming("--stun-url/--turn-url"):
            ice = IceServers(
                config.stun_urls, config.turn_urls, config.turn_secret, int(config.turn_ttl)
            )
        with _naming("--allowed-origin"):
            origins = OriginPolicy(config.allowed_origins)
        return cls(
            tls_from_options(config.tls_cert, config.tls_key, config.tls_chain),
            verifier,
            origins,
            ProxyPolicy(config.trusted_proxies),
            ice,
        )


@contextmanager
def _naming(option: str) -> Iterator[None]:
    """Prefix a ValueError's message with the option it is about, unless it names it."""
    try:
        yield
    except ValueError as e:
        if option.split("/")[0] in str(e):
            raise
        raise ValueError(f"{option}: {e}") from None


def open_store(config: Config, reactor: Any, clock: Any) -> IOfflineStore:
    """The offline store named by ``config.db`` (SQLite writes run in a thread of ``reactor``)."""
    limits = StoreLimits.from_config(config)
    if config.db == ":memory:":
        return MemoryStore(limits)
    return SqliteStore.open(config.db, limits, reactor, now=clock.seconds())


class SignalingService(MultiService):
    """The hub, its listeners, its timers and its offline store."""

    def __init__(
        self,
        config: Config,
        reactor: Any,
        clock: Any,
        store: IOfflineStore,
        policies: Policies,
        inherited: InheritedSockets | None = None,
        cluster: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tls = policies.tls
        self.reactor = reactor
        self.clock = clock
        self.store = store
        self.draining = False
        self.metrics = Metrics()
        #: The :class:`~signaling.cluster.node.ClusterNode` with ``--redis``, else None.
        self.cluster = cluster
        self.registry = (
            cluster.registry if cluster is not None else LocalRegistry.from_config(store, config)
        )
        self.hub = hub = Hub(
            config, clock, store, self.metrics, policies.verifier, self.registry
        )
        if cluster is not None:
            cluster.registry.on_restored = hub.announce_again
        #: Every connection of every listener, counted from accept.
        self.gate = gate = ConnectionGate(
            policies.origins, policies.proxies,
            config.max_connections, config.max_connections_per_ip,
        )
        self.metrics.bind_stats(lambda: {**hub.stats(), "sockets": gate.open})
        #: Whether connections use the fast path of :mod:`signaling.internals`.
        self.fast_path = config.fast_path and internals.available()
        factory_class = internals.FastSignalingFactory if self.fast_path else SignalingFactory
        self.factory = factory_class(
            hub, gate, self.metrics, config.max_message_size, config.max_outgoing_size,
            config.max_send_buffer, RequestLimits.from_config(config), reactor,
        )
        started_at = clock.seconds()
        status = StatusEndpoints(
            hub, clock, started_at, lambda: not self.draining, policies.ice, policies.verifier,
            cluster,
        )
        self.site = make_site(config, status, self.metrics, UpgradeResource(self.factory), reactor)
        # On the fast path connections start in the WebSocket protocol, which
        # hands plain HTTP requests to the site (an upgrade is parsed once);
        # on the public API they start in the site, which upgrades them.
        # Either way they are counted from accept by the gate.
        self.factory.http_site = self.site
        main_factory = GatedFactory(
            self.factory if self.fast_path else self.site, gate, self.metrics, reactor
        )
        self.listeners: list[Listener] = []
        metrics_site = (
            GatedFactory(make_metrics_site(config, status, self.metrics, reactor),
                         gate, self.metrics, reactor)
            if config.metrics_listen else None
        )
        for index, spec in enumerate(listener_specs(config)):
            if inherited is not None:
                endpoint = inherited.endpoint(reactor, index, spec, self.tls)
            elif spec.description is None:
                endpoint = self._default_endpoint()
            else:
                endpoint = listen_endpoint(reactor, spec.description)
            self._add_listener(endpoint, metrics_site if spec.metrics else main_factory)
        self.timers = Timers(clock)
        self.timers.every(config.heartbeat_interval, hub.heartbeat)
        self.timers.every(config.stats_interval, hub.log_stats)
        self.timers.every(EXPIRY_SWEEP_INTERVAL, hub.expire_offline)

    def _default_endpoint(self) -> Any:
        config = self.config
        if self.tls is not None:
            return tls_server_endpoint(
                self.reactor, config.port, self.tls, config.interface, config.backlog
            )
        endpoint_class = TCP6ServerEndpoint if ":" in config.interface else TCP4ServerEndpoint
        return endpoint_class(
            self.reactor, config.port, backlog=config.backlog, interface=config.interface
        )

    def _add_listener(self, endpoint: Any, factory: Any) -> None:
        listener = Listener(endpoint, factory)
        listener.setServiceParent(self)
        self.listeners.append(listener)

    def startService(self) -> None:
        if self.cluster is not None:
            self.cluster.start()
        super().startService()
        self.timers.start()
        if self.config.demo:
            for url in demo_urls(self.config, self.ports()):
                _log.info("demo video call: open {url} in two browser tabs", url=url)

    def reload_tls(self) -> bool:
        """
        Load the TLS certificate and key again (after a renewal) for new
        handshakes; open connections keep theirs. False when TLS is off or the
        new files are unusable (then the old certificate stays).
        """
        if self.tls is None:
            return False
        _log.info("reloading TLS certificate")
        return self.tls.reload()

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        """
        Drain: ``/ready`` turns 503, listeners stop, every client gets
        ``server-shutdown`` and a 1001 close, then every connection still
        open (idle HTTP keep-alive ones) is cut; the offline store is
        flushed and closed; all within ``shutdown_timeout``.
        """
        self.running = False
        self.draining = True
        self.timers.stop()
        yield defer.DeferredList([listener.stopService() for listener in self.listeners])
        yield self._drain()
        self.gate.abort_all()
        yield deferLater(self.reactor, 0, lambda: None)  # aborted connections are lost a turn later
        yield self.store.close()
        if self.cluster is not None:
            yield self.cluster.stop()

    def _drain(self) -> defer.Deferred:
        hub = self.hub
        hub.shut_down(CLOSE_GOING_AWAY, "server shutting down", self.config.reconnect_jitter)
        deadline = self.reactor.seconds() + self.config.shutdown_timeout
        done: defer.Deferred = defer.Deferred()

        def check() -> None:
            if not hub.open_sessions():
                done.callback(None)
            elif self.reactor.seconds() >= deadline:
                hub.abort_all()
                done.callback(None)
            else:
                self.reactor.callLater(DRAIN_POLL_INTERVAL, check)

        check()
        return done

    def ports(self) -> list[Any]:
        """The listening ports, once started (for tests and embedders using port 0)."""
        return [listener.port for listener in self.listeners if listener.port is not None]


class Listener(Service):
    """
    Listens on one endpoint while running. A failure to listen is raised
    from ``privilegedStartService``, so ``twistd`` exits non-zero instead of
    running on with no listener.
    """

    def __init__(self, endpoint: Any, factory: Any) -> None:
        self._endpoint = endpoint
        self._factory = factory
        self.port: Any = None
        self._started = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._started:
            return
        self._started = True
        result: list[Any] = []
        self._endpoint.listen(self._factory).addBoth(result.append)
        if not result:
            raise RuntimeError(f"listening on {self._endpoint!r} did not finish at once")
        outcome = result[0]
        if isinstance(outcome, Failure):
            outcome.raiseException()
        self.port = outcome

    def stopService(self) -> defer.Deferred:
        super().stopService()
        if self.port is None:
            return defer.succeed(None)
        port, self.port = self.port, None
        return defer.maybeDeferred(port.stopListening)


class Timers:
    """
    Owns every periodic task of the service. A task that raises is logged
    and keeps running; all of them stop together.
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._tasks: list[tuple[float, LoopingCall]] = []

    def every(self, interval: float, function: Callable[[], Any]) -> None:
        """Run ``function`` every ``interval`` seconds while started."""

        def guarded() -> None:
            try:
                function()
            except Exception:
                _log.failure("periodic task {name} failed", name=function.__name__)

        call = LoopingCall(guarded)
        call.clock = self._clock
        self._tasks.append((interval, call))

    def start(self) -> None:
        """Start every task (first run after one interval)."""
        for interval, call in self._tasks:
            call.start(interval, now=False)

    def stop(self) -> None:
        """Stop every running task."""
        for _, call in self._tasks:
            if call.running:
                call.stop()


def freeze_startup_objects() -> None:
    """
    Move every object alive now (modules, classes, the service itself) out
    of the garbage collector's sight. Called by the command-line entry points
    once the server is built: a full collection then walks only what was
    created since, which keeps its pauses on the reactor thread short
    (measured in docs/offline-store.md). Embedders may call it after their own
    start-up.
    """
    import gc

    gc.collect()
    gc.freeze()


def install_signal_handlers(
    reactor: Any, service: Any, before_exit: Callable[[], Any] | None = None
) -> None:
    """
    SIGHUP calls ``service.reload_tls`` (renewal without restart). Once the
    reactor runs, a second SIGTERM or SIGINT while ``service.draining``
    exits at once (status 1) instead of waiting for the drain, after calling
    ``before_exit`` if given.

    ``service`` is a :class:`SignalingService`, or the supervisor of
    ``--workers`` (:class:`signaling.workers.Supervisor`), which forwards
    the signals to its workers.
    """
    import os
    import signal

    def reload(signum: int, frame: Any) -> None:
        reactor.callFromThread(service.reload_tls)

    signal.signal(signal.SIGHUP, reload)

    def wrap_stop_signals() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def handler(signum: int, frame: Any, previous: Any = previous) -> None:
                if service.draining:
                    if before_exit is not None:
                        before_exit()
                    os._exit(1)
                previous(signum, frame)

            signal.signal(signum, handler)

    reactor.callWhenRunning(wrap_stop_signals)
