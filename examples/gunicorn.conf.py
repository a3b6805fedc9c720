"""gunicorn settings for an app behind wsgi_memopt: ``gunicorn -c examples/gunicorn.conf.py ...``.

With ``preload_app`` the master imports the app once and forks the workers from it; freezing
the heap first moves every object the app created at import into the permanent generation, so
the garbage collector never touches (and never copies, page by page) what the workers share.
(The middleware's own ``gc_freeze`` setting does the same for an app loaded in each worker.)
"""

from __future__ import annotations

import gc
from typing import Any

bind = "127.0.0.1:8000"
workers = 4
worker_class = "gthread"
threads = 4
preload_app = True
# Recycle gracefully rather than be killed: the middleware recycles a worker whose memory stays
# above restart_percent; these are the server's own, coarser limits.
max_requests = 10000
max_requests_jitter = 1000
graceful_timeout = 30


def when_ready(server: Any) -> None:
    """The preloaded app is imported: collect once, then freeze what is left before forking."""
    gc.collect()
    gc.freeze()


def pre_fork(server: Any, worker: Any) -> None:
    # Objects created in the master since when_ready (by earlier forks) are frozen too.
    gc.freeze()


# Prometheus (once wsgi_memopt exports metrics; it does not yet): with several workers set
# PROMETHEUS_MULTIPROC_DIR to an empty directory before gunicorn starts, and drop a dead
# worker's files in child_exit:
#
#     from prometheus_client import multiprocess
#
#     def child_exit(server, worker):
#         multiprocess.mark_process_dead(worker.pid)
