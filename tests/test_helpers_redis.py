"""The real Redis peers of tests/helpers/redis.py: they start, answer, fail and stop as the
shared-cache tests rely on, and leave no process behind."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import redis
from helpers.redis import (
    RedisCluster,
    RedisSentinel,
    RedisServer,
    process_state,
    require_redis,
)
from helpers.servers import HOST
from redis.sentinel import Sentinel


def test_start_answers_without_persistence_and_stop_leaves_no_process(tmp_path: Path) -> None:
    require_redis()
    server = RedisServer(tmp_path).start()
    try:
        pid = server.pid
        assert pid is not None
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        with server.client() as client:
            assert client.ping()
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
            assert client.config_get("bind") == {"bind": HOST}
            assert client.config_get("dir") == {"dir": str(tmp_path.resolve())}
        assert "Ready to accept connections" in server.log_path.read_text()
    finally:
        server.stop()
    assert process_state(pid) == ""
    assert server.pid is None
    server.stop()  # idempotent
    with pytest.raises(redis.ConnectionError), server.client() as client:
        client.ping()


def test_stop_ends_a_paused_server_at_once(tmp_path: Path) -> None:
    require_redis()
    server = RedisServer(tmp_path).start()
    pid = server.pid
    assert pid is not None
    server.pause()
    started = time.monotonic()
    server.stop()
    # Resumed first, it exits on the SIGTERM rather than waiting for the SIGKILL's bound.
    assert time.monotonic() - started < 5.0
    assert process_state(pid) == ""


def test_a_port_taken_before_start_is_replaced(tmp_path: Path) -> None:
    require_redis()
    server = RedisServer(tmp_path)
    taken = server.port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, taken))
        squatter.listen()
        server.start()
        try:
            assert server.port != taken
            with server.client() as client:
                assert client.ping()
        finally:
            server.stop()


def test_a_given_port_taken_fails_and_leaves_no_process(tmp_path: Path) -> None:
    require_redis()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
        squatter.bind((HOST, 0))
        squatter.listen()
        server = RedisServer(tmp_path, port=squatter.getsockname()[1])
        with pytest.raises(RuntimeError, match="Address already in use"):
            server.start()
    assert not server.running


def test_pause_makes_a_command_time_out_and_resume_answers_again(own_redis: RedisServer) -> None:
    with own_redis.client(timeout_s=0.3) as client:
        client.set("key", "value")
        own_redis.pause()
        with pytest.raises(redis.TimeoutError):
            client.get("key")
        own_redis.resume()
        assert client.get("key") == b"value"


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_restart_answers_again_on_the_same_port_with_nothing_kept(
    own_redis: RedisServer, how: str
) -> None:
    port, pid = own_redis.port, own_redis.pid
    assert pid is not None
    with own_redis.client() as client:
        client.set("key", "value")
    getattr(own_redis, how)()
    assert process_state(pid) == ""
    # A stop is a shutdown Redis logs; a kill is a crash, which it cannot.
    assert ("ready to exit" in own_redis.log_path.read_text()) == (how == "stop")
    with pytest.raises(redis.ConnectionError), own_redis.client() as client:
        client.ping()
    own_redis.restart()
    assert own_redis.port == port
    assert own_redis.pid not in (None, pid)
    with own_redis.client() as client:
        assert client.get("key") is None  # persistence is off: a restart starts empty


def test_reset_brings_a_paused_or_dead_server_back_empty(own_redis: RedisServer) -> None:
    with own_redis.client() as client:
        client.set("key", "value")
    own_redis.pause()
    own_redis.reset()
    own_redis.kill()
    own_redis.reset()
    with own_redis.client() as client:
        assert client.dbsize() == 0


def test_info_memory_reports_used_memory(redis_url: str, redis_server: RedisServer) -> None:
    before = redis_server.info_memory()["used_memory"]
    with redis_server.client() as client:
        client.set("big", b"x" * 1_000_000)
    assert redis_server.info_memory()["used_memory"] > before + 900_000


@pytest.mark.parametrize("run", ["first", "second"])
def test_redis_url_starts_each_test_empty(
    redis_url: str, redis_server: RedisServer, run: str
) -> None:
    assert redis_url == redis_server.url
    with redis.Redis.from_url(redis_url, socket_timeout=2.0) as client:
        assert client.dbsize() == 0
        client.set("left-behind", run)  # the second run finds it unless the fixture flushed


def test_cluster_keys_land_on_the_node_that_serves_their_slot(
    redis_cluster_url: str, redis_cluster: RedisCluster
) -> None:
    assert redis_cluster_url == f"redis+cluster://127.0.0.1:{redis_cluster.nodes[0].port}"
    with redis_cluster.client() as cluster:
        # One key per node, as the client routes them (each node serves its own slot range).
        key_of_port: dict[int, str] = {}
        for i in range(1000):
            key_of_port.setdefault(cluster.get_node_from_key(f"key-{i}").port, f"key-{i}")
            if len(key_of_port) == 3:
                break
        assert sorted(key_of_port) == sorted(node.port for node in redis_cluster.nodes)
        assert len({cluster.keyslot(key) for key in key_of_port.values()}) == 3
        for key in key_of_port.values():
            cluster.set(key, key.upper())
        for key in key_of_port.values():
            assert cluster.get(key) == key.upper().encode()
    for node in redis_cluster.nodes:
        with node.client() as client:
            assert client.keys("*") == [key_of_port[node.port].encode()]


def test_cluster_flush_empties_every_primary(redis_cluster: RedisCluster) -> None:
    with redis_cluster.client() as cluster:
        for i in range(30):
            cluster.set(f"key-{i}", "value")
    redis_cluster.flush()
    for node in redis_cluster.nodes:
        with node.client() as client:
            assert client.dbsize() == 0


def test_cluster_nodes_run_in_cluster_mode_with_their_bus_ports(
    redis_cluster: RedisCluster,
) -> None:
    for node in redis_cluster.nodes:
        with node.client() as client:
            assert client.info("cluster")["cluster_enabled"] == 1
            info = client.cluster("info")
        assert info["cluster_state"] == "ok"
        assert info["cluster_known_nodes"] == "3"
        with socket.create_connection((HOST, node.port + 10000), timeout=2.0):
            pass


def test_sentinel_url_resolves_the_primary(redis_sentinel: RedisSentinel) -> None:
    port = redis_sentinel.sentinel.port
    assert redis_sentinel.url == f"redis+sentinel://127.0.0.1:{port}/memopt/0"
    sentinel = Sentinel([(HOST, port)], socket_timeout=2.0)
    assert sentinel.discover_master("memopt") == (HOST, redis_sentinel.primary.port)
    with sentinel.master_for("memopt", socket_timeout=2.0) as primary:
        primary.set("through-the-sentinel", "yes")
    with redis_sentinel.primary.client() as client:
        assert client.get("through-the-sentinel") == b"yes"
        client.delete("through-the-sentinel")


def test_a_cluster_or_sentinel_that_fails_to_start_leaves_no_process(tmp_path: Path) -> None:
    require_redis()
    cluster = RedisCluster(tmp_path / "cluster")
    # A node the others cannot join (cluster mode off) makes `--cluster create` fail.
    cluster.nodes[2].extra = ("--cluster-enabled", "no")
    with pytest.raises(RuntimeError, match="cluster"):
        cluster.start()
    assert not any(node.running for node in cluster.nodes)
    sentinel = RedisSentinel(tmp_path / "sentinel")
    sentinel.sentinel.extra = ("--no-such-option", "1")
    with pytest.raises(RuntimeError, match="exited"):
        sentinel.start()
    assert not sentinel.primary.running
    assert not sentinel.sentinel.running


def test_pause_stops_the_process_itself(own_redis: RedisServer) -> None:
    pid = own_redis.pid
    assert pid is not None
    own_redis.pause()
    assert process_state(pid) == "T"  # stopped by SIGSTOP, before pause() returned
    own_redis.resume()
    assert process_state(pid) in ("S", "R")
    own_redis.stop()
    assert process_state(pid) == ""
