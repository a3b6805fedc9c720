"""A real WSGI server pool in a real memory cgroup, loaded by ``wrk`` until something gives.

The harness behind ``benchmarks/oom.py`` and ``tests/test_oom_pool.py``. One call of
:func:`run_pool`:

1. creates a child memory cgroup of this process's own cgroup with a hard limit
   (:class:`MemoryCgroup`; cgroup v1 when a v1 ``memory`` line exists, else v2);
2. writes a leaking WSGI app into ``workdir`` (:func:`write_leak_app`): every request keeps
   ``leak_kb`` KiB resident for the life of the worker, optionally behind
   ``wsgi_memopt.MemoryOptimizer``;
3. starts gunicorn or uWSGI on 127.0.0.1 (a free port) so that the master enters the cgroup
   before it execs, and every worker it forks is born inside it;
4. waits until every worker booted and the app is loaded, then runs ``wrk --latency``;
5. reads the cgroup's OOM-kill counter and peak, stops the server by PID, and removes the
   cgroup (killing anything left in it).

The outcome is a :class:`PoolResult`: completed and failed requests (as ``wrk`` counts them),
OOM kills (as the kernel counts them), graceful recycles (as the server's log shows them),
the middleware's own recycle lines, p99 latency and peak memory.

Needs root (or a delegated cgroup), a memory controller, and ``wrk`` on PATH. Every wait is
bounded; everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from _servers import HOST, child_env, control_socket_args, free_port, stop_process

__all__ = [
    "CgroupUnavailable",
    "MemoryCgroup",
    "PoolResult",
    "ToolMissing",
    "WrkOutput",
    "find_uwsgi",
    "parse_wrk",
    "run_pool",
    "write_leak_app",
]

MB = 1 << 20
BOOT_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0  # the pool is idle by then; whatever lingers dies with the cgroup
CGROUP_EMPTY_TIMEOUT_S = 10.0
RMDIR_ATTEMPTS = 10
RMDIR_PAUSE_S = 0.1
WRK_GRACE_S = 60.0
LOG_TAIL_CHARS = 3000
# A route that waits on its database this long: two sync workers under wrk -c4 then serve
# a few hundred requests a second, the pace of the scenario the OOM benchmark reproduces.
ROUTE_WORK_MS = 5.0
OUR_RECYCLE_LINE = "[MEMORY] recycling this"
APP_LOADED_LINE = "leak app loaded in pid"
PROC_CGROUP = Path("/proc/self/cgroup")
PROC_MOUNTINFO = Path("/proc/self/mountinfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(Exception):
    """A memory cgroup with a limit cannot be created here; the message says why."""


class ToolMissing(RuntimeError):
    """A program the harness drives (``wrk``, ``uwsgi``) is not installed."""


# -- the memory cgroup


@dataclass(frozen=True)
class _Hierarchy:
    """Where the memory controller of this process lives."""

    version: int  # 1 or 2
    mount: Path  # the mount point of that hierarchy
    own: Path  # this process's cgroup directory in it (the mount when the path is not there)


def _mounts(fstype: str) -> list[tuple[Path, str, set[str]]]:
    """(mount point, root inside the hierarchy, super options) of every ``fstype`` mount."""
    found: list[tuple[Path, str, set[str]]] = []
    with contextlib.suppress(OSError):
        for line in PROC_MOUNTINFO.read_text().splitlines():
            before, _, after = line.partition(" - ")
            fields, tail = before.split(), after.split()
            if len(fields) >= 5 and len(tail) >= 3 and tail[0] == fstype:
                found.append((Path(fields[4]), fields[3], set(tail[2].split(","))))
    return found


def _inside(mount: Path, root: str, path: str) -> Path:
    """The directory of cgroup ``path`` under a mount of the hierarchy's ``root``, or the mount
    itself when that directory does not exist (a container that mounts only its own cgroup,
    while /proc/self/cgroup still shows the host's path)."""
    relative = path
    if root not in ("", "/") and (path == root or path.startswith(root.rstrip("/") + "/")):
        relative = path[len(root.rstrip("/")) :]
    candidate = mount / relative.lstrip("/")
    return candidate if candidate.is_dir() else mount


def _locate_hierarchy() -> _Hierarchy:
    """The v1 memory hierarchy when /proc/self/cgroup has a ``memory`` line, else v2."""
    try:
        lines = PROC_CGROUP.read_text().splitlines()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read {PROC_CGROUP}: {exc}") from exc
    v1_path = v2_path = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy_id, controllers, path = parts
        if "memory" in controllers.split(","):
            v1_path = path
        elif hierarchy_id == "0" and controllers == "":
            v2_path = path
    if v1_path is not None:
        for mount, root, options in _mounts("cgroup"):
            if "memory" in options:
                return _Hierarchy(1, mount, _inside(mount, root, v1_path))
        fallback = CGROUP_ROOT / "memory"
        if (fallback / "memory.limit_in_bytes").exists():
            return _Hierarchy(1, fallback, _inside(fallback, "/", v1_path))
        raise CgroupUnavailable("/proc/self/cgroup names a v1 memory cgroup, but none is mounted")
    if v2_path is not None:
        mounts = _mounts("cgroup2") or [
            (path, "/", set())
            for path in (CGROUP_ROOT, CGROUP_ROOT / "unified")
            if (path / "cgroup.controllers").exists()
        ]
        for mount, root, _ in mounts:
            own = _inside(mount, root, v2_path)
            try:
                delegated = (own / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if "memory" in delegated:
                return _Hierarchy(2, mount, own)
        raise CgroupUnavailable(
            "no memory controller: cgroup v2 is mounted, but 'memory' is not in this "
            "process's cgroup.controllers (not delegated by its parent)"
        )
    raise CgroupUnavailable(f"no memory cgroup: {PROC_CGROUP} has no memory line nor a v2 line")


def _read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def _keyed(path: Path, key: str) -> int | None:
    """The value of ``key N`` in a flat-keyed file (memory.oom_control, memory.events)."""
    for line in path.read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    return None


class MemoryCgroup:
    """A child memory cgroup of this process's own, with a hard limit; a context manager.

    ``MemoryCgroup("pool", 300)`` creates ``wsgi-memopt-pool-<pid>-<random>`` on entry and
    sets its limit to 300 MiB (swap included where the kernel accounts it, so swap cannot
    dodge the limit). On exit every process still in it is SIGKILLed and it is removed.
    Anything written to :attr:`procs_file` (a PID) is moved into it.

    :raises CgroupUnavailable: on entry, when the group cannot be created or limited (not
        root, no memory controller, a read-only mount, no OOM-kill counter), with the reason.
    """

    def __init__(self, purpose: str, limit_mb: int) -> None:
        if limit_mb <= 0:
            raise ValueError(f"limit_mb must be positive, not {limit_mb!r}")
        self.purpose = re.sub(r"[^A-Za-z0-9_.-]", "_", purpose) or "pool"
        self.limit_mb = limit_mb
        self.name = f"wsgi-memopt-{self.purpose}-{os.getpid()}-{secrets.token_hex(4)}"
        self.version = 0
        self._directory: Path | None = None

    # -- where it is

    @property
    def directory(self) -> Path:
        """The cgroup's directory (only inside the ``with`` block)."""
        if self._directory is None:
            raise RuntimeError("the cgroup exists only inside its `with` block")
        return self._directory

    @property
    def procs_file(self) -> Path:
        """``cgroup.procs``: write a PID here to move that process into the group."""
        return self.directory / "cgroup.procs"

    # -- entry and exit

    def __enter__(self) -> MemoryCgroup:
        hierarchy = _locate_hierarchy()
        self.version = hierarchy.version
        if hierarchy.version == 2:
            self._enable_memory_for_children(hierarchy.own)
        directory = hierarchy.own / self.name
        try:
            directory.mkdir()
        except OSError as exc:
            raise CgroupUnavailable(self._why(exc, f"cannot create {directory}")) from exc
        self._directory = directory
        try:
            self._set_limit()
            self.oom_kills()  # the counter must exist, or no test could see a kill
        except CgroupUnavailable:
            self._remove()
            raise
        except OSError as exc:
            self._remove()
            raise CgroupUnavailable(self._why(exc, f"cannot limit {directory}")) from exc
        except ValueError as exc:  # a counter file that does not parse
            self._remove()
            raise CgroupUnavailable(f"cannot read {directory}: {exc}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        left = self.kill_all()
        removed = self._remove()
        if (left or not removed) and exc_type is None:
            raise RuntimeError(
                f"cgroup {self.name} left behind: pids still in it {left}, removed={removed}"
            )

    @staticmethod
    def _why(exc: OSError, what: str) -> str:
        """``what``, and the likely reason for ``exc``."""
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{what}: permission denied (not root, and the cgroup is not delegated)"
        if exc.errno == errno.EROFS:
            return f"{what}: the cgroup filesystem is mounted read-only"
        return f"{what}: {exc}"

    @staticmethod
    def _enable_memory_for_children(parent: Path) -> None:
        """v2: children get a memory controller only when the parent's subtree_control has it."""
        control = parent / "cgroup.subtree_control"
        if "memory" in control.read_text().split():
            return
        try:
            control.write_text("+memory")
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                # The "no internal processes" rule: a non-root v2 cgroup that holds
                # processes itself cannot hand controllers down to children.
                raise CgroupUnavailable(
                    f"cannot enable +memory in {control}: the cgroup holds processes itself "
                    "(cgroup v2 forbids controllers for children then); run from a leaf "
                    "cgroup whose parent delegates memory"
                ) from exc
            raise CgroupUnavailable(
                MemoryCgroup._why(exc, f"cannot enable +memory in {control}")
            ) from exc

    def _set_limit(self) -> None:
        limit = str(self.limit_mb * MB)
        directory = self.directory
        if self.version == 1:
            # memory first: memsw may never be below it, and both start unlimited.
            (directory / "memory.limit_in_bytes").write_text(limit)
            memsw = directory / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                memsw.write_text(limit)
        else:
            (directory / "memory.max").write_text(limit)
            swap = directory / "memory.swap.max"
            if swap.exists():
                swap.write_text("0")

    def pids(self) -> list[int]:
        """The PIDs (thread-group ids) in the group now."""
        try:
            return [int(pid) for pid in self.procs_file.read_text().split()]
        except FileNotFoundError:
            return []

    def kill_all(self, timeout_s: float = CGROUP_EMPTY_TIMEOUT_S) -> list[int]:
        """SIGKILL every process in the group until it is empty or ``timeout_s`` passed;
        returns the PIDs still there (none, normally)."""
        if self._directory is None:
            return []
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.pids()
            if not pids or time.monotonic() > deadline:
                return pids
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def _remove(self) -> bool:
        """rmdir the group, retrying briefly (an exiting process may still pin it)."""
        directory = self._directory
        if directory is None:
            return True
        for attempt in range(RMDIR_ATTEMPTS):
            try:
                directory.rmdir()
            except FileNotFoundError:
                break
            except OSError:
                if attempt == RMDIR_ATTEMPTS - 1:
                    return False
                time.sleep(RMDIR_PAUSE_S)
            else:
                break
        self._directory = None
        return True

    # -- what it measured

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer has killed in this group so far."""
        if self.version == 1:
            path, key = self.directory / "memory.oom_control", "oom_kill"
        else:
            path, key = self.directory / "memory.events", "oom_kill"
        value = _keyed(path, key)
        if value is None:
            raise CgroupUnavailable(f"{path} has no '{key}' line: this kernel does not count")
        return value

    def usage_mb(self) -> float:
        """The memory charged to the group now, page cache included, in MiB."""
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        return _read_int(self.directory / name) / MB

    def peak_mb(self) -> float | None:
        """The most ever charged to the group, in MiB; None where the kernel has no peak
        (cgroup v2 before ``memory.peak``)."""
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        path = self.directory / name
        return _read_int(path) / MB if path.exists() else None


# -- the app


APP_TEMPLATE = '''\
"""A WSGI app that leaks {leak_kb} KiB per request, written by benchmarks/leak_pool.py."""

import logging
import os
import sys
import time

logging.basicConfig(
    stream=sys.stderr,
    level=logging.INFO,
    format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s",
)

LEAK_BYTES = {leak_bytes}
WORK_S = {work_s!r}  # what a real route spends on a query or a template
PAGE = 4096
# One written byte per page makes every page of the block resident, whatever the allocator
# hands out (calloc'ed zero pages would not count against the cgroup until written).
TOUCH = b"x" * len(range(0, LEAK_BYTES, PAGE))
leaked = []


def raw_app(environ, start_response):
    if WORK_S:
        time.sleep(WORK_S)
    if LEAK_BYTES:
        block = bytearray(LEAK_BYTES)
        block[::PAGE] = TOUCH
        leaked.append(block)
    body = str(os.getpid()).encode()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),  # never a cache hit: every request runs the leak
        ],
    )
    return [body]


{application}
logging.getLogger("leak_app").info("{loaded_line} %d", os.getpid())
'''


def write_leak_app(
    directory: Path,
    leak_kb: int,
    settings: Mapping[str, Any] | None = None,
    work_ms: float = 0.0,
) -> Path:
    """Write ``app.py`` into ``directory`` and return its path.

    Its ``application`` answers every request with a 200 whose body is the worker's PID, and
    keeps ``bytearray(leak_kb * 1024)`` (every page written) in a module-level list: a leak
    of ``leak_kb`` KiB per request, none when 0. Each request first waits ``work_ms``, as a
    route does on its database. With ``settings`` (a dict of keywords,
    ``{}`` for the product defaults) the app is ``wsgi_memopt.MemoryOptimizer(raw_app,
    **settings)``; with None it is the raw app. Logging goes to stderr at INFO, so the
    ``wsgi_memopt`` logger's lines land in the server's log.
    """
    if leak_kb < 0:
        raise ValueError(f"leak_kb must be >= 0, not {leak_kb!r}")
    if settings is None:
        application = "application = raw_app\n"
    else:
        application = textwrap.dedent(
            f"""\
            from wsgi_memopt import MemoryOptimizer

            application = MemoryOptimizer(raw_app, **{dict(settings)!r})
            """
        )
    source = APP_TEMPLATE.format(
        leak_kb=leak_kb,
        leak_bytes=leak_kb * 1024,
        work_s=work_ms / 1000,
        application=application,
        loaded_line=APP_LOADED_LINE,
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "app.py"
    path.write_text(source)
    return path


# -- wrk


@dataclass(frozen=True)
class WrkOutput:
    """What ``wrk --latency`` reported."""

    requests: int
    seconds: float
    socket_errors: dict[str, int]  # connect, read, write, timeout
    non_2xx_3xx: int
    p99_ms: float | None
    requests_per_s: float

    @property
    def failed(self) -> int:
        return sum(self.socket_errors.values()) + self.non_2xx_3xx


_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def _ms(value: str, unit: str) -> float:
    return float(value) * _TIME_UNITS_MS[unit]


def parse_wrk(output: str) -> WrkOutput:
    """Parse ``wrk --latency`` output; raises ValueError when it has no request count."""
    done = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h),", output, re.M)
    if done is None:
        raise ValueError(f"no request count in wrk's output:\n{output}")
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    socket_line = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_line is not None:
        errors = dict(zip(errors, map(int, socket_line.groups()), strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    p99 = re.search(r"^\s*99(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.M)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    return WrkOutput(
        requests=int(done.group(1)),
        seconds=_ms(done.group(2), done.group(3)) / 1000,
        socket_errors=errors,
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        p99_ms=_ms(*p99.groups()) if p99 else None,
        requests_per_s=float(rate.group(1)) if rate else 0.0,
    )


def _wrk_binary() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise ToolMissing("wrk is not installed (needed to load the pool); install wrk")
    return path


# -- the servers


def find_uwsgi() -> str:
    """The ``uwsgi`` pip built beside this Python, else one on PATH."""
    beside = Path(sys.executable).with_name("uwsgi")
    if beside.exists():
        return str(beside)
    found = shutil.which("uwsgi")
    if found is None:
        raise ToolMissing("uwsgi is not installed: pip install 'uwsgi>=2.0'")
    return found


def _server_command(
    server: str,
    worker_class: str,
    workers: int,
    threads: int,
    port: int,
    workdir: Path,
    extra_args: Sequence[str],
) -> list[str]:
    if worker_class not in ("sync", "gthread"):
        raise ValueError(f"worker_class must be 'sync' or 'gthread', not {worker_class!r}")
    threaded = worker_class == "gthread"
    if server == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"{HOST}:{port}",
            "--workers",
            str(workers),
            "--worker-class",
            worker_class,
            *(("--threads", str(threads)) if threaded else ()),
            "--error-logfile",
            "-",
            "--log-level",
            "info",
            "--chdir",
            str(workdir),
            *control_socket_args(),
            *extra_args,
            "app:application",
        ]
    if server == "uwsgi":
        return [
            find_uwsgi(),
            "--master",
            "--http-socket",
            f"{HOST}:{port}",
            "--processes",
            str(workers),
            *(("--threads", str(threads)) if threaded else ()),
            "--chdir",
            str(workdir),
            "--module",
            "app:application",
            "--need-app",
            "--die-on-term",  # SIGTERM stops it (uWSGI 2.0 would reload instead)
            # No per-request log line: gunicorn has no access log here either, and thousands
            # of lines a second would cost CPU and page cache charged to the cgroup.
            "--disable-logging",
            # --http-socket closes the connection after every response, but answers HTTP/1.1
            # without saying so: wrk would reuse the connection and count a read error per
            # request. Saying it makes wrk reconnect, as it does for gunicorn's sync worker.
            "--add-header",
            "Connection: close",
            *extra_args,
        ]
    raise ValueError(f"server must be 'gunicorn' or 'uwsgi', not {server!r}")


def _booted(server: str, log: str) -> int:
    """Workers the log says were started (initial ones and respawns alike)."""
    if server == "gunicorn":
        return log.count("Booting worker with pid")
    # uWSGI: "spawned uWSGI worker N (pid: ...)" per initial worker, "(and the only)" for one.
    return len(set(re.findall(r"spawned uWSGI worker (\d+)", log)))


def _respawns(server: str, log: str, workers: int) -> int:
    """Workers started beyond the initial ones, whatever ended their predecessors."""
    if server == "gunicorn":
        return max(0, log.count("Booting worker with pid") - workers)
    return log.count("Respawned uWSGI worker")


def _abnormal_deaths(server: str, log: str) -> int:
    """Workers the log shows dying other than gracefully: killed by a signal (an OOM kill is
    a SIGKILL), or exiting with an error code."""
    if server == "gunicorn":
        # A worker's graceful exit after SIGTERM is an exit code 0, not this line; SIGTERM
        # itself shows up here only at shutdown.
        signalled = re.findall(r"Worker \(pid:\d+\) was sent (\w+)!", log)
        failed = re.findall(r"Worker \(pid:\d+\) exited with code", log)
        return sum(1 for name in signalled if name != "SIGTERM") + len(failed)
    return log.count("DAMN ! worker")


def _expected_loads(server: str, workers: int, extra_args: Sequence[str]) -> int:
    """How many "app loaded" lines mean every worker can serve: the master loads it once and
    forks (uWSGI's default, gunicorn's --preload), or each worker loads it."""
    if server == "gunicorn":
        return 1 if "--preload" in extra_args else workers
    return workers if "--lazy-apps" in extra_args or "--lazy" in extra_args else 1


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _wait_ready(
    proc: subprocess.Popen[bytes],
    log_path: Path,
    server: str,
    workers: int,
    loads: int,
) -> None:
    deadline = time.monotonic() + BOOT_TIMEOUT_S
    while True:
        log = _read(log_path)
        if _booted(server, log) >= workers and log.count(APP_LOADED_LINE) >= loads:
            return
        if proc.poll() is not None:
            raise RuntimeError(
                f"{server} exited ({proc.returncode}) while booting:\n{log[-LOG_TAIL_CHARS:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{server}: {workers} workers not booted after {BOOT_TIMEOUT_S:g} s:\n"
                f"{log[-LOG_TAIL_CHARS:]}"
            )
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the master by PID, SIGKILL after a bound."""
    stop_process(proc, STOP_TIMEOUT_S)


# -- the run


class _UsageSampler:
    """Samples the cgroup's usage every ``interval_s`` in a thread, to tell how fast the leak
    fills the group: (seconds since start, MiB) pairs."""

    def __init__(self, group: MemoryCgroup, interval_s: float = 0.1) -> None:
        self._group = group
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cgroup-usage", daemon=True)
        self.samples: list[tuple[float, float]] = []
        self._started = 0.0

    def __enter__(self) -> _UsageSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.samples.append((time.monotonic() - self._started, self._group.usage_mb()))
            self._stop.wait(self._interval_s)

    def fill_rate(self, baseline_mb: float, limit_mb: float) -> float | None:
        """MiB/s from the start to the first sample half-way from ``baseline_mb`` to the
        limit: the leak's pace before anything (recycle, OOM kill) gave memory back."""
        target = baseline_mb + (limit_mb - baseline_mb) / 2
        for elapsed, usage in self.samples:
            if usage >= target and elapsed > 0:
                return (usage - baseline_mb) / elapsed
        return None


@dataclass
class PoolResult:
    """One pool under one load: what wrk, the kernel and the server's log say happened."""

    server: str
    worker_class: str
    leak_kb: int
    variant: str
    duration_s: float
    requests: int  # completed, as wrk counts them (any status)
    failed: int  # wrk's socket errors (connect+read+write+timeout) + non-2xx/3xx responses
    oom_kills: int  # the cgroup's counter
    recycles: int  # graceful: workers started beyond the initial ones, minus abnormal deaths
    our_recycles: int  # log lines of the middleware's own "[MEMORY] recycling this ..."
    p99_ms: float | None
    peak_mb: float | None
    log_tail: str
    workers: int = 0
    threads: int = 0
    limit_mb: int = 0
    extra_args: tuple[str, ...] = ()
    baseline_mb: float | None = None  # cgroup usage once every worker was ready, before load
    requests_per_s: float = 0.0
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0
    respawns: int = 0  # workers started beyond the initial ones, for whatever reason
    abnormal_deaths: int = 0  # workers the log shows killed by a signal or failing
    master_survived: bool = True
    fill_mb_s: float | None = None  # cgroup growth under load until half-way to the limit
    wrk_output: str = ""

    HEADER: ClassVar[str] = (
        f"{'server':<8} {'worker':<7} {'leak':>6} {'variant':<26} {'OOM':>4} {'failed':>6} "
        f"{'recyc':>5} {'ours':>5} {'p99 ms':>8} {'peak MB':>8} {'base MB':>8} "
        f"{'requests':>9} {'req/s':>7}"
    )

    def as_row(self) -> str:
        """One line under :attr:`HEADER`."""
        p99 = f"{self.p99_ms:.1f}" if self.p99_ms is not None else "-"
        peak = f"{self.peak_mb:.0f}" if self.peak_mb is not None else "-"
        base = f"{self.baseline_mb:.0f}" if self.baseline_mb is not None else "-"
        return (
            f"{self.server:<8} {self.worker_class:<7} {f'{self.leak_kb}KB':>6} "
            f"{self.variant[:26]:<26} {self.oom_kills:>4} {self.failed:>6} {self.recycles:>5} "
            f"{self.our_recycles:>5} {p99:>8} {peak:>8} {base:>8} {self.requests:>9} "
            f"{self.requests_per_s:>7.0f}"
        )

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, without the log and wrk's raw output."""
        return {
            name: value
            for name, value in self.__dict__.items()
            if name not in ("log_tail", "wrk_output")
        }


def run_pool(
    *,
    server: str = "gunicorn",
    worker_class: str = "sync",
    workers: int = 2,
    threads: int = 2,
    leak_kb: int,
    settings: Mapping[str, Any] | None,
    extra_args: Sequence[str] = (),
    limit_mb: int = 300,
    duration_s: float = 90,
    connections: int = 4,
    wrk_threads: int = 2,
    work_ms: float = ROUTE_WORK_MS,
    workdir: Path,
    variant: str = "",
) -> PoolResult:
    """Serve the leaking app from ``server`` inside a fresh ``limit_mb`` memory cgroup, load
    it with ``wrk`` for ``duration_s`` seconds over ``connections`` connections, and report.

    ``settings`` as in :func:`write_leak_app` (None: unwrapped; ``{}``: the middleware's
    defaults). ``extra_args`` go to the server's command line (e.g. ``--max-requests``).

    :raises CgroupUnavailable: when no memory cgroup can be made here.
    :raises ToolMissing: when wrk (or uwsgi, for ``server="uwsgi"``) is not installed.
    :raises RuntimeError: when the server does not boot within 30 s.
    """
    wrk = _wrk_binary()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = _server_command(server, worker_class, workers, threads, port, workdir, extra_args)
    write_leak_app(workdir, leak_kb, settings, work_ms)
    log_path = workdir / f"{server}-{worker_class}-{port}.log"
    wrk_command = [
        wrk,
        f"-t{wrk_threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",  # wrk takes whole seconds only
        "--latency",
        "--timeout",
        "10s",
        f"http://{HOST}:{port}/",
    ]
    with MemoryCgroup(f"{server}-{worker_class}", limit_mb) as group:
        # The shell moves itself into the group, then execs the server: the master and every
        # worker it forks are charged to the group from their first page.
        wrapped = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group.procs_file), *command]
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                wrapped,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=workdir,
                start_new_session=True,
            )
        try:
            _wait_ready(
                proc, log_path, server, workers, _expected_loads(server, workers, extra_args)
            )
            if proc.pid not in group.pids():
                raise RuntimeError(f"{server} (pid {proc.pid}) is not in {group.directory}")
            baseline_mb = group.usage_mb()
            with _UsageSampler(group) as sampler:
                done = subprocess.run(
                    wrk_command,
                    capture_output=True,
                    text=True,
                    timeout=duration_s + WRK_GRACE_S,
                    check=False,
                )
            # A worker recycled at the very end is reaped and logged within a moment.
            time.sleep(0.5)
            oom_kills = group.oom_kills()
            peak_mb = group.peak_mb()
            master_survived = proc.poll() is None
            log = _read(log_path)
        finally:
            _stop(proc)
    final_log = _read(log_path)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr}\n{done.stdout}")
    measured = parse_wrk(done.stdout)
    respawns = _respawns(server, log, workers)
    abnormal = _abnormal_deaths(server, log)
    # Every OOM kill of a worker is respawned while the master lives; the log's count may
    # lag the kernel's by one reap, so the larger of the two is taken.
    deaths = max(abnormal, oom_kills if master_survived else 0)
    return PoolResult(
        server=server,
        worker_class=worker_class,
        leak_kb=leak_kb,
        variant=variant,
        duration_s=duration_s,
        requests=measured.requests,
        failed=measured.failed,
        oom_kills=oom_kills,
        recycles=max(0, respawns - deaths),
        our_recycles=log.count(OUR_RECYCLE_LINE),
        p99_ms=measured.p99_ms,
        peak_mb=peak_mb,
        log_tail=final_log[-LOG_TAIL_CHARS:],
        workers=workers,
        threads=threads if worker_class == "gthread" else 1,
        limit_mb=limit_mb,
        extra_args=tuple(extra_args),
        baseline_mb=baseline_mb,
        requests_per_s=measured.requests_per_s,
        socket_errors=measured.socket_errors,
        non_2xx_3xx=measured.non_2xx_3xx,
        respawns=respawns,
        abnormal_deaths=abnormal,
        master_survived=master_survived,
        fill_mb_s=sampler.fill_rate(baseline_mb, limit_mb),
        wrk_output=done.stdout,
    )
