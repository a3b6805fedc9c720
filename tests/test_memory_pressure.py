"""Samplers and status bands, against this machine's real /proc and cgroup files and against
cgroup v1 and v2 trees built in ``tmp_path`` the way the kernel lays them out."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from wsgi_memopt.memory import pressure
from wsgi_memopt.memory.pressure import (
    Bands,
    ContainerSampler,
    HostSampler,
    MemorySample,
    ProcessSampler,
    Sampler,
    container_limit,
    make_sampler,
)

MiB = 1 << 20
V1_NO_LIMIT = "9223372036854771712\n"  # what a v1 cgroup without a limit reports on x86-64
APP = "/system.slice/app.service"
HOST_TOTAL = psutil.virtual_memory().total


def assert_consistent(sample: MemorySample) -> None:
    """What every sample must satisfy, whatever the machine."""
    assert sample.limit_mb > 0
    assert sample.used_mb >= 0
    assert sample.available_mb == pytest.approx(max(sample.limit_mb - sample.used_mb, 0), abs=0.1)
    assert sample.memory_percent == pytest.approx(sample.used_mb / sample.limit_mb * 100)
    assert sample.status == Bands().status(sample.memory_percent)
    own_rss = psutil.Process().memory_info().rss / MiB
    assert sample.rss_mb == pytest.approx(own_rss, abs=4)
    json.dumps(sample.as_dict())


# -- status bands and the sample itself


@pytest.mark.parametrize(
    ("percent", "status"),
    [
        pytest.param(0.0, "excellent", id="0-excellent"),
        pytest.param(54.99, "excellent", id="54.99-excellent"),
        pytest.param(55.0, "good", id="55-good"),
        pytest.param(65.0, "good", id="65-good"),
        pytest.param(65.01, "warning", id="65.01-warning"),
        pytest.param(85.0, "warning", id="85-warning"),
        pytest.param(85.01, "critical", id="85.01-critical"),
        pytest.param(250.0, "critical", id="250-critical"),
    ],
)
def test_default_bands_follow_the_default_thresholds(percent: float, status: str) -> None:
    # max_memory_percent=65 (optimize above it), critical_percent=85 (emergency above it).
    assert Bands().status(percent) == status


@pytest.mark.parametrize(
    ("percent", "status"),
    [
        pytest.param(29.99, "excellent", id="29.99-excellent"),
        pytest.param(30.0, "good", id="30-good"),
        pytest.param(40.0, "good", id="40-good"),
        pytest.param(40.01, "warning", id="40.01-warning"),
        pytest.param(60.0, "warning", id="60-warning"),
        pytest.param(60.01, "critical", id="60.01-critical"),
    ],
)
def test_bands_move_with_the_configured_thresholds(percent: float, status: str) -> None:
    assert Bands(max_memory_percent=40, critical_percent=60).status(percent) == status


def test_a_sampler_bands_its_samples_with_the_bands_it_was_given() -> None:
    rss_mib = psutil.Process().memory_info().rss / MiB
    # A limit that puts this process near 50%: critical under these bands, excellent by default.
    strict = ProcessSampler(rss_mib * 2, bands=Bands(max_memory_percent=20, critical_percent=30))
    assert strict.sample().status == "critical"
    assert ProcessSampler(rss_mib * 2).sample().status == "excellent"
    assert make_sampler("process", rss_mib * 2, bands=Bands(10, 20)).sample().status == "critical"


def test_as_dict_is_json_ready_and_rounded() -> None:
    sample = MemorySample(
        memory_percent=41.23456,
        rss_mb=123.456,
        used_mb=1000.04,
        available_mb=1047.96,
        limit_mb=2048.0,
        source="container",
        status="excellent",
        taken_at=1700000000.25,
    )
    assert json.loads(json.dumps(sample.as_dict())) == {
        "memory_percent": 41.23,
        "rss_mb": 123.5,
        "used_mb": 1000.0,
        "available_mb": 1048.0,
        "limit_mb": 2048.0,
        "source": "container",
        "status": "excellent",
        "taken_at": 1700000000.25,
    }


# -- this machine, whatever it has


def test_host_sampler_on_this_machine() -> None:
    sample = HostSampler().sample()
    assert sample.source == "host"
    assert 0 < sample.memory_percent <= 100
    assert sample.limit_mb == pytest.approx(HOST_TOTAL / MiB)
    assert_consistent(sample)


@pytest.mark.parametrize("source", ["auto", "container"])
def test_auto_and_container_on_this_machine(source: str) -> None:
    memory = container_limit()
    sampler = make_sampler(source, None)
    sample = sampler.sample()
    if memory is None:
        assert sampler.source == sample.source == "host"
    else:
        assert sampler.source == "container"
        assert sample.limit_mb == pytest.approx(memory.limit_mb)
        assert 0 <= sample.memory_percent <= 100
    assert_consistent(sample)


def test_this_machines_memory_cgroup_resolves_to_a_real_directory() -> None:
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        pytest.skip("no /proc/self/cgroup here")
    for version, mount, directory in pressure._memory_cgroups(text, "/sys/fs/cgroup"):
        assert version in (1, 2)
        assert os.path.isdir(directory)
        assert directory == mount or directory.startswith(mount + os.sep)


def test_process_sampler_is_rss_over_the_budget() -> None:
    sampler = make_sampler("process", 100)
    sample = sampler.sample()
    assert sample.source == "process"
    assert sample.limit_mb == 100
    assert sample.used_mb == sample.rss_mb
    assert sample.memory_percent == pytest.approx(sample.rss_mb / 100 * 100)
    assert_consistent(sample)


def test_process_sampler_may_pass_100_percent() -> None:
    sample = ProcessSampler(1).sample()
    assert sample.memory_percent > 100
    assert sample.available_mb == 0
    assert sample.status == "critical"


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param(None, id="none"),
        pytest.param(0, id="zero"),
        pytest.param(-5, id="negative"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
    ],
)
def test_process_source_needs_a_positive_budget(limit: float | None) -> None:
    with pytest.raises(ValueError, match="process_limit_mb"):
        make_sampler("process", limit)


def test_unknown_source_is_refused() -> None:
    with pytest.raises(ValueError, match="pressure_source"):
        make_sampler("cluster", None)


@pytest.mark.parametrize(
    "sampler",
    [
        pytest.param(HostSampler(), id="host"),
        pytest.param(ProcessSampler(512), id="process"),
        pytest.param(ContainerSampler(MiB, "/nonexistent", "/nonexistent"), id="container"),
    ],
)
def test_samplers_are_samplers(sampler: Sampler) -> None:
    assert isinstance(sampler, Sampler)
    assert sampler.sample().source in ("host", "process")  # the container one has no files


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_rss_is_the_forked_workers_own() -> None:
    sampler = ProcessSampler(1024)
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker: grows well past the master, then reports
        try:
            ballast = b"x" * (64 * MiB)
            measured = sampler.sample().rss_mb
            actual = psutil.Process().memory_info().rss / MiB
            os.write(writer, json.dumps([measured, actual, len(ballast)]).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        measured, actual, _ = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert measured == pytest.approx(actual, abs=4)
    # The worker carries 64 MB the master does not (less what the master grew meanwhile).
    assert measured > sampler.sample().rss_mb + 32


# -- cgroup trees built like the kernel's


def v2_stat(inactive_file: int) -> str:
    return (
        f"anon {150 * MiB}\nfile {250 * MiB}\nkernel 8388608\nkernel_stack 327680\n"
        "pagetables 1327104\nsock 0\nshmem 0\nfile_mapped 16777216\nfile_dirty 0\n"
        f"file_writeback 0\nanon_thp 0\ninactive_anon {140 * MiB}\nactive_anon {10 * MiB}\n"
        f"inactive_file {inactive_file}\nactive_file {250 * MiB - inactive_file}\n"
        "unevictable 0\nslab_reclaimable 4194304\nslab_unreclaimable 2097152\nslab 6291456\n"
        "pgfault 43210\npgmajfault 12\n"
    )


def v1_stat(total_inactive_file: int, hierarchical: str = V1_NO_LIMIT.strip()) -> str:
    own_inactive = total_inactive_file // 2  # the cgroup's own pages, without its children
    return (
        f"cache {250 * MiB}\nrss {150 * MiB}\nrss_huge 0\nshmem 0\nmapped_file 16777216\n"
        "dirty 12288\nwriteback 0\nswap 0\npgpgin 20419\npgpgout 19242\npgfault 44005\n"
        f"pgmajfault 18\ninactive_anon {140 * MiB}\nactive_anon {10 * MiB}\n"
        f"inactive_file {own_inactive}\nactive_file {50 * MiB}\nunevictable 0\n"
        f"hierarchical_memory_limit {hierarchical}\n"
        f"hierarchical_memsw_limit {V1_NO_LIMIT.strip()}\n"
        f"total_cache {250 * MiB}\ntotal_rss {150 * MiB}\ntotal_rss_huge 0\ntotal_shmem 0\n"
        f"total_inactive_anon {140 * MiB}\ntotal_active_anon {10 * MiB}\n"
        f"total_inactive_file {total_inactive_file}\ntotal_active_file {50 * MiB}\n"
        "total_unevictable 0\n"
    )


@dataclass
class Tree:
    """A fake /proc and /sys/fs/cgroup; ``write`` puts a file under the cgroup root."""

    proc: Path
    cgroup: Path

    def write(self, relative: str, text: str) -> Path:
        path = self.cgroup / relative.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def self_cgroup(self, text: str) -> None:
        (self.proc / "self").mkdir(parents=True, exist_ok=True)
        (self.proc / "self" / "cgroup").write_text(text)

    def limit(self) -> pressure.ContainerMemory | None:
        return container_limit(str(self.proc), str(self.cgroup))

    def sampler(self, source: str = "auto") -> Sampler:
        return make_sampler(source, None, proc_root=str(self.proc), cgroup_root=str(self.cgroup))


def v2_cgroup(directory: str, *, current: int, inactive: int) -> dict[str, str]:
    """The memory files of a v2 cgroup without a limit."""
    return {
        f"{directory}/memory.current": f"{current}\n",
        f"{directory}/memory.max": "max\n",
        f"{directory}/memory.high": "max\n",
        f"{directory}/memory.low": "0\n",
        f"{directory}/memory.min": "0\n",
        f"{directory}/memory.stat": v2_stat(inactive),
    }


@pytest.fixture
def v2(tmp_path: Path) -> Tree:
    """systemd on cgroup v2: app.service uses 300 MiB, 100 MiB of it inactive file cache."""
    tree = Tree(tmp_path / "proc", tmp_path / "cgroup")
    tree.self_cgroup(f"0::{APP}\n")
    tree.write("cgroup.controllers", "cpuset cpu io memory hugetlb pids rdma misc\n")
    tree.write("memory.stat", v2_stat(400 * MiB))  # the root has no memory.current nor max
    files = v2_cgroup("system.slice", current=900 * MiB, inactive=300 * MiB)
    files.update(v2_cgroup(APP, current=300 * MiB, inactive=100 * MiB))
    for relative, text in files.items():
        tree.write(relative, text)
    return tree


def v1_cgroup(directory: str, *, usage: int, inactive: int) -> dict[str, str]:
    """The memory files of a v1 cgroup without a limit."""
    return {
        f"memory/{directory}/memory.usage_in_bytes": f"{usage}\n",
        f"memory/{directory}/memory.limit_in_bytes": V1_NO_LIMIT,
        f"memory/{directory}/memory.soft_limit_in_bytes": V1_NO_LIMIT,
        f"memory/{directory}/memory.max_usage_in_bytes": f"{usage * 2}\n",
        f"memory/{directory}/memory.use_hierarchy": "1\n",
        f"memory/{directory}/memory.stat": v1_stat(inactive),
    }


@pytest.fixture
def v1(tmp_path: Path) -> Tree:
    """Docker on cgroup v1: the container uses 300 MiB, 100 MiB of it inactive file cache."""
    tree = Tree(tmp_path / "proc", tmp_path / "cgroup")
    tree.self_cgroup(
        "12:pids:/docker/abc123\n11:cpuset:/docker/abc123\n"
        "4:memory:/docker/abc123\n1:name=systemd:/docker/abc123\n"
    )
    files = v1_cgroup("", usage=2000 * MiB, inactive=500 * MiB)
    files.update(v1_cgroup("docker", usage=1200 * MiB, inactive=400 * MiB))
    files.update(v1_cgroup("docker/abc123", usage=300 * MiB, inactive=100 * MiB))
    for relative, text in files.items():
        tree.write(relative.replace("//", "/"), text)
    return tree


@pytest.mark.parametrize(
    ("limits", "expected_mb", "from_file"),
    [
        pytest.param({f"{APP}/memory.max": 512}, 512, f"{APP}/memory.max", id="own-max"),
        pytest.param(
            {f"{APP}/memory.max": 512, f"{APP}/memory.high": 400},
            400,
            f"{APP}/memory.high",
            id="high-below-max",
        ),
        pytest.param(
            {f"{APP}/memory.max": 512, "system.slice/memory.max": 450},
            450,
            "system.slice/memory.max",
            id="parent-binds-child",
        ),
        pytest.param(
            {f"{APP}/memory.max": 512, "system.slice/memory.max": 2048},
            512,
            f"{APP}/memory.max",
            id="child-below-parent",
        ),
        pytest.param(
            {"system.slice/memory.high": 1024}, 1024, "system.slice/memory.high", id="only-parent"
        ),
    ],
)
def test_v2_lowest_limit_wins(
    v2: Tree, limits: dict[str, int], expected_mb: int, from_file: str
) -> None:
    for relative, mb in limits.items():
        v2.write(relative, f"{mb * MiB}\n")
    memory = v2.limit()
    assert memory is not None
    assert memory.version == 2
    assert memory.directory == str(v2.cgroup / APP.lstrip("/"))
    assert memory.limit_bytes == expected_mb * MiB
    assert memory.limit_path == str(v2.cgroup / from_file.lstrip("/"))

    sample = v2.sampler().sample()
    assert sample.source == "container"
    assert sample.used_mb == 200  # memory.current 300 MiB - inactive_file 100 MiB
    assert sample.limit_mb == expected_mb
    assert sample.available_mb == expected_mb - 200
    assert sample.memory_percent == pytest.approx(200 / expected_mb * 100)
    assert_consistent(sample)


def test_v2_no_limit_anywhere_means_host(v2: Tree, caplog: pytest.LogCaptureFixture) -> None:
    assert v2.limit() is None
    assert isinstance(v2.sampler("auto"), HostSampler)
    with caplog.at_level(logging.WARNING, logger="wsgi_memopt"):
        sampler = v2.sampler("container")
    assert sampler.source == sampler.sample().source == "host"
    assert "no cgroup limit" in caplog.text


@pytest.mark.parametrize(
    "limit",
    [
        pytest.param(HOST_TOTAL, id="equal-to-host-ram"),
        pytest.param(HOST_TOTAL * 4, id="above-host-ram"),
        pytest.param(0, id="zero"),
    ],
)
def test_v2_limits_that_cannot_bind_are_ignored(v2: Tree, limit: int) -> None:
    v2.write(f"{APP}/memory.max", f"{limit}\n")
    assert v2.limit() is None


@pytest.mark.parametrize(
    "self_cgroup",
    [
        pytest.param("0::/\n", id="private-namespace-root"),
        pytest.param("0::/kubepods/burstable/pod1/abc\n", id="host-path-not-mounted"),
        pytest.param("0::/../../elsewhere\n", id="path-above-the-mount"),
    ],
)
def test_v2_cgroup_dir_missing_falls_back_to_the_mount_root(
    tmp_path: Path, self_cgroup: str
) -> None:
    tree = Tree(tmp_path / "proc", tmp_path / "cgroup")
    tree.self_cgroup(self_cgroup)
    for relative, text in v2_cgroup("", current=300 * MiB, inactive=100 * MiB).items():
        tree.write(relative, text)
    tree.write("memory.max", f"{1024 * MiB}\n")
    memory = tree.limit()
    assert memory is not None
    assert memory.directory == str(tree.cgroup)
    assert tree.sampler().sample().memory_percent == pytest.approx(200 / 1024 * 100)


def test_v2_in_the_unified_mount_of_a_hybrid_host(tmp_path: Path) -> None:
    tree = Tree(tmp_path / "proc", tmp_path / "cgroup")
    tree.self_cgroup(f"1:name=systemd:{APP}\n0::{APP}\n")
    tree.write("unified/cgroup.controllers", "memory pids\n")
    for relative, text in v2_cgroup(f"unified{APP}", current=300 * MiB, inactive=100 * MiB).items():
        tree.write(relative, text)
    tree.write(f"unified{APP}/memory.max", f"{800 * MiB}\n")
    memory = tree.limit()
    assert memory is not None
    assert memory.directory == str(tree.cgroup / "unified" / APP.lstrip("/"))
    assert memory.limit_bytes == 800 * MiB


@pytest.mark.parametrize(
    ("usage", "expected_mb", "from_file"),
    [
        pytest.param(
            {"memory/docker/abc123/memory.limit_in_bytes": 768},
            768,
            "memory/docker/abc123/memory.limit_in_bytes",
            id="own-limit",
        ),
        pytest.param(
            {"memory/docker/memory.limit_in_bytes": 640},
            640,
            "memory/docker/memory.limit_in_bytes",
            id="parent-limit-sentinel-in-child",
        ),
        pytest.param(
            {
                "memory/docker/abc123/memory.limit_in_bytes": 768,
                "memory/docker/memory.limit_in_bytes": 2048,
            },
            768,
            "memory/docker/abc123/memory.limit_in_bytes",
            id="child-below-parent",
        ),
    ],
)
def test_v1_lowest_limit_wins_and_sentinel_is_ignored(
    v1: Tree, usage: dict[str, int], expected_mb: int, from_file: str
) -> None:
    for relative, mb in usage.items():
        v1.write(relative, f"{mb * MiB}\n")
    memory = v1.limit()
    assert memory is not None
    assert memory.version == 1
    assert memory.limit_bytes == expected_mb * MiB
    assert memory.limit_path == str(v1.cgroup / from_file)

    sample = v1.sampler().sample()
    assert sample.source == "container"
    assert sample.used_mb == 200  # usage 300 MiB - total_inactive_file 100 MiB (not inactive_file)
    assert sample.limit_mb == expected_mb
    assert_consistent(sample)


def test_v1_sentinel_everywhere_means_host(v1: Tree) -> None:
    assert v1.limit() is None
    assert v1.sampler().source == "host"


def test_v1_limit_above_host_ram_is_ignored(v1: Tree) -> None:
    v1.write("memory/docker/abc123/memory.limit_in_bytes", f"{HOST_TOTAL * 2}\n")
    assert v1.limit() is None


def test_v1_hierarchical_limit_from_hidden_ancestors(v1: Tree) -> None:
    v1.write("memory/docker/abc123/memory.stat", v1_stat(100 * MiB, str(600 * MiB)))
    memory = v1.limit()
    assert memory is not None
    assert memory.limit_bytes == 600 * MiB
    assert memory.limit_path.endswith("abc123/memory.stat")


@pytest.mark.parametrize(
    "self_cgroup",
    [
        pytest.param(
            "9:name=systemd:/\n4:memory:/docker/abc123\n3:cpuset:/\n0::/\n",
            id="hybrid-v1-memory-and-v2",
        ),
        pytest.param("4:memory,hugetlb:/docker/abc123\n", id="co-mounted-controllers"),
    ],
)
def test_v1_memory_line_wins(v1: Tree, self_cgroup: str) -> None:
    v1.self_cgroup(self_cgroup)
    v1.write("unified/cgroup.controllers", "hugetlb\n")  # v2 holds no memory controller here
    v1.write("memory/docker/abc123/memory.limit_in_bytes", f"{1024 * MiB}\n")
    memory = v1.limit()
    assert memory is not None
    assert memory.version == 1
    assert memory.directory == str(v1.cgroup / "memory" / "docker" / "abc123")


def test_v1_cgroup_dir_missing_falls_back_to_the_mount_root(v1: Tree) -> None:
    v1.self_cgroup("4:memory:/process_api/0c2b5f5e\n0::/\n")
    v1.write("memory/memory.limit_in_bytes", f"{1536 * MiB}\n")
    memory = v1.limit()
    assert memory is not None
    assert memory.directory == str(v1.cgroup / "memory")
    assert memory.limit_bytes == 1536 * MiB


@pytest.mark.parametrize(
    "self_cgroup",
    [
        pytest.param("", id="empty"),
        pytest.param("garbage without colons\n", id="malformed"),
        pytest.param(None, id="missing"),
    ],
)
def test_no_usable_self_cgroup_means_no_container(v2: Tree, self_cgroup: str | None) -> None:
    v2.write(f"{APP}/memory.max", f"{512 * MiB}\n")
    if self_cgroup is None:
        (v2.proc / "self" / "cgroup").unlink()
    else:
        v2.self_cgroup(self_cgroup)
    assert v2.limit() is None


# -- malformed files


@pytest.mark.parametrize(
    ("relative", "text"),
    [
        pytest.param(f"{APP}/memory.max", "lots\n", id="max-not-a-number"),
        pytest.param(f"{APP}/memory.max", "", id="max-empty"),
        pytest.param(f"{APP}/memory.max", "-1\n", id="max-negative"),
    ],
)
def test_malformed_limit_is_ignored_not_fatal(v2: Tree, relative: str, text: str) -> None:
    v2.write(relative, text)
    assert v2.limit() is None
    v2.write(f"{APP}/memory.high", f"{700 * MiB}\n")
    memory = v2.limit()
    assert memory is not None
    assert memory.limit_bytes == 700 * MiB


@pytest.mark.parametrize(
    ("relative", "text"),
    [
        pytest.param(f"{APP}/memory.current", "12ab\n", id="current-not-a-number"),
        pytest.param(f"{APP}/memory.current", "max\n", id="current-max"),
        pytest.param(f"{APP}/memory.stat", "anon 1\nfile 2\n", id="stat-without-inactive"),
        pytest.param(f"{APP}/memory.stat", "inactive_file x\n", id="stat-inactive-not-a-number"),
    ],
)
def test_unreadable_usage_at_start_means_no_container(v2: Tree, relative: str, text: str) -> None:
    v2.write(f"{APP}/memory.max", f"{512 * MiB}\n")
    v2.write(relative, text)
    assert v2.limit() is None
    assert v2.sampler().source == "host"


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param("current-garbled", id="current-garbled"),
        pytest.param("current-removed", id="current-removed"),
        pytest.param("stat-truncated", id="stat-truncated"),
    ],
)
def test_sample_falls_back_to_host_when_files_break(
    v2: Tree, breakage: str, caplog: pytest.LogCaptureFixture
) -> None:
    v2.write(f"{APP}/memory.max", f"{512 * MiB}\n")
    sampler = v2.sampler()
    assert sampler.sample().source == "container"

    current = v2.cgroup / APP.lstrip("/") / "memory.current"
    stat = v2.cgroup / APP.lstrip("/") / "memory.stat"
    if breakage == "current-garbled":
        current.write_text("\x00\x01\n")
    elif breakage == "current-removed":
        current.unlink()
    else:
        stat.write_text("anon 1\n")
    with caplog.at_level(logging.INFO, logger="wsgi_memopt"):
        broken = [sampler.sample(), sampler.sample()]
        current.write_text(f"{300 * MiB}\n")
        stat.write_text(v2_stat(100 * MiB))
        healed = sampler.sample()

    for sample in broken:
        assert sample.source == "host"
        assert sample.limit_mb == pytest.approx(HOST_TOTAL / MiB)
        assert_consistent(sample)
    assert healed.source == "container"
    assert healed.used_mb == 200
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per transition, not at every sample
    assert "readable again" in caplog.text


def test_paths_and_limit_are_resolved_once(v2: Tree) -> None:
    v2.write(f"{APP}/memory.max", f"{512 * MiB}\n")
    sampler = v2.sampler()
    v2.self_cgroup("garbage\n")  # re-resolving would now find nothing
    v2.write(f"{APP}/memory.max", f"{256 * MiB}\n")
    sample = sampler.sample()
    assert sample.source == "container"
    assert sample.limit_mb == 512


def test_traced_bytes_sees_tracing_started_before_tracemalloc_is_imported() -> None:
    # -X tracemalloc starts tracing in C: tracemalloc.py is never imported, and need not be.
    script = (
        "import sys\n"
        "from wsgi_memopt.memory.pressure import traced_bytes\n"
        "print(traced_bytes() is not None and traced_bytes() > 0, 'tracemalloc' in sys.modules)"
    )
    for flags, expected in (([], "False False"), (["-X", "tracemalloc"], "True False")):
        done = subprocess.run(
            [sys.executable, *flags, "-c", script], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == expected.split()
