"""The shared cache under real gunicorn workers and a real redis-server, faults included.

Each test serves ``tests/fixtures/shared_app.py`` (its docstring says what it answers) with
gunicorn and three workers on 127.0.0.1, their cache shared through a redis-server of the
test's own (``own_redis``), and sends it real requests, each on a fresh connection:

- the workers share one cache: each page reaches the app once, whichever workers ask for it;
- a POST answered by one worker drops every worker's copy of the page, the middleware built
  (and Redis used) in the master under ``--preload``: each worker listens on its own;
- Redis killed mid-load, then restarted on its port: no request fails, and soon after the
  workers share again and listen again;
- Redis hung (SIGSTOP) mid-load: no request fails or waits long, and sharing resumes;
- Redis back from an outage but full (every write refused): a refusal is an answer, so each
  worker asks Redis again at once, and shares again once Redis has room;
- Redis down from the start: every request is served all the same, and ``/health`` is 200.

What a worker's shared store went through is read from the memory API (``cache.shared`` in
its stats), opened to the test by ``api_allow_networks``. Every server is stopped by its PID;
every loop is bounded in requests and in time.
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
STATS = "/api/v1/memory/stats"
HEALTH = "/api/v1/memory/health"

# The load around a fault: this long before it, and after the workers share again.
LOAD_LEAD_S = 1.0
LOAD_TAIL_S = 0.5
DOWN_S = 2.0  # how long Redis stays killed
LOAD_CLIENTS = 3
LOAD_MAX_REQUESTS = 5000  # more than the seconds allow: the time or the test ends each loop
LOAD_MAX_S = 20.0
# The longest any request may take, the fault included: generous next to three Redis
# timeouts (cache_redis_timeout_s, 0.25 s each), after which the breaker stops the asking.
SLOWEST_S = 3.0
# How long Redis stays hung: longer than SLOWEST_S, so that a request left waiting for Redis
# until it comes back fails the test.
HUNG_S = 3.5
# How soon after Redis is back the workers must share again (the breaker retries after 2 s).
RECOVERY_S = 10.0
RETRY_S = 0.5  # cache_redis_retry_s where a test waits for it
WAIT_S = 10.0  # any other bounded wait: every worker answering, listening, hearing a message


@dataclass(frozen=True)
class Answer:
    """A reply's status and body, and the worker that sent it (its ``X-Worker``)."""

    status: int
    body: bytes
    worker: int

    @classmethod
    def of(cls, reply: Reply) -> Answer:
        """The answer ``reply`` makes."""
        return cls(reply.status, reply.body, int(reply.headers.get("X-Worker", "0")))


@dataclass
class Pool:
    """A gunicorn master and its workers serving the shared app; ``state`` is the app's
    directory (its ``calls.log``)."""

    server: Server
    state: Path

    @property
    def port(self) -> int:
        """Where gunicorn listens."""
        return self.server.port

    def workers(self) -> set[int]:
        """The PIDs of the workers gunicorn booted."""
        return {int(pid) for pid in re.findall(r"Booting worker with pid: (\d+)", self.log())}

    def calls(self, path: str | None = None, prefix: str = "/") -> list[tuple[int, str, str]]:
        """The app's calls so far, ``(pid, method, path)``: those of ``path`` if given, else
        those under ``prefix``."""
        log = self.state / "calls.log"
        lines = log.read_text().splitlines() if log.exists() else []
        calls = [(int(pid), method, called) for pid, method, called in map(str.split, lines)]
        if path is not None:
            return [call for call in calls if call[2] == path]
        return [call for call in calls if call[2].startswith(prefix)]

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        """A GET of ``path`` on a fresh connection."""
        return Answer.of(fetch(self.port, path, headers=headers))

    def get_all(
        self, paths: list[str], clients: int = WORKERS, headers: dict[str, str] | None = None
    ) -> list[Answer]:
        """Each of ``paths`` on its own connection, ``clients`` at a time; in order."""
        with concurrent.futures.ThreadPoolExecutor(clients) as executor:
            return list(executor.map(lambda path: self.get(path, headers), paths))

    def from_every_worker(
        self,
        path: str,
        ready: Callable[[Answer], bool] = lambda answer: True,
        headers: dict[str, str] | None = None,
    ) -> dict[int, Answer]:
        """Each worker's last answer to ``path``, asked ``WORKERS`` at a time until every
        worker has sent one that is ``ready``; fails after ``WAIT_S``."""
        answers: dict[int, Answer] = {}
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            for answer in self.get_all([path] * WORKERS, headers=headers):
                assert answer.status == 200, f"{answer}\n{self.tail()}"
                answers[answer.worker] = answer
            if set(answers) >= self.workers() and all(map(ready, answers.values())):
                return answers
        pytest.fail(f"not every worker answered {path} as awaited: {answers}\n{self.tail()}")

    def shared_stats(
        self, ready: Callable[[dict[str, Any]], bool] = lambda shared: True
    ) -> dict[int, dict[str, Any]]:
        """Each worker's ``cache.shared`` figures from the memory API, once each worker's
        last are ``ready`` (at most ``WAIT_S``)."""
        answers = self.from_every_worker(STATS, lambda answer: ready(_shared(answer)))
        return {worker: _shared(answer) for worker, answer in answers.items()}

    def log(self) -> str:
        """Everything gunicorn and its workers have logged so far."""
        return self.server.log()

    def tail(self) -> str:
        """The end of gunicorn's log, for a failure message."""
        return f"--- gunicorn log (tail) ---\n{self.log()[-4000:]}"


def _shared(answer: Answer) -> dict[str, Any]:
    """``cache.shared`` of a stats answer."""
    shared: dict[str, Any] = json.loads(answer.body)["cache"]["shared"]
    return shared


class StartPool(Protocol):
    """What ``start_pool`` gives a test."""

    def __call__(
        self,
        backend: str,
        *,
        worker_class: str = "sync",
        preload: bool = False,
        env: dict[str, str] | None = None,
        **settings: object,
    ) -> Pool: ...


@pytest.fixture
def start_pool(tmp_path: Path) -> Iterator[StartPool]:
    """``start_pool(backend, worker_class="sync", preload=False, env=None, **settings)``:
    gunicorn with ``WORKERS`` workers serving the shared app on 127.0.0.1, its cache on
    ``backend``, the app's environment completed by ``env``; stopped by its PID when the test
    ends."""
    require_module("gunicorn")
    started: list[subprocess.Popen[bytes]] = []

    def start(
        backend: str,
        *,
        worker_class: str = "sync",
        preload: bool = False,
        env: dict[str, str] | None = None,
        **settings: object,
    ) -> Pool:
        state = tmp_path / "app"
        state.mkdir()
        chosen = {**BASE_SETTINGS, "cache_backend": backend, **settings}
        app_env = {f"WSGI_MEMOPT_{name.upper()}": str(value) for name, value in chosen.items()}
        app_env.update(SHARED_APP_DIR=str(state), **(env or {}))
        port = free_port()
        command = gunicorn_command(
            port,
            worker_class,
            "--workers",
            str(WORKERS),
            *(("--preload",) if preload else ()),
            "--pythonpath",
            str(FIXTURES),
            *(f"--env={name}={value}" for name, value in app_env.items()),
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
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_workers_share_one_cache(
    start_pool: StartPool, own_redis: RedisServer, worker_class: str
) -> None:
    pool = start_pool(own_redis.url, worker_class=worker_class)
    paths = [f"/page/{n}" for n in range(30)]
    # Each page asked four times side by side: concurrent misses of one page in different
    # workers, and hits of a page another worker filled.
    asked = [path for path in paths for _ in range(4)]
    answers = pool.get_all(asked, clients=6)

    calls = pool.calls(prefix="/page/")
    answered_by = {path: set[int]() for path in paths}
    for path, answer in zip(asked, answers, strict=True):
        answered_by[path].add(answer.worker)
    shared_pages = sum(len(workers) > 1 for workers in answered_by.values())
    report = (
        f"{worker_class}: {len(answers)} requests, {len(calls)} app calls for {len(paths)} "
        f"pages; workers {sorted({a.worker for a in answers})}; {shared_pages} pages answered "
        f"by 2+ workers"
    )
    print(report)

    assert [a.status for a in answers] == [200] * len(answers), report
    # Byte for byte each page's own body, whoever filled it.
    assert [a.body for a in answers] == [body_of(path) for path in asked], report
    assert {a.worker for a in answers} == pool.workers(), report
    assert shared_pages > 0, report
    # Each page reached the app once, whichever worker filled it (a little slack for a
    # waiting worker that gave up on a loaded machine and asked the app itself).
    assert {path for _, _, path in calls} == set(paths), report
    assert len(calls) <= len(paths) * 1.1, report


def test_a_post_on_one_worker_drops_every_workers_copy_after_a_preload_fork(
    start_pool: StartPool, own_redis: RedisServer
) -> None:
    # Built in the master, which asks Redis before it forks; each worker's own copies would
    # outlive the test, so that only the invalidation can make a worker answer the new version.
    pool = start_pool(
        own_redis.url, preload=True, env={"SHARED_APP_WARM": "/warm"}, cache_local_ttl_s=600
    )
    before = pool.from_every_worker("/p")
    pool.shared_stats(lambda shared: shared["listening"])

    posted = Answer.of(fetch(pool.port, "/p", method="POST", body=b""))
    heard = pool.shared_stats(lambda shared: shared["invalidations_received"] >= 1)
    after = pool.from_every_worker("/p")

    calls = pool.calls("/p")
    received = {pid: shared["invalidations_received"] for pid, shared in heard.items()}
    report = (
        f"workers {sorted(pool.workers())}; POST answered by {posted.worker}; "
        f"before: { {pid: a.body for pid, a in before.items()} }; "
        f"after: { {pid: a.body for pid, a in after.items()} }; app calls for /p: {calls}; "
        f"invalidations received: {received}"
    )
    print(report)

    assert len(pool.calls("/warm")) == 1, report  # the master's, before the fork
    assert {answer.body for answer in before.values()} == {body_of("/p", 0)}, report
    assert (posted.status, posted.body) == (200, body_of("/p", 1)), report
    # Not one stale copy: each worker dropped its own when it heard of the POST.
    assert {answer.body for answer in after.values()} == {body_of("/p", 1)}, report
    # Fetched once before the POST and once after it, for every worker.
    assert [method for _, method, _ in calls] == ["GET", "POST", "GET"], report


# -- faults


@dataclass(frozen=True)
class Sample:
    """One request of a load: when it started (seconds into the load), how long it took,
    and what was wrong with its answer, if anything."""

    started_s: float
    took_s: float
    path: str
    problem: str | None


@dataclass
class Load:
    """``LOAD_CLIENTS`` threads asking ``/load/N`` pages, each on a fresh connection, until
    stopped (at most ``LOAD_MAX_REQUESTS`` requests and ``LOAD_MAX_S`` seconds): each N three
    times in a row, so that one worker fills a page and others read it. A request that fails,
    or whose answer is not exactly its page, is a problem."""

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
        """The requests that failed or were answered wrongly."""
        return [sample for sample in self.samples if sample.problem is not None]

    def between(self, start_s: float, end_s: float) -> list[Sample]:
        """The requests that started in that span of the load."""
        return [sample for sample in self.samples if start_s <= sample.started_s < end_s]


def seconds_until_shared(pool: Pool, since: float) -> float:
    """Seconds from ``since`` (monotonic) until the workers share through Redis again: a new
    page, asked by three workers side by side and three times more, reaches the app once and
    is answered by two workers or more. A new page each try, at most ``RECOVERY_S``."""
    deadline = time.monotonic() + RECOVERY_S
    for number in itertools.count():
        path = f"/probe/{number}"
        answers = pool.get_all([path] * WORKERS) + pool.get_all([path] * WORKERS)
        assert all(a.status == 200 and a.body == body_of(path) for a in answers), answers
        if len(pool.calls(path)) == 1 and len({a.worker for a in answers}) > 1:
            return time.monotonic() - since
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    pytest.fail(f"the workers did not share again within {RECOVERY_S:g} s\n{pool.tail()}")


@dataclass
class Fault:
    """What a load saw around a fault: when the fault began and ended (seconds into the
    load), and how long after it ended the workers shared again."""

    load: Load
    began_s: float
    ended_s: float
    recovered_s: float

    def report(self, name: str, pool: Pool) -> str:
        """The figures, for the test's output and its failure messages."""
        samples, during = self.load.samples, self.load.between(self.began_s, self.ended_s)
        slowest = max(samples, key=lambda sample: sample.took_s)
        return (
            f"{name}: {len(samples)} requests in {self.load.now():.1f} s, "
            f"{len(self.load.problems())} failed, {len(during)} during the fault "
            f"({self.began_s:.2f}-{self.ended_s:.2f} s); slowest {slowest.took_s:.3f} s "
            f"(at {slowest.started_s:.2f} s), during the fault "
            f"{max((s.took_s for s in during), default=0.0):.3f} s; app calls "
            f"{len(pool.calls(prefix='/load/'))} for {len({s.path for s in samples})} pages; "
            f"sharing again {self.recovered_s:.2f} s after the repair; "
            f"problems: {self.load.problems()[:5]}"
        )


def around_a_fault(
    pool: Pool, cause: Callable[[], None], lasting_s: float, repair: Callable[[], None]
) -> Fault:
    """A load on ``pool``: ``cause()`` a fault after ``LOAD_LEAD_S``, ``repair()`` it
    ``lasting_s`` later, and go on until the workers share again, and ``LOAD_TAIL_S`` more."""
    pool.from_every_worker("/warm")  # each worker has loaded the app and asked Redis once
    with Load(pool.port) as load:
        time.sleep(LOAD_LEAD_S)
        began_s = load.now()
        cause()
        time.sleep(lasting_s)
        repair()
        repaired, ended_s = time.monotonic(), load.now()
        recovered_s = seconds_until_shared(pool, repaired)
        time.sleep(LOAD_TAIL_S)
    return Fault(load, began_s, ended_s, recovered_s)


@pytest.mark.slow
def test_redis_killed_and_restarted_mid_load_fails_no_request(
    start_pool: StartPool, own_redis: RedisServer
) -> None:
    pool = start_pool(own_redis.url)
    # Restarted on the same port, empty.
    fault = around_a_fault(pool, own_redis.kill, DOWN_S, own_redis.restart)
    # Every worker subscribes again on its own (and drops its copies, which may have missed
    # an invalidation while it was away).
    shared = pool.shared_stats(lambda shared: shared["listening"] and shared["resubscribed"])

    figures = {
        pid: (s["errors_by_kind"], s["breaker_opened"], s["resubscribed"])
        for pid, s in shared.items()
    }
    report = fault.report("Redis killed", pool) + (
        f"; per worker (errors by kind, breaker opened, resubscribed): {figures}"
    )
    print(report)

    assert fault.load.between(fault.began_s, fault.ended_s), report  # served while away
    assert not fault.load.problems(), report
    assert max(sample.took_s for sample in fault.load.samples) < SLOWEST_S, report
    # Each worker met the outage, and its breaker stopped the asking.
    assert all(s["errors_by_kind"].get("connection") for s in shared.values()), report
    assert all(s["breaker_opened"] for s in shared.values()), report


@pytest.mark.slow
def test_redis_hung_mid_load_fails_and_stalls_no_request(
    start_pool: StartPool, own_redis: RedisServer
) -> None:
    pool = start_pool(own_redis.url)
    fault = around_a_fault(pool, own_redis.pause, HUNG_S, own_redis.resume)
    shared = pool.shared_stats()

    figures = {pid: (s["errors_by_kind"], s["breaker_opened"]) for pid, s in shared.items()}
    report = fault.report("Redis hung", pool) + (
        f"; per worker (errors by kind, breaker opened): {figures}"
    )
    print(report)

    assert fault.load.between(fault.began_s, fault.ended_s), report
    assert not fault.load.problems(), report
    assert max(sample.took_s for sample in fault.load.samples) < SLOWEST_S, report
    assert all(s["errors_by_kind"].get("timeout") for s in shared.values()), report
    assert all(s["breaker_opened"] for s in shared.values()), report


@pytest.mark.slow
def test_workers_share_again_when_redis_comes_back_full_then_has_room(
    start_pool: StartPool, own_redis: RedisServer
) -> None:
    # After an outage each worker probes Redis with its next command. Here Redis comes back
    # full (maxmemory, noeviction: it refuses every write) and the probe is a write: refused,
    # but answered, so Redis is reachable and the worker must go on asking it.
    pool = start_pool(own_redis.url, cache_redis_retry_s=RETRY_S)
    pool.from_every_worker("/warm")
    own_redis.kill()
    # A miss asks Redis three times (lookup, fill lock, store): each worker's breaker opens.
    pool.from_every_worker("/outage")
    pool.shared_stats(lambda shared: shared["breaker_opened"] >= 1)
    own_redis.restart()
    with own_redis.client() as client:
        client.config_set("maxmemory", 1)  # no request in flight: nothing probes meanwhile
    time.sleep(RETRY_S)  # every breaker half-open
    # A refresh the client forces asks Redis nothing before it stores: the probe is the write.
    pool.from_every_worker("/refresh", headers={"Cache-Control": "no-cache"})
    full = pool.shared_stats()
    with own_redis.client() as client:
        client.config_set("maxmemory", 0)
    states = {pid: (s["state"], s["errors_by_kind"]) for pid, s in full.items()}
    print(f"Redis back full, per worker (state, errors by kind): {states}")

    assert all(s["errors_by_kind"].get("out-of-memory") for s in full.values()), states
    # Refused, yet answered: each breaker closed on its probe, none waits for another.
    assert {s["state"] for s in full.values()} == {"closed"}, states
    recovered_s = seconds_until_shared(pool, time.monotonic())
    print(f"sharing again {recovered_s:.2f} s after Redis had room")


def test_redis_down_from_the_start_every_request_is_served(start_pool: StartPool) -> None:
    nowhere = f"redis://{HOST}:{free_port()}/0"  # a port nothing listens on
    pool = start_pool(nowhere)
    paths = [f"/page/{n}" for n in range(10)]
    answers = pool.get_all(paths * 3)
    health = pool.get(HEALTH)
    shared = pool.shared_stats()

    calls = pool.calls(prefix="/page/")
    figures = {pid: (s["state"], s["errors_by_kind"]) for pid, s in shared.items()}
    report = (
        f"{len(answers)} requests, statuses {sorted({a.status for a in answers})}, "
        f"{len(calls)} app calls for {len(paths)} pages; /health {health.status} "
        f"{json.loads(health.body).get('shared_cache')}; per worker (state, errors by kind): "
        f"{figures}"
    )
    print(report)

    assert [a.status for a in answers] == [200] * len(answers), report
    assert [a.body for a in answers] == [body_of(path) for path in paths * 3], report
    assert health.status == 200, report
    # Each worker caches on its own: a page reaches the app once per worker at most.
    assert len(calls) <= len(paths) * WORKERS, report
    assert all(s["errors_by_kind"].get("connection") for s in shared.values()), report
