"""
The files in ``etc/``, checked the way an operator uses them: the environment
file read by the server, the systemd unit verified and rated by
``systemd-analyze`` and its system call filter applied to a real server, the
certbot hook run against a certificate directory, the Prometheus example
parsed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys

import yaml
from twisted.internet import defer, threads
from twisted.internet.ssl import Certificate, optionsForClientTLS

from certs import PKI
from helpers import http_get, parse_metrics
from processes import MODULE, REPO, TWISTD, ProcessTestCase, free_port
from signaling.tap import ENVIRONMENT, Options
from tools import require_tool

ETC = REPO / "etc"
UNIT = ETC / "signaling.service"
#: Environment variables the file leaves out on purpose: the unit passes --db.
NOT_IN_ENV_FILE = {"SIGNALING_DB"}
#: Commented lines that show an example rather than the default.
EXAMPLES = {
    "SIGNALING_LISTEN", "SIGNALING_TLS_CERT", "SIGNALING_TLS_KEY", "SIGNALING_METRICS_LISTEN",
    "SIGNALING_AUTH_PUBLIC_KEY", "SIGNALING_ALLOWED_ORIGIN", "SIGNALING_STUN_URL",
    "SIGNALING_TURN_URL", "SIGNALING_REDIS", "SIGNALING_REDIS_PASSWORD_FILE",
}


def env_file_lines():
    """(name, value, commented) for every assignment in etc/signaling.env."""
    lines = []
    for line in (ETC / "signaling.env").read_text().splitlines():
        match = re.match(r"^(#?)([A-Z][A-Z0-9_]*)=(.*)$", line)
        if match:
            lines.append((match.group(2), match.group(3), bool(match.group(1))))
        else:
            assert not line.strip() or line.startswith("# "), f"not a comment or an assignment: {line!r}"
    return lines


def config_from(environ):
    """The Config the server builds from ``environ`` and no arguments."""
    options = Options(environ=environ)
    options.parseOptions(["--db", ":memory:"])
    return options.config


class EnvironmentFileTests(ProcessTestCase):
    def test_names_are_the_settings(self):
        names = [name for name, _, _ in env_file_lines()]
        self.assertEqual(len(names), len(set(names)), "a name appears twice")
        self.assertEqual(set(names), ENVIRONMENT - NOT_IN_ENV_FILE)

    def test_commented_lines_show_the_defaults(self):
        defaults = {name: value for name, value, commented in env_file_lines()
                    if commented and name not in EXAMPLES}
        self.assertEqual(
            [name for name, _, commented in env_file_lines() if not commented], [],
            "only defaults and examples: every line commented out")
        everything = config_from(defaults)
        self.assertEqual(everything, config_from({}))
        for name, value in defaults.items():
            self.assertEqual(config_from({name: value}), config_from({}), name)

    @defer.inlineCallbacks
    def test_documented_listen_line_starts_the_server(self):
        """Uncommenting ``SIGNALING_LISTEN=tcp6:9001`` (on a free port here) just works."""
        port = free_port()
        environ = {}
        for name, value, commented in env_file_lines():
            if not commented or name == "SIGNALING_LISTEN":
                environ[name] = value.replace("9001", str(port))
        self.assertEqual(environ, {"SIGNALING_LISTEN": f"tcp6:{port}"})
        server = self.spawn(MODULE, "--db", ":memory:", env=environ)
        [listening] = yield server.listening()
        self.assertEqual(listening, port)
        for host in ("127.0.0.1", "[::1]"):
            client = yield self.client(f"ws://{host}:{port}/")
            yield self.until_pong(client)


class UnitFileTests(ProcessTestCase):
    def verify_root(self, unit_text):
        """A directory holding the unit and what ``verify`` looks for, as --root."""
        root = self.mkdtemp()
        units = os.path.join(root, "etc/systemd/system")
        os.makedirs(units)
        with open(os.path.join(units, "signaling.service"), "w") as f:
            f.write(unit_text)
        # The units systemd itself ships (sysinit.target, ...), which verify loads too.
        shutil.copytree("/usr/lib/systemd/system", os.path.join(root, "usr/lib/systemd/system"),
                        symlinks=True)
        for path in ("/opt/signaling/venv/bin/twistd", "/bin/kill"):
            target = root + path
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w") as f:
                f.write("#!/bin/sh\n")
            os.chmod(target, 0o755)
        return root

    def test_systemd_analyze_verify(self):
        analyze = require_tool("systemd-analyze", "systemd")
        text = UNIT.read_text()
        for unit, clean in ((text, True),
                            (text.replace("StateDirectoryMode=", "StateDirectoryMod="), False),
                            (text.replace("/opt/signaling/venv/bin/twistd", "/opt/nowhere/twistd"),
                             False)):
            root = self.verify_root(unit)
            result = subprocess.run([analyze, "verify", f"--root={root}", "signaling.service"],
                                    capture_output=True, text=True, timeout=60)
            problems = (result.returncode, result.stdout + result.stderr)
            if clean:
                self.assertEqual(problems, (0, ""))
            else:
                self.assertNotEqual(problems, (0, ""), "verify would not notice a broken unit")

    def exposure(self, unit_text):
        analyze = require_tool("systemd-analyze", "systemd")
        path = os.path.join(self.mkdtemp(), "signaling.service")
        with open(path, "w") as f:
            f.write(unit_text)
        result = subprocess.run([analyze, "security", "--offline=true", path],
                                capture_output=True, text=True, timeout=60)
        match = re.search(r"Overall exposure level for signaling.service: ([\d.]+)", result.stdout)
        self.assertIsNotNone(match, result.stdout + result.stderr)
        return float(match.group(1))

    def test_security_exposure(self):
        text = UNIT.read_text()
        self.assertLessEqual(self.exposure(text), 2.0)
        # The port-443 variant the unit describes, with its three lines swapped in.
        variant = (text.replace("\nCapabilityBoundingSet=\n", "\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n")
                   .replace("\nAmbientCapabilities=\n", "\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n")
                   .replace("\nPrivateUsers=yes\n", "\nPrivateUsers=no\n"))
        self.assertNotEqual(variant, text)
        self.assertLessEqual(self.exposure(variant), 2.0)
        # The exposure the unit's comment states.
        stated = re.search(r"rates it ([\d.]+) as is,\n# ([\d.]+) with port 443", text)
        self.assertEqual((float(stated.group(1)), float(stated.group(2))),
                         (self.exposure(text), self.exposure(variant)))

    def test_workers_variant_verifies_and_parses(self):
        """The commented --workers variant, swapped in as the unit says, is a valid unit."""
        analyze = require_tool("systemd-analyze", "systemd")
        text = UNIT.read_text()
        [variant_exec] = [line[1:] for line in text.splitlines() if line.startswith("#ExecStart=")]
        [groups] = [line[1:] for line in text.splitlines() if line.startswith("#SupplementaryGroups=")]
        lines = [variant_exec if line.startswith("ExecStart=") else line for line in text.splitlines()]
        unit = "\n".join(lines).replace("\n[Install]", f"\n{groups}\n\n[Install]") + "\n"
        root = self.verify_root(unit)
        result = subprocess.run([analyze, "verify", f"--root={root}", "signaling.service"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual((result.returncode, result.stdout + result.stderr), (0, ""))
        self.assertLessEqual(self.exposure(unit), 2.0)
        options = Options(environ={})
        options.parseOptions(shlex.split(variant_exec[len("ExecStart="):])[4:])
        self.assertEqual((options.config.workers, options.config.redis_url),
                         (4, "unix:///run/redis/redis-server.sock"))

    def test_exec_start_options_parse(self):
        [line] = [line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart=")]
        argv = shlex.split(line[len("ExecStart="):])
        self.assertEqual(argv[:4], ["/opt/signaling/venv/bin/twistd", "--nodaemon", "--pidfile=",
                                    "signaling"])
        options = Options(environ={})
        options.parseOptions(argv[4:])
        self.assertEqual(options.config.db, "/var/lib/signaling/signaling.sqlite")

    def test_install_steps_create_what_the_unit_names(self):
        text = UNIT.read_text()
        steps = "\n".join(line[4:] for line in text.splitlines() if line.startswith("#   "))
        [documentation] = [line for line in text.splitlines() if line.startswith("Documentation=")]
        for url in documentation.split("=", 1)[1].split():
            path = url.removeprefix("file://")
            installed = path.removeprefix("/opt/signaling/")
            self.assertTrue((REPO / installed).exists(), path)
            top = installed.split("/")[0]
            self.assertIn(f"/opt/signaling/{top}", steps, f"no install step puts {path} there")
        self.assertIn(
            '/opt/signaling/venv/bin/python -c "from twisted.plugin import IPlugin, getPlugins; '
            'list(getPlugins(IPlugin))"', steps)

    @defer.inlineCallbacks
    def test_server_works_under_the_system_call_filter(self):
        """
        The unit's SystemCallFilter= and RestrictAddressFamilies= (applied
        with seccomp, see syscall_filter.py): twistd starts, a TLS handshake,
        WebSocket traffic, the SQLite store and its writer thread, /metrics
        with the process metrics, fork and exec of a Python child, SIGTERM.
        """
        require_tool("systemd-analyze", "systemd")
        directory = self.mkdtemp()
        pki = PKI.create()
        files = pki.write(os.path.join(directory, "tls"))
        filtered = (str(REPO / "tests" / "syscall_filter.py"), str(UNIT), "--", sys.executable, *TWISTD)
        server, port = yield self.start(
            filtered, "--port", "0", "--db", "store.sqlite", "--tls-cert", str(files.fullchain),
            "--tls-key", str(files.key), "--metrics-listen", "tcp:0:interface=127.0.0.1",
            directory=directory, listeners=2)
        [_, metrics_port] = yield server.listening(2)
        context = ssl.create_default_context(cadata=pki.root_pem.decode())

        def handshake():
            with socket.create_connection(("127.0.0.1", port)) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    return tls.version(), tls.recv(100)

        version, answer = yield threads.deferToThread(handshake)
        self.assertEqual((version, answer[:12]), ("TLSv1.3", b"HTTP/1.1 200"))
        trust = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(pki.root_pem))
        alice = yield self.register(f"wss://127.0.0.1:{port}/", "alice", context_factory=trust)
        alice.send({"type": "message", "to": "bob", "payload": "stored"})
        reply = yield alice.expect("peer-offline")
        self.assertTrue(reply["queued"])
        _, body = yield http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        names = {name for name, _ in parse_metrics(body)}
        self.assertIn("process_open_fds", names)
        # The seccomp filters are inherited: check in a child of the same kind.
        child = subprocess.run(
            [sys.executable, str(REPO / "tests" / "syscall_filter.py"), str(UNIT), "--", sys.executable,
             "-c", "import os, socket, subprocess, sys\n"
                   "print(subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True,"
                   " text=True).stdout.strip())\n"
                   "socket.socket(socket.AF_UNIX).close()\n"
                   "try:\n    socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
                   "except OSError as e:\n    print(e.errno)\n"
                   "try:\n    os.setuid(os.getuid())\n"  # @privileged: denied
                   "except OSError as e:\n    print(e.errno)\n"],
            capture_output=True, text=True, timeout=60)
        # 97: EAFNOSUPPORT (address family), 1: EPERM (system call not in the filter)
        self.assertEqual(child.stdout.split(), ["42", "97", "1"], child.stderr)
        server.send_signal(signal.SIGTERM)
        code, _ = yield alice.wait_closed()
        self.assertEqual(code, 1001)
        status = yield server.wait_exit()
        self.assert_clean_exit(server, status)
        self.assertNotIn("Operation not permitted", server.log)

    def test_write_execute_memory_is_needed_for_tls(self):
        """Why the unit leaves MemoryDenyWriteExecute= out: TLS contexts need cffi callbacks."""
        require_tool("systemd-analyze", "systemd")
        script = ("from OpenSSL import SSL\n"
                  "try:\n    SSL.Context(SSL.TLS_SERVER_METHOD).set_alpn_select_callback(lambda c, p: b'')\n"
                  "except MemoryError as e:\n    print('refused:', e)\nelse:\n    print('works')\n")
        outputs = []
        for extra in ((), ("--deny-write-execute",)):
            result = subprocess.run(
                [sys.executable, str(REPO / "tests" / "syscall_filter.py"), str(UNIT), *extra, "--",
                 sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
            outputs.append(result.stdout.split(":")[0].strip())
        self.assertEqual(outputs, ["works", "refused"])


class CertbotHookTests(ProcessTestCase):
    def run_hook(self, environ):
        """Run etc/certbot-deploy-hook with a systemctl that only records its arguments."""
        directory = self.mkdtemp()
        bin_dir = os.path.join(directory, "bin")
        os.mkdir(bin_dir)
        record = os.path.join(directory, "systemctl.args")
        with open(os.path.join(bin_dir, "systemctl"), "w") as f:
            f.write(f'#!/bin/sh\necho "$@" >> {shlex.quote(record)}\n')
        os.chmod(os.path.join(bin_dir, "systemctl"), 0o755)
        target = os.path.join(directory, "tls")
        env = {"PATH": bin_dir + os.pathsep + os.environ["PATH"], "DEPLOY_TARGET": target,
               "DEPLOY_GROUP": str(os.getgid()), **environ}
        result = subprocess.run([str(ETC / "certbot-deploy-hook")], env=env, capture_output=True,
                                text=True, timeout=30)
        calls = open(record).read().splitlines() if os.path.exists(record) else []
        return result, target, calls

    def lineage(self):
        directory = self.mkdtemp()
        for name, content in (("fullchain.pem", "CERT\n"), ("privkey.pem", "KEY\n")):
            with open(os.path.join(directory, name), "w") as f:
                f.write(content)
        return directory

    def test_copies_the_renewed_lineage_and_reloads(self):
        lineage = self.lineage()
        result, target, calls = self.run_hook({"RENEWED_LINEAGE": lineage})
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(sorted(os.listdir(target)), ["fullchain.pem", "privkey.pem"])
        self.assertEqual(open(os.path.join(target, "fullchain.pem")).read(), "CERT\n")
        self.assertEqual(open(os.path.join(target, "privkey.pem")).read(), "KEY\n")
        self.assertEqual(os.stat(os.path.join(target, "privkey.pem")).st_mode & 0o777, 0o640)
        self.assertEqual(os.stat(target).st_mode & 0o777, 0o750)
        self.assertEqual(calls, ["reload signaling.service"])

    def test_fails_loudly_without_a_lineage(self):
        for environ, complaint in (({}, "RENEWED_LINEAGE is not set"),
                                   ({"RENEWED_LINEAGE": self.mkdtemp()}, "fullchain.pem")):
            result, target, calls = self.run_hook(environ)
            self.assertEqual(result.returncode, 1)
            self.assertIn(complaint, result.stderr)
            self.assertFalse(os.path.exists(target))
            self.assertEqual(calls, [])


class PrometheusExampleTests(ProcessTestCase):
    def test_scrape_config(self):
        config = yaml.safe_load((ETC / "prometheus.yml").read_text())
        [job] = config["scrape_configs"]
        self.assertEqual((job["job_name"], job["metrics_path"]), ("signaling", "/metrics"))
        [target] = job["static_configs"][0]["targets"]
        host, port = target.rsplit(":", 1)
        # The target is the --metrics-listen the comments and the env file show.
        self.assertIn(f"tcp:{port}:interface={host}", (ETC / "prometheus.yml").read_text())
        self.assertIn(f"SIGNALING_METRICS_LISTEN=tcp:{port}:interface={host}",
                      (ETC / "signaling.env").read_text())
