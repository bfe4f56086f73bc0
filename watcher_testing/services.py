"""Local services the demo, the tests and the benchmarks run: redis-server, docker-registry,
Google's Pub/Sub emulator.

Real processes on free loopback ports, started and stopped on demand (the
fault tests stop and restart Redis; a restart comes back empty, as a Redis
without persistence does). Redis comes as people deploy it: with a password
or ACL users, TLS only (certificates made on the spot by :func:`make_tls`),
or as a three-master Redis Cluster (:class:`RedisClusterNodes`).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import random
import shutil
import socket
import ssl
import subprocess
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from watcher_testing.waiting import wait_until

INSTALL_HINT = "bash .ci/install"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# A cluster node also listens on its port + 10000 (the cluster bus), so a
# node's port must stay below 65536 - 10000.
CLUSTER_BUS_OFFSET = 10000
CLUSTER_PORT_LIMIT = 65536 - CLUSTER_BUS_OFFSET


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_port() -> int:
    """A free port below 55536 whose cluster-bus port (+10000) is free as well."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randrange(20000, CLUSTER_PORT_LIMIT)
        if _bindable(port) and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a Redis Cluster node")


@dataclass(frozen=True)
class TlsFiles:
    """A CA and a server certificate it signed (PEM files), as :func:`make_tls` writes them."""

    ca: Path
    cert: Path
    key: Path


def make_tls(dir: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost")) -> TlsFiles:
    """A fresh CA and a server certificate for ``hosts`` (IP addresses or DNS names).

    Each call makes a new CA, so a second call gives the "wrong CA" a client
    must refuse.
    """
    dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {dir.name}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(dir / "ca.pem", dir / "server.pem", dir / "server.key")
    files.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.key.chmod(0o600)
    return files


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed ({INSTALL_HINT}, or apt-get install {name})")
    return path


def _stop(proc: subprocess.Popen[bytes], *, kill: bool) -> None:
    if kill:
        proc.kill()
    else:
        proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class RedisServer:
    """A redis-server without persistence; ``DEBUG`` allowed from localhost (fault tests).

    ``password`` sets ``requirepass`` (the default user's password); ``users``
    are ACL rules, one ``user`` directive each (``"watcher on >secret ~iw:* +@all"``);
    ``tls`` serves TLS only (``--port 0 --tls-port``) with those certificates.
    ``url`` carries the password and the scheme a client needs.
    """

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    password: str | None = None
    users: tuple[str, ...] = ()
    tls: TlsFiles | None = None
    args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password else ""
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = ["--port", "0", "--tls-port", str(self.port)]
            listen += ["--tls-cert-file", str(self.tls.cert), "--tls-key-file", str(self.tls.key)]
            listen += ["--tls-ca-cert-file", str(self.tls.ca), "--tls-auth-clients", "no"]
        auth = ["--requirepass", self.password] if self.password else []
        for rule in self.users:
            auth += ["--user", *rule.split()]
        return [
            _binary("redis-server"),
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--loglevel",
            "warning",
            "--enable-debug-command",
            "local",
            *auth,
            *self.args,
        ]

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        # No persistence: a restart comes back empty, the worst case.
        with open(self.dir / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._pong, 30, what="redis-server to answer")
        except RuntimeError:
            self.stop()  # not left running behind a test that failed to start it
            raise

    def _pong(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited (log: {self.dir / 'redis.log'})")
        return _answers_ping(self.port, self.tls)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, kill=True)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def _answers_ping(port: int, tls: TlsFiles | None = None) -> bool:
    """Redis is up: it answers PING (with PONG, or with NOAUTH when it wants a password)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            sock = raw
            if tls is not None:
                context = ssl.create_default_context(cafile=str(tls.ca))
                # Up is all this asks; a certificate for another name is a test's business.
                context.check_hostname = False
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(b"PING\r\n")
            answer = sock.recv(16)
            return answer.startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def _pinged(port: int) -> Callable[[], bool]:
    return lambda: _answers_ping(port)


@dataclass
class RedisClusterNodes:
    """Three redis-server masters joined into one Redis Cluster (no replicas, no persistence).

    Ports are below 55536 (each node's cluster bus listens on port + 10000).
    ``url`` names the first node; a cluster client discovers the others.
    """

    dir: Path
    ports: tuple[int, ...] = ()
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ports:
            ports: list[int] = []
            while len(ports) < 3:
                port = cluster_port()
                if all(abs(port - p) not in (0, CLUSTER_BUS_OFFSET) for p in ports):
                    ports.append(port)
            self.ports = tuple(ports)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        binary = _binary("redis-server")
        for port in self.ports:
            node = self.dir / str(port)
            node.mkdir(parents=True, exist_ok=True)
            with open(node / "redis.log", "ab") as log:
                self.procs.append(
                    subprocess.Popen(
                        [
                            binary,
                            "--port",
                            str(port),
                            "--bind",
                            "127.0.0.1",
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(node / "nodes.conf"),
                            "--cluster-node-timeout",
                            "5000",
                            "--save",
                            "",
                            "--appendonly",
                            "no",
                            "--dir",
                            str(node),
                            "--loglevel",
                            "warning",
                        ],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        for port in self.ports:
            wait_until(_pinged(port), 30, what=f"redis-server (cluster node {port})")
        created = subprocess.run(
            [
                _binary("redis-cli"),
                "--cluster",
                "create",
                *(f"127.0.0.1:{port}" for port in self.ports),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed: {created.stdout}{created.stderr}"
            )
        for port in self.ports:
            wait_until(self._state_ok(port), 30, what=f"cluster state ok on {port}")

    def _state_ok(self, port: int) -> Callable[[], bool]:
        return lambda: "cluster_state:ok" in self.cli(port, "cluster", "info")

    def cli(self, port: int, *args: str) -> str:
        """``redis-cli -p PORT ARGS...``: its output."""
        return subprocess.run(
            [_binary("redis-cli"), "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def stop(self) -> None:
        for proc in self.procs:
            _stop(proc, kill=True)
        self.procs.clear()


@dataclass
class DockerRegistry:
    """Debian's docker-registry (the distribution registry) on 127.0.0.1, storing in ``dir``."""

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the registry part of image names."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def root(self) -> Path:
        return self.dir / "data"

    def start(self) -> None:
        binary = _binary("docker-registry")
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.dir / "registry.yml"
        config.write_text(
            "version: 0.1\nlog: {level: error}\n"
            f"storage: {{filesystem: {{rootdirectory: {self.root}}}, delete: {{enabled: true}}}}\n"
            f"http: {{addr: '{self.host}'}}\n"
        )
        with open(self.dir / "registry.log", "wb") as log:
            self.proc = subprocess.Popen(
                [binary, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_until(self._answers, 30, what="docker-registry to answer")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/v2/", timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, kill=False)
            self.proc = None


PUBSUB_EMULATOR = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
PUBSUB_EMULATOR_PACKAGE = "google-cloud-cli-pubsub-emulator"


def pubsub_emulator_binary() -> str:
    """Google's Pub/Sub emulator launcher (package google-cloud-cli-pubsub-emulator)."""
    path = Path(PUBSUB_EMULATOR)
    if not path.exists() or shutil.which("java") is None:
        raise RuntimeError(
            f"Google's Pub/Sub emulator is not installed: {PUBSUB_EMULATOR} and java come "
            f"with the package {PUBSUB_EMULATOR_PACKAGE} (part of these machines' image; "
            "Debian's archive does not carry it)"
        )
    return str(path)


@dataclass
class PubSubEmulator:
    """Google's own Pub/Sub emulator (Java) on 127.0.0.1, reached as ``PUBSUB_EMULATOR_HOST``.

    Topics and subscriptions are made, and messages published, through its REST API
    (the same resource paths as pubsub.googleapis.com), as the registry would.
    """

    dir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``: the value of ``PUBSUB_EMULATOR_HOST``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = pubsub_emulator_binary()
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "pubsub.log", "ab") as log:
            self.proc = subprocess.Popen(
                [binary, "--host=127.0.0.1", f"--port={self.port}"],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        try:
            wait_until(self._answers, 60, what="the Pub/Sub emulator to answer")
        except RuntimeError:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"the Pub/Sub emulator exited (log: {self.dir / 'pubsub.log'})")
        try:
            with urllib.request.urlopen(f"http://{self.host}/", timeout=1):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            # The launcher execs java: its pid is the JVM's.
            _stop(self.proc, kill=False)
            self.proc = None

    def _call(self, method: str, path: str, body: object | None = None) -> dict[str, object]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://{self.host}/v1/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read() or b"{}")
        return answer if isinstance(answer, dict) else {}

    def create_topic(self, project: str, topic: str = "gcr") -> str:
        """``projects/P/topics/T`` (the registry's topic is ``gcr``)."""
        path = f"projects/{project}/topics/{topic}"
        self._call("PUT", path, {})
        return path

    def create_subscription(
        self, project: str, name: str, topic: str = "gcr", *, ack_deadline: int = 10
    ) -> str:
        """A pull subscription on ``projects/P/topics/T``: ``projects/P/subscriptions/S``."""
        path = f"projects/{project}/subscriptions/{name}"
        self._call(
            "PUT",
            path,
            {"topic": f"projects/{project}/topics/{topic}", "ackDeadlineSeconds": ack_deadline},
        )
        return path

    def publish(self, topic: str, *payloads: bytes) -> list[str]:
        """Publish each payload as one message's data on ``projects/P/topics/T``; the ids."""
        messages = [{"data": base64.b64encode(payload).decode()} for payload in payloads]
        answer = self._call("POST", f"{topic}:publish", {"messages": messages})
        ids = answer.get("messageIds", [])
        return [str(i) for i in ids] if isinstance(ids, list) else []

    def pull(self, subscription: str, max_messages: int = 100) -> list[dict[str, object]]:
        """Messages waiting on ``subscription`` (not acked: their ack deadline runs)."""
        answer = self._call(
            "POST",
            f"{subscription}:pull",
            {"maxMessages": max_messages, "returnImmediately": True},
        )
        received = answer.get("receivedMessages", [])
        return list(received) if isinstance(received, list) else []

    def drain(self, subscription: str) -> int:
        """Pull and ack every message waiting on ``subscription``; how many there were."""
        drained = 0
        while received := self.pull(subscription):
            ack_ids = [str(m["ackId"]) for m in received if isinstance(m, dict)]
            self._call("POST", f"{subscription}:acknowledge", {"ackIds": ack_ids})
            drained += len(ack_ids)
        return drained
