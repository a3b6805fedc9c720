"""Real Redis peers on 127.0.0.1 for the shared-cache tests: one server, a 3-primary Redis
Cluster, and a primary watched by a Sentinel.

Each peer is the machine's ``redis-server`` (``.ci/run`` installs Debian's) in a temp dir of its
own, persistence off, held by its ``Popen`` and stopped by its PID; every wait is bounded. The
fixtures in ``tests/conftest.py`` start them; a test reaches one through ``url`` (what the
middleware's settings take) or ``client()`` (redis-py with short timeouts and no retries, so
that a fault shows at once)::

    server = RedisServer(tmp_path).start()
    server.pause()  # a hung Redis; kill() is a crash, restart() brings it back on its port
    server.stop()
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from _servers import HOST, free_port, stop_process
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel

from helpers.needs import require_peer
from helpers.servers import STOP_TIMEOUT_S

__all__ = [
    "CLIENT_TIMEOUT_S",
    "READY_TIMEOUT_S",
    "RedisCluster",
    "RedisPeerError",
    "RedisSentinel",
    "RedisServer",
    "process_state",
    "require_redis",
]

READY_TIMEOUT_S = 10.0  # a redis-server answers PING in milliseconds; this is for a loaded box
CLUSTER_TIMEOUT_S = 30.0  # `redis-cli --cluster create`, then every node's cluster_state:ok
CLIENT_TIMEOUT_S = 2.0
PORT_ATTEMPTS = 5  # a free port can be taken by another process before redis-server binds it
_POLL_S = 0.05
_LOG_TAIL = 4000


class RedisPeerError(RuntimeError):
    """A Redis peer did not start, or did not become ready in time (with its log's tail)."""


def require_redis() -> str:
    """The path of ``redis-server``: skip without it, fail under ``CI=true``."""
    return require_peer("redis-server")


def _no_retry() -> Retry:
    """No retry: redis-py retries a failed command by default, with a backoff, which would
    hide a fault from the test and stretch every timeout."""
    return Retry(NoBackoff(), 0)


def _port_free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def process_state(pid: int) -> str:
    """The one-letter state of process ``pid`` from /proc (``T`` stopped, ``Z`` zombie), or
    an empty string when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return ""
    return stat.rsplit(")", 1)[1].split()[0]  # after the command name, which may hold spaces


class RedisServer:
    """One ``redis-server`` on 127.0.0.1:``port`` (a free one unless given), persistence off,
    with ``tmp_dir`` as its directory and ``redis.log`` there; ``extra`` options are appended
    to its command line. ``url`` is final once ``start()`` returns."""

    def __init__(
        self, tmp_dir: Path, *, port: int | None = None, extra: Sequence[str] = ()
    ) -> None:
        self.dir = tmp_dir
        self.extra = tuple(extra)
        self._port_given = port is not None
        self.port = port if port is not None else self._free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._log_offset = 0  # where the current run's lines start in redis.log

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The PID of the running server (paused included), None when it is not running."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """Whether its process exists (a paused one does)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path:
        """Its log file; what it prints before opening it goes to ``redis.out`` beside it."""
        return self.dir / "redis.log"

    def log(self) -> str:
        """The tail of its log and of its output, for a failure message."""
        texts = []
        for path in (self.dir / "redis.out", self.log_path):
            if path.exists():
                texts.append(path.read_text(errors="replace")[-_LOG_TAIL:])
        return "\n".join(texts)

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING. If the port was not given and another
        process took it first, a fresh port is tried (a bounded number of times)."""
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return self._start_once()
            except RedisPeerError:
                if self._port_given or not self._lost_port():
                    raise
            self.port = self._free_port()
        return self._start_once()

    def restart(self) -> None:
        """Start it again on the same port (stopping it first if it runs), waiting for PING."""
        self.stop()
        self._start_once()

    def stop(self) -> None:
        """SIGTERM by PID (resumed first if paused), SIGKILL after a bound; idempotent."""
        if self._proc is None:
            return
        if self._paused and self.running:
            self.resume()  # a stopped process would not act on SIGTERM until the SIGKILL
        stop_process(self._proc, STOP_TIMEOUT_S)
        self._paused = False

    def kill(self) -> None:
        """A crash: SIGKILL now, and wait until it has exited."""
        if not self.running or self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=STOP_TIMEOUT_S)
        self._paused = False

    def pause(self) -> None:
        """A hung server: SIGSTOP, returning once it has stopped; it keeps its connections
        but answers nothing."""
        pid = self._signal(signal.SIGSTOP)
        self._paused = True
        # A signal is delivered asynchronously: wait until the kernel shows it stopped.
        _wait_until(lambda: process_state(pid) == "T", READY_TIMEOUT_S, "SIGSTOP", self)

    def resume(self) -> None:
        """SIGCONT, returning once it runs again: it answers the commands sent meanwhile
        first."""
        pid = self._signal(signal.SIGCONT)
        self._paused = False
        _wait_until(lambda: process_state(pid) != "T", READY_TIMEOUT_S, "SIGCONT", self)

    def client(self, *, timeout_s: float = CLIENT_TIMEOUT_S) -> redis.Redis:
        """A redis-py client on it: ``timeout_s`` to connect and per reply, no retries."""
        return redis.Redis(
            host=HOST,
            port=self.port,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=_no_retry(),
        )

    def flush(self) -> None:
        """FLUSHALL: every key of every database gone."""
        with self.client() as client:
            client.flushall()

    def info_memory(self) -> dict[str, Any]:
        """``INFO memory`` as redis-py parses it (``used_memory`` and the rest)."""
        with self.client() as client:
            return dict(client.info("memory"))

    def reset(self) -> None:
        """Up and empty again, whatever a test did to it: resumed if paused, restarted on its
        port if it died, then flushed."""
        if self.running and self._paused:
            self.resume()
        if not self.running:
            self.restart()
        self.flush()

    # What a variant (a cluster node, a sentinel) changes: its port, its command line.

    def _free_port(self) -> int:
        return free_port()

    def _leading_args(self) -> list[str]:
        """Arguments before the options (a config file must come first)."""
        return []

    def _options(self) -> list[str]:
        """Options of its kind, after the common ones."""
        return []

    def _command(self) -> list[str]:
        return [
            require_redis(),
            *self._leading_args(),
            "--bind", HOST,
            "--port", str(self.port),
            "--protected-mode", "yes",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
            *self._options(),
            *self.extra,
        ]  # fmt: skip

    def _start_once(self) -> RedisServer:
        """Launch on ``self.port`` and wait for PING; on failure nothing is left running."""
        if self.running:
            raise RedisPeerError(f"redis-server {self.port} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with (self.dir / "redis.out").open("ab") as out:
            self._proc = subprocess.Popen(self._command(), stdout=out, stderr=subprocess.STDOUT)
        self._paused = False
        try:
            _wait_until(self._answers, READY_TIMEOUT_S, f"redis-server {self.port} to answer", self)
        except BaseException:
            self.stop()
            raise
        return self

    def _answers(self) -> bool:
        """PING answered by this very process, not by whatever else holds the port."""
        try:
            with self.client(timeout_s=0.5) as client:
                return bool(client.ping()) and client.info("server")["process_id"] == self.pid
        except RedisError:
            return False

    def _lost_port(self) -> bool:
        """Whether the last run exited because its port was taken."""
        if not self.log_path.exists():
            return False
        with self.log_path.open("rb") as log:
            log.seek(self._log_offset)
            return b"Address already in use" in log.read()

    def _signal(self, signum: int) -> int:
        """Send ``signum`` to its PID, and return that PID."""
        if not self.running or self._proc is None:
            raise RedisPeerError(f"redis-server {self.port} is not running")
        os.kill(self._proc.pid, signum)
        return self._proc.pid


def _wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, server: RedisServer
) -> None:
    """Poll ``predicate`` until it holds; raise ``RedisPeerError`` (with ``server``'s log) if
    ``server`` exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if not server.running:
            problem = f"redis-server {server.port} exited while waiting for {what}"
        elif time.monotonic() > deadline:
            problem = f"timed out after {timeout_s:g} s waiting for {what}"
        else:
            time.sleep(_POLL_S)
            continue
        raise RedisPeerError(f"{problem}\n{server.log()}")


class _ClusterNode(RedisServer):
    """A cluster-enabled redis-server, whose cluster bus (``port + 10000``) must be free too."""

    def _free_port(self) -> int:
        for _ in range(50):
            port = free_port()
            if port + 10000 <= 65535 and _port_free(port + 10000):
                return port
        raise RedisPeerError("no free port whose port + 10000 is free too, in 50 tries")

    def _options(self) -> list[str]:
        return [
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.dir / f"nodes-{self.port}.conf"),
            "--cluster-node-timeout", "2000",
        ]  # fmt: skip


def _cluster_ok(node: RedisServer) -> bool:
    """Whether ``node`` sees every slot served (``cluster_state:ok``)."""
    try:
        with node.client(timeout_s=0.5) as client:
            return bool(client.cluster("info")["cluster_state"] == "ok")
    except RedisError:
        return False


class RedisCluster:
    """A Redis Cluster of ``size`` primaries on 127.0.0.1, no replicas, each node in its own
    directory under ``tmp_dir``; ``start()`` returns once every node says cluster_state:ok."""

    def __init__(self, tmp_dir: Path, *, size: int = 3) -> None:
        self.nodes: list[RedisServer] = [_ClusterNode(tmp_dir / f"node-{i}") for i in range(size)]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:PORT``, the port of the first node."""
        return f"redis+cluster://{HOST}:{self.nodes[0].port}"

    def start(self) -> RedisCluster:
        """Start the nodes, join them with ``redis-cli --cluster create``, wait for the state."""
        cli = require_peer("redis-cli")
        try:
            for node in self.nodes:
                node.start()  # one after the other: each holds its port before the next picks
            addresses = [f"{HOST}:{node.port}" for node in self.nodes]
            created = subprocess.run(
                [
                    cli,
                    "--cluster",
                    "create",
                    *addresses,
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                capture_output=True,
                text=True,
                timeout=CLUSTER_TIMEOUT_S,
                check=False,
            )
            if created.returncode != 0:
                raise RedisPeerError(f"redis-cli --cluster create failed:\n{created.stdout}")
            # The nodes say cluster_state:fail for a second or so after create returns.
            for node in self.nodes:
                _wait_until(
                    functools.partial(_cluster_ok, node),
                    CLUSTER_TIMEOUT_S,
                    "cluster_state:ok",
                    node,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every node by its PID."""
        for node in self.nodes:
            node.stop()

    def client(self, *, timeout_s: float = CLIENT_TIMEOUT_S) -> redis.RedisCluster:
        """A redis-py cluster client started from the first node (it finds the others)."""
        return redis.RedisCluster(
            host=HOST,
            port=self.nodes[0].port,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=_no_retry(),
        )

    def flush(self) -> None:
        """FLUSHALL on every primary."""
        for node in self.nodes:
            node.flush()


class _SentinelProcess(RedisServer):
    """``redis-server sentinel.conf --sentinel``, monitoring ``primary`` as ``service``.

    The file is written once, in its own directory: a sentinel rewrites it as it learns, and a
    restarted sentinel goes on from what it wrote.
    """

    def __init__(self, tmp_dir: Path, primary: RedisServer, service: str) -> None:
        super().__init__(tmp_dir)
        self.primary = primary
        self.service = service

    def _leading_args(self) -> list[str]:
        conf = self.dir / "sentinel.conf"
        if not conf.exists():
            conf.write_text(
                f"sentinel monitor {self.service} {HOST} {self.primary.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 2000\n"
                f"sentinel failover-timeout {self.service} 10000\n"
            )
        return [str(conf), "--sentinel"]


class RedisSentinel:
    """One primary redis-server and one sentinel watching it as ``service`` (quorum 1, down
    after 2 s), under ``tmp_dir``; ``start()`` returns once the sentinel reports the primary."""

    service = "memopt"

    def __init__(self, tmp_dir: Path) -> None:
        self.primary = RedisServer(tmp_dir / "primary")
        self.sentinel: RedisServer = _SentinelProcess(
            tmp_dir / "sentinel", self.primary, self.service
        )

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:SENTINEL_PORT/memopt/0``."""
        return f"redis+sentinel://{HOST}:{self.sentinel.port}/{self.service}/0"

    def start(self) -> RedisSentinel:
        """Start the primary, then the sentinel (which must know the primary's final port)."""
        try:
            self.primary.start()
            self.sentinel.start()
            _wait_until(
                self._reports_primary,
                READY_TIMEOUT_S,
                f"the sentinel to report {self.service}",
                self.sentinel,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the sentinel, then the primary, by their PIDs."""
        self.sentinel.stop()
        self.primary.stop()

    def _reports_primary(self) -> bool:
        """What a redis-py client would ask: the primary's address, the primary not down."""
        sentinel = Sentinel(
            [(HOST, self.sentinel.port)],
            sentinel_kwargs={
                "socket_timeout": 0.5,
                "socket_connect_timeout": 0.5,
                "retry": _no_retry(),
            },
        )
        try:
            address = sentinel.discover_master(self.service)
        except RedisError:  # MasterNotFoundError included
            return False
        finally:
            for client in sentinel.sentinels:
                client.close()
        return bool(address == (HOST, self.primary.port))
