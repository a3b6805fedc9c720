"""Memory pressure: how full is the memory that binds this worker.

A sampler reads one source, chosen once by ``pressure_source``, and returns a
:class:`MemorySample` whose ``memory_percent`` the governor compares with its thresholds::

    sampler = make_sampler("auto", None, bands=Bands(max_memory_percent=65, critical_percent=85))
    sample = sampler.sample()
    sample.memory_percent, sample.status        # (41.73, "excellent")

The rules, each one checkable:

- **host** (``psutil.virtual_memory()``): used = total - available, limit = total RAM.
- **container**: this process's own cgroup, read from ``/proc/self/cgroup`` (not the root of
  the mount). cgroup v2 (line ``0::/path``): used = ``memory.current`` - ``inactive_file`` of
  ``memory.stat``; limit = the lowest ``memory.max`` or ``memory.high`` of the cgroup *and of
  every ancestor* up to the mount, since a parent's limit binds its children. cgroup v1 (line
  ``N:memory:/path``): used = ``memory.usage_in_bytes`` - ``total_inactive_file``; limit = the
  lowest ``memory.limit_in_bytes`` of the cgroup and its ancestors, and its
  ``hierarchical_memory_limit``. ``max``, v1's "no limit" sentinel (any value >= 2**62, such as
  9223372036854771712) and any limit at or above the host's RAM are not limits.
- On a hybrid host (v1 and v2 lines both present) the v1 ``memory`` line wins: that is where
  the memory controller lives. A v2 hierarchy mounted at ``<cgroup_root>/unified`` is found.
- When the directory named in ``/proc/self/cgroup`` does not exist (a container that mounts
  only its own cgroup, while the file still shows the host's path), the root of the mount is
  this process's cgroup.
- **auto**: the container when :func:`container_limit` finds a limit, else the host.
  ``container`` with no limit found measures the host, with a warning.
- **process**: used = this process's RSS, limit = ``process_limit_mb``; the percentage may pass
  100.
- Sizes are in MiB (2**20 bytes), like every ``*_mb`` setting.
- The status band of a sample follows the governor's thresholds (see :class:`Bands`):
  ``warning`` is where optimizing starts, ``critical`` where the emergency does.
- Cheap enough to run every ``sample_interval_s``: the cgroup's files are found once, when the
  sampler is made (a limit changed later is seen by the next sampler made), and a sample reads
  two small files or ``/proc/meminfo``, plus this process's RSS. No USS/PSS here.
- A container sample never raises for a file that has become unreadable or malformed: it
  returns the host's figures, with ``source="host"`` so the sample stays honest, and logs a
  warning once (and once again when the files read back).
"""

from __future__ import annotations

import _tracemalloc
import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import psutil

from ..settings import MB

__all__ = [
    "SOURCES",
    "Bands",
    "ContainerMemory",
    "ContainerSampler",
    "HostSampler",
    "MemorySample",
    "ProcessSampler",
    "Sampler",
    "container_limit",
    "make_sampler",
    "traced_bytes",
]

log = logging.getLogger("wsgi_memopt")

SOURCES = ("auto", "host", "container", "process")
# cgroup v1 says "no limit" with PAGE_COUNTER_MAX pages in bytes: 9223372036854771712 with 4 KiB
# pages, a little different with other page sizes. Nothing real comes near 2**62.
_V1_NO_LIMIT = 1 << 62


# "good" is the last stretch before optimizing starts: this many points below it.
_GOOD_MARGIN_PERCENT = 10.0


@dataclass(frozen=True, slots=True)
class Bands:
    """The status bands, derived from the governor's two action thresholds.

    - **critical**: above ``critical_percent``, where the governor runs its emergency cleanup;
    - **warning**: above ``max_memory_percent`` up to ``critical_percent``: it optimizes;
    - **good**: the last 10 points up to ``max_memory_percent`` (included): nothing to do yet;
    - **excellent**: below that.

    "Above" as in the settings: a sample exactly at a threshold is still in the band below.
    ``restart_percent`` adds no band: above it is critical, and ``health`` says
    ``restart-needed`` once the governor decided a recycle is needed.
    """

    max_memory_percent: float = 65.0
    critical_percent: float = 85.0

    def lower_bounds(self) -> dict[str, float]:
        """Where each band above ``excellent`` starts, JSON-ready (the dashboard's lines)."""
        return {
            "good": self.max_memory_percent - _GOOD_MARGIN_PERCENT,
            "warning": self.max_memory_percent,
            "critical": self.critical_percent,
        }

    def status(self, percent: float) -> str:
        """The band of ``percent``: excellent, good, warning or critical."""
        if percent > self.critical_percent:
            return "critical"
        if percent > self.max_memory_percent:
            return "warning"
        if percent >= self.max_memory_percent - _GOOD_MARGIN_PERCENT:
            return "good"
        return "excellent"


_DEFAULT_BANDS = Bands()


@dataclass(frozen=True, slots=True)
class MemorySample:
    """One measurement of the source that binds this process; sizes in MiB."""

    memory_percent: float  # used / limit * 100; the process source may pass 100
    rss_mb: float  # this process's resident set
    used_mb: float  # host: total - available; container: working set; process: RSS
    available_mb: float  # limit - used, never negative
    limit_mb: float  # what counts as 100%
    source: str  # "host", "container" or "process": what was actually measured
    status: str  # the band of memory_percent (see Bands)
    taken_at: float  # time.time() when taken

    def as_dict(self) -> dict[str, float | str]:
        """JSON-ready: MiB rounded to 0.1, the percentage to 0.01."""
        return {
            "memory_percent": round(self.memory_percent, 2),
            "rss_mb": round(self.rss_mb, 1),
            "used_mb": round(self.used_mb, 1),
            "available_mb": round(self.available_mb, 1),
            "limit_mb": round(self.limit_mb, 1),
            "source": self.source,
            "status": self.status,
            "taken_at": self.taken_at,
        }


def _make(source: str, used: float, limit: float, rss: float, bands: Bands) -> MemorySample:
    """A sample from byte counts."""
    percent = used / limit * 100
    return MemorySample(
        memory_percent=percent,
        rss_mb=rss / MB,
        used_mb=used / MB,
        available_mb=max(limit - used, 0) / MB,
        limit_mb=limit / MB,
        source=source,
        status=bands.status(percent),
        taken_at=time.time(),
    )


def _host_sample(rss: int, bands: Bands) -> MemorySample:
    memory = psutil.virtual_memory()
    return _make("host", memory.total - memory.available, memory.total, rss, bands)


@runtime_checkable
class Sampler(Protocol):
    """Anything that measures memory pressure; ``source`` names what it measures."""

    source: str

    def sample(self) -> MemorySample: ...


class _RSSReader:
    """Holds the ``psutil.Process`` of this process, made again after a fork, and the bands
    its samples are given.

    ``psutil.Process()`` remembers the pid it was made for, so a sampler made in a preloading
    master would otherwise report the master's RSS in every worker.
    """

    __slots__ = ("_pid", "_process", "bands")

    def __init__(self, bands: Bands) -> None:
        self.bands = bands
        self._pid = os.getpid()
        self._process = psutil.Process(self._pid)

    def _rss(self) -> int:
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._process = psutil.Process(self._pid)
        rss: int = self._process.memory_info().rss
        return rss


class HostSampler(_RSSReader):
    """The host's RAM: used = total - available (``psutil.virtual_memory``).

    :param bands: the status bands of its samples; by default the default thresholds'.
    """

    __slots__ = ()
    source = "host"

    def __init__(self, *, bands: Bands = _DEFAULT_BANDS) -> None:
        super().__init__(bands)

    def sample(self) -> MemorySample:
        return _host_sample(self._rss(), self.bands)


class ProcessSampler(_RSSReader):
    """This process's RSS over ``limit_mb``, the RSS that counts as 100%.

    :param limit_mb: a positive, finite budget in MiB; the percentage passes 100 above it.
    :param bands: the status bands of its samples; by default the default thresholds'.
    """

    __slots__ = ("limit_mb",)
    source = "process"

    def __init__(self, limit_mb: float, *, bands: Bands = _DEFAULT_BANDS) -> None:
        if not (math.isfinite(limit_mb) and limit_mb > 0):
            raise ValueError(f"process_limit_mb must be a positive number of MiB, not {limit_mb!r}")
        super().__init__(bands)
        self.limit_mb = float(limit_mb)

    def sample(self) -> MemorySample:
        rss = self._rss()
        return _make("process", rss, self.limit_mb * MB, rss, self.bands)


@dataclass(frozen=True, slots=True)
class ContainerMemory:
    """Where this process's cgroup keeps its memory figures, and the limit that binds it."""

    version: int  # 1 or 2
    directory: str  # this process's cgroup directory
    limit_bytes: int  # the lowest limit found in the directory and its ancestors
    limit_path: str  # the file that limit was read from
    usage_path: str  # memory.current (v2) or memory.usage_in_bytes (v1)
    stat_path: str  # memory.stat
    inactive_key: str  # "inactive_file" (v2) or "total_inactive_file" (v1)

    @property
    def limit_mb(self) -> float:
        return self.limit_bytes / MB


class ContainerSampler(_RSSReader):
    """A cgroup's working set (usage - inactive file cache) over its limit.

    Usually made by :func:`make_sampler` from what :func:`container_limit` found.

    :param limit_bytes: what counts as 100%; read once, not at every sample.
    :param usage_path: ``memory.current`` (v2) or ``memory.usage_in_bytes`` (v1).
    :param stat_path: ``memory.stat`` of the same cgroup.
    :param inactive_key: the ``memory.stat`` line subtracted from the usage: ``inactive_file``
        (v2) or ``total_inactive_file`` (v1). That page cache is reclaimed before the OOM killer
        comes, so it is not pressure.
    :param bands: the status bands of its samples; by default the default thresholds'.

    When a file cannot be read or parsed, :meth:`sample` returns the host's figures with
    ``source="host"`` instead of raising.
    """

    __slots__ = ("_failing", "inactive_key", "limit_bytes", "stat_path", "usage_path")
    source = "container"

    def __init__(
        self,
        limit_bytes: int,
        usage_path: str,
        stat_path: str,
        *,
        inactive_key: str = "inactive_file",
        bands: Bands = _DEFAULT_BANDS,
    ) -> None:
        if limit_bytes <= 0:
            raise ValueError(f"a container limit must be positive, not {limit_bytes!r}")
        super().__init__(bands)
        self.limit_bytes = limit_bytes
        self.usage_path = usage_path
        self.stat_path = stat_path
        self.inactive_key = inactive_key
        self._failing = False

    @classmethod
    def from_memory(
        cls, memory: ContainerMemory, bands: Bands = _DEFAULT_BANDS
    ) -> ContainerSampler:
        """The sampler of what :func:`container_limit` found."""
        return cls(
            memory.limit_bytes,
            memory.usage_path,
            memory.stat_path,
            inactive_key=memory.inactive_key,
            bands=bands,
        )

    def sample(self) -> MemorySample:
        try:
            used = _working_set(self.usage_path, self.stat_path, self.inactive_key)
        except (OSError, ValueError) as error:
            if not self._failing:
                self._failing = True
                log.warning("[MEMORY] cgroup figures unreadable (%s); measuring the host", error)
            return _host_sample(self._rss(), self.bands)
        if self._failing:
            self._failing = False
            log.info("[MEMORY] cgroup figures readable again; measuring the container")
        return _make("container", used, self.limit_bytes, self._rss(), self.bands)


def traced_bytes() -> int | None:
    """What tracemalloc traces now, in bytes; None when it is not tracing.

    Asked of tracemalloc's C half: tracing may be on from the start (``-X tracemalloc``)
    without ``tracemalloc.py`` imported, and importing it (with pickle) for this question
    would weigh on every process that never traces.
    """
    if not _tracemalloc.is_tracing():
        return None
    return _tracemalloc.get_traced_memory()[0]


# -- reading cgroup files


def _read_int(path: str) -> int:
    """A file holding one non-negative integer (ValueError for anything else, "max" included)."""
    with open(path, "rb") as file:
        value = int(file.read())
    if value < 0:
        raise ValueError(f"{path}: negative value {value}")
    return value


def _stat_value(path: str, key: str) -> int:
    """The value of the ``key value`` line of a ``memory.stat`` file."""
    wanted = key.encode()
    with open(path, "rb") as file:
        for line in file.read().splitlines():
            name, _, value = line.partition(b" ")
            if name == wanted:
                return int(value)
    raise ValueError(f"{path}: no {key} line")


def _working_set(usage_path: str, stat_path: str, inactive_key: str) -> int:
    return max(_read_int(usage_path) - _stat_value(stat_path, inactive_key), 0)


def _limit_value(text: str, host_total: int) -> int | None:
    """A limit file's value, or None when it sets no limit that can bind before the host's RAM.

    Raises ValueError when the text is neither a number nor "max".
    """
    text = text.strip()
    if text == "max":
        return None
    value = int(text)
    if value <= 0 or value >= _V1_NO_LIMIT or value >= host_total:
        return None
    return value


def _memory_cgroups(text: str, cgroup_root: str) -> list[tuple[int, str, str]]:
    """``(version, mount, directory)`` of this process's memory cgroup, v1 first.

    ``text`` is the content of ``/proc/self/cgroup``: ``hierarchy:controllers:path`` lines.
    """
    v1: tuple[str, str] | None = None
    v2: str | None = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            v2 = path
        elif "memory" in controllers.split(","):
            v1 = (controllers, path)
    found = []
    if v1 is not None:
        controllers, path = v1
        for name in ("memory", controllers):
            mount = os.path.join(cgroup_root, name)
            if os.path.isdir(mount):
                found.append((1, mount, _resolve(mount, path)))
                break
    if v2 is not None:
        unified = os.path.join(cgroup_root, "unified")
        hybrid = os.path.isfile(os.path.join(unified, "cgroup.controllers"))
        mount = unified if hybrid else cgroup_root
        found.append((2, mount, _resolve(mount, v2)))
    return found


def _resolve(mount: str, path: str) -> str:
    """The directory of cgroup ``path`` under ``mount``; the mount itself if it is not there."""
    mount = os.path.normpath(mount)
    directory = os.path.normpath(os.path.join(mount, path.strip().lstrip("/")))
    inside = os.path.commonpath([mount, directory]) == mount
    return directory if inside and os.path.isdir(directory) else mount


def _lineage(mount: str, directory: str) -> list[str]:
    """``directory`` and its ancestors up to ``mount``, nearest first."""
    chain = [directory]
    while directory != mount and os.path.dirname(directory) != directory:
        directory = os.path.dirname(directory)
        chain.append(directory)
    return chain


def _lowest_limit(
    version: int, mount: str, directory: str, host_total: int
) -> tuple[int, str] | None:
    names = ("memory.max", "memory.high") if version == 2 else ("memory.limit_in_bytes",)
    lowest: tuple[int, str] | None = None

    def consider(text: str, path: str) -> None:
        nonlocal lowest
        try:
            value = _limit_value(text, host_total)
        except ValueError:
            log.debug("[MEMORY] ignoring a malformed cgroup limit in %s: %r", path, text)
            return
        if value is not None and (lowest is None or value < lowest[0]):
            lowest = (value, path)

    for folder in _lineage(mount, directory):
        for name in names:
            path = os.path.join(folder, name)
            try:
                with open(path) as file:
                    text = file.read()
            except OSError:
                continue
            consider(text, path)
    if version == 1:
        # The kernel's own minimum over the ancestors, including those this namespace hides.
        stat_path = os.path.join(directory, "memory.stat")
        with contextlib.suppress(OSError, ValueError):
            consider(str(_stat_value(stat_path, "hierarchical_memory_limit")), stat_path)
    return lowest


def container_limit(
    proc_root: str = "/proc", cgroup_root: str = "/sys/fs/cgroup"
) -> ContainerMemory | None:
    """This process's memory cgroup and the lowest limit that binds it, or None.

    None when there is no cgroup memory controller, no limit (``max``, the v1 sentinel, or a
    limit at or above the host's RAM everywhere up to the mount), or when the cgroup's usage
    cannot be read, so there is nothing a container sampler could measure.
    """
    try:
        with open(os.path.join(proc_root, "self", "cgroup")) as file:
            text = file.read()
    except OSError:
        return None
    host_total = psutil.virtual_memory().total
    for version, mount, directory in _memory_cgroups(text, cgroup_root):
        lowest = _lowest_limit(version, mount, directory, host_total)
        if lowest is None:
            continue
        memory = ContainerMemory(
            version=version,
            directory=directory,
            limit_bytes=lowest[0],
            limit_path=lowest[1],
            usage_path=os.path.join(
                directory, "memory.current" if version == 2 else "memory.usage_in_bytes"
            ),
            stat_path=os.path.join(directory, "memory.stat"),
            inactive_key="inactive_file" if version == 2 else "total_inactive_file",
        )
        try:
            _working_set(memory.usage_path, memory.stat_path, memory.inactive_key)
        except (OSError, ValueError) as error:
            log.warning("[MEMORY] cgroup limit found but usage unreadable (%s)", error)
            continue
        return memory
    return None


def make_sampler(
    source: str,
    process_limit_mb: float | None,
    *,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
    bands: Bands = _DEFAULT_BANDS,
) -> Sampler:
    """The sampler for ``pressure_source`` (one of :data:`SOURCES`), its samples banded by
    ``bands``.

    ``process`` needs ``process_limit_mb`` (ValueError without it). ``container`` with no
    container limit found measures the host and says so in a warning and in ``source``.
    """
    if source == "host":
        return HostSampler(bands=bands)
    if source == "process":
        if process_limit_mb is None:
            raise ValueError("pressure_source=process needs process_limit_mb")
        return ProcessSampler(process_limit_mb, bands=bands)
    if source not in SOURCES:
        raise ValueError(f"pressure_source must be one of {', '.join(SOURCES)}, not {source!r}")
    memory = container_limit(proc_root, cgroup_root)
    if memory is not None:
        log.info(
            "[MEMORY] measuring cgroup v%d %s: limit %.1f MiB from %s",
            memory.version,
            memory.directory,
            memory.limit_mb,
            memory.limit_path,
        )
        return ContainerSampler.from_memory(memory, bands)
    if source == "container":
        log.warning("[MEMORY] pressure_source=container but no cgroup limit found; measuring host")
    return HostSampler(bands=bands)
