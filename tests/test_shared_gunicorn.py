"""The shared cache under real gunicorn workers and a real redis-server, faults included.

Each test serves ``tests/fixtures/shared_app.py`` (its docstring says what it answers) with
gunicorn and three workers on 127.0.0.1, their cache shared through a redis-server of the
test's own (``own_redis``), and sends it real requests, each on a fresh connection:

- the workers share one cache: each page reaches the app once, whichever workers ask for it;
- a POST answered by one worker drops every worker's copy of the page, with the middleware
  built in the master (``--preload``): each worker listens for invalidations on its own;
- Redis killed mid-load, then restarted on its port: no request fails, and the workers share
  again soon after;
- Redis hung (SIGSTOP) mid-load: no request fails or waits long, and sharing resumes;
- Redis down from the start: every request is served all the same, and ``/health`` is 200.

Every server is stopped by its PID; every loop is bounded in requests and in time.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import pytest
from helpers.needs import require_module
from helpers.redis import RedisServer
from helpers.servers import HOST, Reply, Server, fetch, free_port, gunicorn_command, launch, stop

WORKERS = 3
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# What every test's middleware runs with: no monitor thread, the memory API open to the test,
# and memory measured against a limit nothing here reaches, so that the governor never drops
# the copies a test counts on, whatever else this machine runs.
BASE_SETTINGS = {
    "monitor_interval_s": 0,
    "api_allow_networks": "127.0.0.1/32",
    "pressure_source": "process",
    "process_limit_mb": 100_000,
}

# The load around a fault: this long before it, during it, and after the repair.
LOAD_LEAD_S = 1.0
FAULT_S = 2.0
LOAD_TAIL_S = 1.0
LOAD_CLIENTS = 3
LOAD_MAX_REQUESTS = 3000  # far more than the seconds above allow: the time ends each loop
LOAD_MAX_S = 20.0
# How long a request may take while Redis hangs: generous next to cache_redis_timeout_s (0.25 s
# per command) and to the breaker, which stops the asking after three failures.
SLOWEST_DURING_FAULT_S = 3.0
# How soon after a repair the workers must share again (the breaker retries after 2 s).
RECOVERY_S = 10.0
WAIT_S = 10.0  # any other bounded wait: workers answering, listening, hearing a message


@dataclass(frozen=True)
class Answer:
    """A reply's status and body, and the worker that sent it (its ``X-Worker``)."""

    status: int
    body: bytes
    worker: int

    @classmethod
    def of(cls, reply: Reply) -> Answer:
        return cls(reply.status, reply.body, int(reply.headers.get("X-Worker", "0")))


@dataclass
class Pool:
    """A gunicorn master and its workers serving the shared app; ``state`` is the app's
    directory (its ``calls.log``)."""

    server: Server
    state: Path

    @property
    def port(self) -> int:
        return self.server.port

    def workers(self) -> set[int]:
        """The PIDs of the workers gunicorn booted."""
        return {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.log())}

    def calls(self, path: str | None = None, prefix: str = "/") -> list[tuple[int, str, str]]:
        """The app's calls so far, ``(pid, method, path)``: those of ``path``, or under
        ``prefix``."""
        log = self.state / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        calls = [(int(pid), method, called) for pid, method, called in map(str.split, lines)]
        if path is not None:
            return [call for call in calls if call[2] == path]
        return [call for call in calls if call[2].startswith(prefix)]

    def get(self, path: str) -> Answer:
        return Answer.of(fetch(self.port, path))

    def get_all(self, paths: list[str], clients: int = WORKERS) -> list[Answer]:
        """Each of ``paths`` on its own connection, ``clients`` at a time, in order."""
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            return list(pool.map(self.get, paths))

    def worker_reports(self, ready: Callable[[dict[str, Any]], bool]) -> dict[int, dict[str, Any]]:
        """Each worker's last ``/worker`` report (its shared store's figures), asked three at
        a time until every worker has sent one that is ``ready``; fails after ``WAIT_S``."""
        reports: dict[int, dict[str, Any]] = {}
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for answer in self.get_all(["/worker"] * WORKERS):
                assert answer.status == 200, answer.body
                report = json.loads(answer.body)
                reports[report["pid"]] = report["shared"]
            if set(reports) >= self.workers() and all(map(ready, reports.values())):
                return reports
        pytest.fail(f"not every worker was ready within {WAIT_S:g} s: {reports}\n{self.tail()}")

    def log(self) -> str:
        return self.server.log()

    def tail(self) -> str:
        """The end of gunicorn's log, for a failure message."""
        return f"--- gunicorn log (tail) ---\n{self.log()[-4000:]}"


class StartPool(Protocol):
    def __call__(
        self, backend: str, *, preload: bool = False, **settings: object
    ) -> Pool: ...


@pytest.fixture
def start_pool(tmp_path: Path) -> Iterator[StartPool]:
    """``start_pool(backend, preload=False, **settings)``: gunicorn with ``WORKERS`` sync
    workers serving the shared app on 127.0.0.1, its cache on ``backend``; stopped by its PID
    when the test ends."""
    require_module("gunicorn")
    started: list[subprocess.Popen[bytes]] = []

    def start(backend: str, *, preload: bool = False, **settings: object) -> Pool:
        state = tmp_path / "app"
        state.mkdir()
        chosen = {**BASE_SETTINGS, "cache_backend": backend, **settings}
        env = {"SHARED_APP_DIR": str(state)}
        env.update({f"WSGI_MEMOPT_{name.upper()}": str(value) for name, value in chosen.items()})
        port = free_port()
        command = gunicorn_command(
            port,
            "sync",
            "--workers",
            str(WORKERS),
            *(("--preload",) if preload else ()),
            "--pythonpath",
            str(FIXTURES),
            *(f"--env={name}={value}" for name, value in env.items()),
            "--log-level",
            "info",
            "shared_app:application",
        )
        server = launch(
            command,
            port,
            tmp_path / "gunicorn.log",
            started,
            lambda log: log.count("Booting worker with pid") >= WORKERS,
            f"gunicorn's {WORKERS} workers",
        )
        return Pool(server, state)

    yield start
    for proc in started:
        stop(proc)


def body_of(path: str, version: int = 0) -> bytes:
    """What the app answers a GET of ``path`` with."""
    return f"{path} v{version}".encode()


# -- sharing


@pytest.mark.slow
def test_workers_share_one_cache(start_pool: StartPool, own_redis: RedisServer) -> None:
    pool = start_pool(own_redis.url)
    paths = [f"/page/{n}" for n in range(30)]
    # Each page asked four times side by side: concurrent misses of one page in different
    # workers, and hits of a page another worker filled.
    answers = pool.get_all([path for path in paths for _ in range(4)], clients=6)

    calls = pool.calls(prefix="/page/")
    answered_by = {path: {a.worker for a in answers[i * 4 : i * 4 + 4]} for i, path in enumerate(paths)}
    shared_pages = sum(len(workers) > 1 for workers in answered_by.values())
    report = (
        f"{len(answers)} requests, {len(calls)} app calls for {len(paths)} pages; workers "
        f"{sorted({a.worker for a in answers})}; {shared_pages} pages answered by 2+ workers"
    )
    print(report)

    assert [a.status for a in answers] == [200] * len(answers), report
    for index, answer in enumerate(answers):
        assert answer.body == body_of(paths[index // 4]), report  # byte for byte, each page
    assert {a.worker for a in answers} == pool.workers(), report
    assert shared_pages > 0, report
    # Each page reached the app once, whichever worker filled it (a little slack for a fill
    # whose lock expired while another worker waited on a loaded machine).
    assert len(calls) <= len(paths) * 1.1, report
    assert {path for _, _, path in calls} == set(paths), report


def test_a_post_on_one_worker_drops_every_workers_copy_after_a_preload_fork(
    start_pool: StartPool, own_redis: RedisServer
) -> None:
    # Built in the master; each worker's own copies would outlive the whole test, so that
    # only the invalidation message can make a worker answer the new version.
    pool = start_pool(own_redis.url, preload=True, cache_local_ttl_s=600)
    workers = pool.workers()
    before = answers_from_every_worker(pool, "/p")
    pool.worker_reports(lambda shared: shared["listening"])

    posted = Answer.of(fetch(pool.port, "/p", method="POST", body=b""))
    heard = pool.worker_reports(lambda shared: shared["invalidations_received"] >= 1)
    after = answers_from_every_worker(pool, "/p")

    calls = pool.calls("/p")
    report = (
        f"workers {sorted(workers)}; POST answered by {posted.worker}; before: {before}; "
        f"after: {after}; app calls for /p: {calls}; invalidations received: "
        f"{ {pid: shared['invalidations_received'] for pid, shared in heard.items()} }"
    )
    print(report)

    assert {answer.body for answer in before.values()} == {body_of("/p", 0)}, report
    assert posted.status == 200, report
    assert posted.body == body_of("/p", 1), report
    # Not one stale copy: every worker dropped its own when it heard of the POST.
    assert {answer.body for answer in after.values()} == {body_of("/p", 1)}, report
    # The page was fetched once before the POST and once after it, for all the workers.
    assert [method for _, method, _ in calls] == ["GET", "POST", "GET"], report


def answers_from_every_worker(pool: Pool, path: str) -> dict[int, Answer]:
    """A GET of ``path`` answered by each worker (the last, when one answered several): asked
    three at a time until each has answered, at most ``WAIT_S``."""
    answers: dict[int, Answer] = {}
    deadline = time.monotonic() + WAIT_S
    while set(answers) < pool.workers() and time.monotonic() < deadline:
        for answer in pool.get_all([path] * WORKERS):
            assert answer.status == 200, answer.body
            answers[answer.worker] = answer
    assert set(answers) == pool.workers(), f"not every worker answered {path}: {answers}"
    return answers


# -- faults


@dataclass(frozen=True)
class Sample:
    """One request of a load: when it started (seconds into the load), how long it took,
    and what went wrong, if anything."""

    started_s: float
    took_s: float
    path: str
    problem: str | None


@dataclass
class Load:
    """``LOAD_CLIENTS`` threads asking ``/load/N`` pages, each on a fresh connection, until
    stopped (at most ``LOAD_MAX_REQUESTS`` requests, ``LOAD_MAX_S`` seconds): each N three
    times in a row, so that one worker fills a page and others read it. A request that fails,
    or whose answer is not exactly the page's, is a problem."""

    port: int
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0
    _numbers: Iterator[int] = field(default_factory=itertools.count)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for _ in range(LOAD_CLIENTS):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(LOAD_MAX_S)  # each request is bounded by the socket's timeout

    def now(self) -> float:
        """Seconds since the load started."""
        return time.monotonic() - self.started

    def _client(self) -> None:
        while not self._stop.is_set() and self.now() < LOAD_MAX_S:
            number = next(self._numbers)  # one C call: atomic under the GIL
            if number >= LOAD_MAX_REQUESTS:
                return
            path = f"/load/{number // 3}"
            started = self.now()
            try:
                reply = fetch(self.port, path)
            except Exception as error:  # a refused or cut connection is a failed request
                problem: str | None = f"{type(error).__name__}: {error}"
            else:
                problem = None
                if reply.status != 200 or reply.body != body_of(path):
                    problem = f"{reply.status} {reply.body[:200]!r}"
            self.samples.append(Sample(started, self.now() - started, path, problem))

    def problems(self) -> list[Sample]:
        return [sample for sample in self.samples if sample.problem is not None]

    def between(self, start_s: float, end_s: float) -> list[Sample]:
        """The requests that started in that span of the load."""
        return [sample for sample in self.samples if start_s <= sample.started_s < end_s]


def seconds_until_shared(pool: Pool, since: float) -> float:
    """Seconds from ``since`` (monotonic) until the workers share through Redis again: a new
    page, asked by three workers side by side then three more times, reaches the app once and
    is answered by at least two workers. Asked anew, page after page, at most
    ``RECOVERY_S``."""
    deadline = time.monotonic() + RECOVERY_S
    for number in itertools.count():
        path = f"/probe/{number}"
        answers = pool.get_all([path] * WORKERS) + pool.get_all([path] * WORKERS)
        assert all(a.status == 200 and a.body == body_of(path) for a in answers), answers
        if len(pool.calls(path)) == 1 and len({a.worker for a in answers}) > 1:
            return time.monotonic() - since
        if time.monotonic() > deadline:
            pytest.fail(f"the workers did not share again within {RECOVERY_S:g} s\n{pool.tail()}")
        time.sleep(0.1)
    raise AssertionError("unreachable")


def load_report(name: str, load: Load, fault: tuple[float, float], pool: Pool) -> str:
    """The figures of a load around a fault (its start and end, in seconds into the load)."""
    during = load.between(*fault)
    slowest = max((sample.took_s for sample in load.samples), default=0.0)
    slowest_during = max((sample.took_s for sample in during), default=0.0)
    return (
        f"{name}: {len(load.samples)} requests in {load.now():.1f} s, "
        f"{len(load.problems())} failed, {len(during)} during the fault; slowest "
        f"{slowest:.3f} s ({slowest_during:.3f} s during the fault); app calls "
        f"{len(pool.calls(prefix='/load/'))} for {len({s.path for s in load.samples})} pages; "
        f"problems: {load.problems()[:5]}; slowest: "
        f"{sorted(load.samples, key=lambda s: -s.took_s)[:6]}; fault {fault}"
    )


@pytest.mark.slow
def test_redis_killed_and_restarted_mid_load_fails_no_request(
    start_pool: StartPool, own_redis: RedisServer
) -> None:
    pool = start_pool(own_redis.url)
    with Load(pool.port) as load:
        time.sleep(LOAD_LEAD_S)
        killed_s = load.now()
        own_redis.kill()
        time.sleep(FAULT_S)
        own_redis.restart()  # on the same port, empty
        restarted = time.monotonic()
        fault = (killed_s, load.now())
        time.sleep(LOAD_TAIL_S)
    recovered_s = seconds_until_shared(pool, restarted)
    shared = pool.worker_reports(lambda shared: True)

    report = load_report("Redis killed", load, fault, pool) + (
        f"; sharing again {recovered_s:.2f} s after the restart; per worker (errors by kind, "
        f"breaker opened, resubscribed): "
        f"{ {pid: (s['errors_by_kind'], s['breaker_opened'], s['resubscribed']) for pid, s in shared.items()} }"
    )
    print(report)

    assert load.between(*fault), report  # requests were served while Redis was away
    assert not load.problems(), report
    assert recovered_s <= RECOVERY_S, report


@pytest.mark.slow
def test_redis_hung_mid_load_fails_and_stalls_no_request(
    start_pool: StartPool, own_redis: RedisServer
) -> None:
    pool = start_pool(own_redis.url)
    with Load(pool.port) as load:
        time.sleep(LOAD_LEAD_S)
        paused_s = load.now()
        own_redis.pause()
        time.sleep(FAULT_S)
        own_redis.resume()
        resumed = time.monotonic()
        fault = (paused_s, load.now())
        time.sleep(LOAD_TAIL_S)
    recovered_s = seconds_until_shared(pool, resumed)
    shared = pool.worker_reports(lambda shared: True)

    report = load_report("Redis hung", load, fault, pool) + (
        f"; sharing again {recovered_s:.2f} s after the resume; per worker (errors by kind, "
        f"breaker opened): "
        f"{ {pid: (s['errors_by_kind'], s['breaker_opened']) for pid, s in shared.items()} }"
    )
    print(report)

    assert load.between(*fault), report
    assert not load.problems(), report
    assert max(sample.took_s for sample in load.samples) < SLOWEST_DURING_FAULT_S, report
    assert recovered_s <= RECOVERY_S, report


def test_redis_down_from_the_start_every_request_is_served(start_pool: StartPool) -> None:
    nowhere = f"redis://{HOST}:{free_port()}/0"  # a port nothing listens on
    pool = start_pool(nowhere)
    paths = [f"/page/{n}" for n in range(10)]
    answers = pool.get_all(paths * 3)
    health = fetch(pool.port, "/api/v1/memory/health")
    shared = pool.worker_reports(lambda shared: True)

    calls = pool.calls(prefix="/page/")
    report = (
        f"{len(answers)} requests, statuses {sorted({a.status for a in answers})}, "
        f"{len(calls)} app calls for {len(paths)} pages; /health {health.status}; per worker "
        f"(state, errors by kind): "
        f"{ {pid: (s['state'], s['errors_by_kind']) for pid, s in shared.items()} }"
    )
    print(report)

    assert [a.body for a in answers] == [body_of(path) for path in paths * 3], report
    assert health.status == 200, report
    # Each worker caches on its own: a page reaches the app once per worker at most.
    assert len(calls) <= len(paths) * WORKERS, report
    assert all(s["errors_by_kind"].get("connection") for s in shared.values()), report
