"""The worker pool and its recycle lease: one recycle at a time across the workers of a master.

The lease is a real ``flock`` taken by real processes: a child process holds it while this one
asks, and the kernel releases it when the child exits, which is how a recycling worker hands
it on.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wsgi_memopt.memory.pool import Pool, RecycleLease, current_pool, serving_master

TIMEOUT_S = 30

HOLDER = textwrap.dedent(
    """\
    import sys
    from wsgi_memopt.memory.pool import RecycleLease

    lease = RecycleLease.for_master(4242, sys.argv[1])
    print(lease.try_acquire(), flush=True)
    sys.stdin.readline()  # holds the lease until told to exit
    """
)


def start_holder(directory: Path) -> subprocess.Popen[str]:
    """A process that takes the lease of master 4242 in ``directory`` and keeps it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "True"
    return holder


def test_only_one_worker_of_a_pool_holds_the_lease_until_it_exits(tmp_path: Path) -> None:
    folder = tmp_path / "locks"
    holder = start_holder(folder)
    try:
        mine = RecycleLease.for_master(4242, str(folder))
        assert mine is not None
        assert not mine.try_acquire()  # the holder is recycling
        assert not mine.held
        other_pool = RecycleLease.for_master(4343, str(folder))
        assert other_pool is not None
        assert other_pool.try_acquire()  # another master's pool is not held back
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder exits: the kernel releases its lock
        holder.wait(TIMEOUT_S)
    assert holder.returncode == 0
    assert mine.try_acquire()
    assert mine.held
    assert mine.try_acquire()  # held already: still ours
    assert oct(os.stat(folder).st_mode & 0o777) == oct(0o700)


@pytest.mark.parametrize("kind", ["writable-by-others", "symlink", "a-file"])
def test_a_lock_directory_others_could_tamper_with_is_refused(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsgi_memopt")
    folder = tmp_path / "locks"
    if kind == "writable-by-others":
        folder.mkdir()
        folder.chmod(0o777)
    elif kind == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        folder.symlink_to(tmp_path / "elsewhere")
    else:
        folder.write_text("")

    assert RecycleLease.for_master(4242, str(folder)) is None
    assert any("no place for the pool's recycle lock" in r.message for r in caplog.records)


def test_an_unusable_lock_file_lets_the_recycle_go_ahead(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A recycle that may overlap another beats an OOM kill.
    caplog.set_level(logging.WARNING, logger="wsgi_memopt")
    folder = tmp_path / "locks"
    folder.mkdir(mode=0o700)
    (folder / "recycle-4242.lock").symlink_to(tmp_path / "target")  # O_NOFOLLOW refuses it
    lease = RecycleLease.for_master(4242, str(folder))
    assert lease is not None

    assert lease.try_acquire()
    assert not lease.held
    assert any("unusable" in r.message for r in caplog.records)
    assert not (tmp_path / "target").exists()  # nothing was created through the link


@pytest.mark.parametrize(
    ("workers", "largest"),
    [
        pytest.param({11: 100, 12: 300, 13: 200}, 12, id="largest-rss"),
        pytest.param({12: 300, 11: 300}, 11, id="tie-lowest-pid"),
        pytest.param({}, None, id="no-workers"),
    ],
)
def test_the_worker_that_gives_back_the_most_is_the_largest(
    workers: dict[int, int], largest: int | None
) -> None:
    assert Pool("gunicorn", 10, workers).largest() == largest


def test_a_process_no_master_respawns_has_no_pool() -> None:
    assert serving_master() is None
    assert current_pool() is None
