"""
The server's listening sockets: which ones a configuration asks for, how a
``--workers`` parent binds them, and how a worker serves on the ones it
inherits.

:func:`listener_specs` lists them in a fixed order (the ``--port`` listener,
each ``--listen``, each ``--metrics-listen``). A single process turns each
into a Twisted endpoint and listens (:mod:`signaling.service`). With
``--workers`` the parent binds each with :func:`bind_listener` before any
privilege drop and hands the sockets to its workers in that same order;
each worker wraps them in :class:`InheritedSockets`, whose endpoints adopt
a socket instead of binding one.

Endpoint descriptions are read by Twisted's own parsers: :class:`_Recorder`
stands in for the reactor and notes the one ``listenTCP``/``listenSSL``/
``adoptStreamPort`` call the parsed endpoint makes, so ``tcp:``, ``tcp6:``,
``ssl:``, ``tls:`` and ``systemd:`` mean exactly what they mean without
workers.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, replace
from typing import Any, Iterable

from twisted.internet import defer
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from .config import Config
from .tls import ssl_description_options, tls_server_factory

__all__ = [
    "InheritedEndpoint",
    "InheritedSockets",
    "ListenerSpec",
    "bind_listener",
    "check_worker_listeners",
    "listener_specs",
    "metrics_for_worker",
    "worker_config",
]


@dataclass(frozen=True)
class ListenerSpec:
    """
    One listening socket of the server.

    :ivar description: the Twisted endpoint description (``--listen``,
        ``--metrics-listen``), or ``None`` for the ``--port`` listener.
    :ivar metrics: serves the metrics site (``--metrics-listen``), not the
        WebSocket and HTTP site.
    """

    description: str | None
    metrics: bool = False


def listener_specs(config: Config) -> list[ListenerSpec]:
    """Every listener ``config`` asks for, in the order parent and workers agree on."""
    specs = [ListenerSpec(None)] if config.port is not None else []
    specs += [ListenerSpec(description) for description in config.listen]
    specs += [ListenerSpec(description, metrics=True) for description in config.metrics_listen]
    return specs


def _kind(description: str) -> str:
    """The endpoint type of a description: ``tcp``, ``ssl``, ``systemd``..."""
    return description.split(":", 1)[0].lower()


#: Endpoint types whose port ``metrics_for_worker`` can move.
_PORT_KINDS = ("tcp", "tcp6", "ssl")


def metrics_for_worker(description: str, worker: int) -> str:
    """
    The ``--metrics-listen`` endpoint of worker number ``worker`` (from 0):
    the same description with its port plus ``worker``, so each worker's
    metrics have their own port (port 0 stays 0: any free port).

    :raises ValueError: the description is not a ``tcp:``, ``tcp6:`` or
        ``ssl:`` endpoint with a port.
    """
    raw = re.split(r"(?<!\\)((?:\\\\)*:)", description)
    # raw alternates text and separators; rebuild with the port replaced.
    texts, separators = raw[::2], raw[1::2]
    if texts[0].lower() not in _PORT_KINDS:
        raise ValueError(
            f"--metrics-listen {description!r}: with --workers each worker serves its metrics on"
            " its own port (the given one plus the worker number), so only tcp:, tcp6: and"
            " ssl: endpoints can be used"
        )
    for index, text in enumerate(texts[1:], 1):
        name, sep, value = text.partition("=")
        number = value if sep else name
        if sep and name != "port":
            continue
        if not number.isdigit():
            break
        port = int(number)
        moved = port + worker if port else 0
        if moved > 65535:
            raise ValueError(
                f"--metrics-listen {description!r}: worker {worker + 1}'s port {moved}"
                " is above 65535"
            )
        texts[index] = f"port={moved}" if sep else str(moved)
        return "".join(t + s for t, s in zip(texts, separators + [""]))
    raise ValueError(f"--metrics-listen {description!r}: no port number found")


def check_worker_listeners(config: Config) -> None:
    """
    Refuse listeners that cannot be shared with workers (with ``--workers``
    above 1; a single process takes every endpoint Twisted knows).

    :raises ValueError: a Unix socket (a worker adopting it would reset its
        mode and remove its path when it stops), or a ``--metrics-listen``
        without a port to give each worker its own.
    """
    if config.workers <= 1:
        return
    for description in config.listen:
        kind = _kind(description)
        unix_systemd = kind == "systemd" and re.search(r"(?i)domain=unix", description)
        if kind == "unix" or unix_systemd:
            raise ValueError(
                f"--listen {description!r}: Unix sockets cannot be shared with --workers;"
                " use tcp: or tcp6: (or run without --workers)"
            )
    for description in config.metrics_listen:
        for worker in range(config.workers):
            metrics_for_worker(description, worker)


class _Recorder:
    """
    A stand-in reactor for an endpoint parser: records the one listening
    call (``listenTCP``, ``listenSSL`` or ``adoptStreamPort``) the parsed
    endpoint makes, instead of listening.
    """

    def __init__(self) -> None:
        self.call: tuple[str, dict[str, Any]] | None = None

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self._record("tcp", port=port, factory=factory, backlog=backlog,
                            interface=interface, context=None)

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, backlog: int = 50,
                  interface: str = "") -> Any:
        return self._record("tcp", port=port, factory=factory, backlog=backlog,
                            interface=interface, context=contextFactory)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        # The endpoint closes fileDescriptor afterwards: keep a copy.
        return self._record("fd", fd=os.dup(fileDescriptor), family=addressFamily,
                            factory=factory)

    def _record(self, kind: str, **arguments: Any) -> Any:
        self.call = (kind, arguments)
        return None


def _record_listen(description: str, factory: Any) -> tuple[str, dict[str, Any]]:
    """
    Parse ``description`` and make its endpoint "listen" with ``factory``
    on a :class:`_Recorder`: the kind (``"tcp"`` or ``"fd"``) and arguments
    of the call it made.
    """
    refused = ValueError(f"{description!r}: this endpoint type cannot be shared with workers")
    reactor_stand_in = _Recorder()
    result: list[Any] = []
    try:
        serverFromString(reactor_stand_in, description).listen(factory).addBoth(result.append)
    except AttributeError:  # it wants a reactor method other than the recorded ones
        raise refused from None
    if result and isinstance(result[0], Failure):
        if result[0].check(AttributeError):
            raise refused
        result[0].raiseException()
    if reactor_stand_in.call is None:
        raise refused
    return reactor_stand_in.call


def _bind_tcp(interface: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket bound the way Twisted's ``listenTCP`` binds one."""
    family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            address = socket.getaddrinfo(interface, port, family, 0, 0, socket.AI_NUMERICHOST)[0][4]
        else:
            address = (interface, port)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise CannotListenError(interface, port, e) from None
    return sock


def bind_listener(spec: ListenerSpec, config: Config) -> socket.socket:
    """
    Bind and listen on the socket ``spec`` describes, without serving it
    (the parent of ``--workers``): the workers accept on it.

    :raises CannotListenError: the address is in use or not allowed.
    :raises ValueError: the endpoint type cannot be shared with workers.
    """
    if spec.description is None:
        assert config.port is not None
        return _bind_tcp(config.interface, config.port, config.backlog)
    kind, call = _record_listen(spec.description, Factory())
    if kind == "fd":
        sock = socket.socket(fileno=call["fd"])
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            sock.close()
            raise ValueError(
                f"{spec.description!r}: only TCP sockets can be shared with --workers"
            )
        return sock
    return _bind_tcp(call["interface"], call["port"], call["backlog"])


@implementer(IStreamServerEndpoint)
class InheritedEndpoint:
    """
    Serves on a listening socket inherited from the parent process,
    optionally with TLS (``context_factory``), through
    :func:`signaling.tls.tls_server_factory`.
    """

    def __init__(self, reactor: Any, fd: int, context_factory: Any = None) -> None:
        self._reactor = reactor
        self._fd = fd
        self._context_factory = context_factory

    def listen(self, factory: Any) -> defer.Deferred:
        """Adopt the socket and serve ``factory`` on it (once)."""
        if self._context_factory is not None:
            factory = tls_server_factory(self._context_factory, factory)
        probe = socket.socket(fileno=self._fd)
        family = probe.family
        probe.detach()
        return AdoptedStreamServerEndpoint(self._reactor, self._fd, family).listen(factory)


class InheritedSockets:
    """
    The listening sockets (file descriptors) a worker was started with, in
    :func:`listener_specs` order.
    """

    def __init__(self, fds: Iterable[int]) -> None:
        self.fds = list(fds)

    def endpoint(self, reactor: Any, index: int, spec: ListenerSpec, tls: Any) -> Any:
        """
        The endpoint serving listener number ``index`` (``spec``) on its
        inherited socket. ``tls`` is the ``--tls-cert`` context factory, used
        by the ``--port`` listener; an ``ssl:`` description brings its own,
        loaded as without workers, and a ``tls:`` one is read by Twisted's
        parser.
        """
        fd = self.fds[index]
        if spec.description is None:
            return InheritedEndpoint(reactor, fd, tls)
        kind = _kind(spec.description)
        if kind == "systemd":
            return InheritedEndpoint(reactor, fd)
        if kind == "ssl":
            # Loaded as without workers (tls.listen_endpoint): the whole
            # chain and the ALPN answer browsers need.
            return InheritedEndpoint(reactor, fd, ssl_description_options(spec.description))
        return _ParsedInheritedEndpoint(reactor, fd, spec.description)


@implementer(IStreamServerEndpoint)
class _ParsedInheritedEndpoint:
    """An endpoint description served on an inherited socket instead of binding its own."""

    def __init__(self, reactor: Any, fd: int, description: str) -> None:
        self._reactor = reactor
        self._fd = fd
        self._description = description

    def listen(self, factory: Any) -> defer.Deferred:
        """Let Twisted's parser build the factory chain (TLS included), then adopt."""
        try:
            _, call = _record_listen(self._description, factory)
        except Exception:
            return defer.fail()
        if "fd" in call:
            os.close(call["fd"])
        endpoint = InheritedEndpoint(self._reactor, self._fd, call.get("context"))
        return endpoint.listen(call["factory"])


def worker_config(config: Config, worker: int) -> Config:
    """``config`` as worker number ``worker`` (from 0) runs it: its own metrics ports."""
    return replace(
        config,
        metrics_listen=tuple(metrics_for_worker(d, worker) for d in config.metrics_listen),
    )
