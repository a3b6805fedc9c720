"""Each process's ear on the shared store: invalidations published by the others.

One daemon thread per process subscribes to the invalidation channel and hands every message
to ``deliver``. It is started by the first request a process serves, not when the middleware
is built: under gunicorn the app is often built in the master, and a thread started before
the fork does not exist in the workers. When the subscription breaks (Redis restarted, a
partition) it subscribes again, with a growing pause, and calls ``resubscribed``: messages sent
meanwhile are lost, so the process drops its own copies of shared entries.

    listener = Listener(lambda: redis_store.client, channel, deliver, resubscribed)
    listener.ensure_running()      # from the request path: cheap once it runs
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Listener"]

log = logging.getLogger("wsgi_memopt")

_POLL_S = 1.0  # how long one read waits for a message: the thread notices stop() within it
_PAUSE_MAX_S = 5.0  # the longest pause between two attempts to subscribe


class Listener:
    """Subscribes ``channel`` on the client ``client()`` gives, in a daemon thread."""

    def __init__(
        self,
        client: Callable[[], Any],
        channel: str,
        deliver: Callable[[Mapping[str, Any]], None],
        resubscribed: Callable[[], None],
    ) -> None:
        self._client = client
        self.channel = channel
        self._deliver = deliver
        self._resubscribed = resubscribed
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.connected = False
        self.received = 0
        self.reconnects = 0

    def ensure_running(self) -> None:
        """Start the thread in this process if it is not running here yet."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._stop = threading.Event()
            self.connected = False
            self._thread = threading.Thread(
                target=self._run, name="wsgi-memopt-invalidations", daemon=True
            )
            self._thread.start()
            self._pid = os.getpid()

    def stop(self, timeout_s: float = 2 * _POLL_S) -> None:
        """Stop the thread (it notices within a poll) and wait for it, bounded."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        self._pid = None

    def after_fork(self) -> None:
        """In a forked child: the parent's thread is not here; a lock it held stays held."""
        self._lock = threading.Lock()
        self._thread = None
        self.connected = False

    def _run(self) -> None:
        pause = 0.05
        first = True
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._client().pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self.channel)
                self.connected = True
                pause = 0.05
                if not first:
                    self.reconnects += 1
                    self._resubscribed()
                first = False
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=_POLL_S)
                    if message is not None and message.get("type") == "message":
                        self._handle(message.get("data"))
            except Exception as error:
                if self.connected:
                    log.warning("[CACHE] lost the invalidation channel: %s", error)
                self.connected = False
                first = False
                self._stop.wait(pause)
                pause = min(pause * 2, _PAUSE_MAX_S)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:
                        log.debug("[CACHE] closing a broken subscription failed", exc_info=True)
        self.connected = False

    def _handle(self, data: object) -> None:
        try:
            message = json.loads(data)  # type: ignore[arg-type]
            if isinstance(message, dict):
                self.received += 1
                self._deliver(message)
        except Exception:
            log.warning("[CACHE] could not apply an invalidation message", exc_info=True)
