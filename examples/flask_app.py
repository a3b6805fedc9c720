"""Flask behind the middleware: ``app.wsgi_app = MemoryOptimizer(app.wsgi_app)``.

- ``/cached``: the same page for everyone, ``Cache-Control: public, max-age=60``: served from
  the cache after the first request (``Cache-Status: wsgi-memopt; hit``).
- ``/session``: counts the visitor's visits in ``flask.session``. Flask answers with
  ``Set-Cookie`` and ``Vary: Cookie``; such a response is never stored, and a request that
  carries a ``Cookie`` is never answered from the cache.
- ``/form``: a form with a CSRF-style token kept in the session, one per visitor; ``POST
  /form`` checks it. Never stored, never shared between visitors.

Run it: ``gunicorn --chdir examples flask_app:app`` (or ``flask --app examples/flask_app run``).
"""

from __future__ import annotations

import os
import secrets
import time

from flask import Flask, abort, request, session

from wsgi_memopt import MemoryOptimizer

app = Flask(__name__)
# A real deployment reads its secret from the environment; this default is for the example only.
app.secret_key = os.environ.get("FLASK_SECRET_KEY", "example-only-not-a-secret")
# Only what a view marks cacheable (Cache-Control, Expires, Last-Modified) is stored, as /cached
# does. To keep views that say nothing, give them a lifetime instead, scoped to some routes:
# MemoryOptimizer(app.wsgi_app, cache_default_ttl_s=60, cache_paths="/reports/*").
app.wsgi_app = MemoryOptimizer(app.wsgi_app)  # type: ignore[method-assign]


@app.get("/cached")
def cached() -> tuple[str, dict[str, str]]:
    time.sleep(0.05)  # stands for a slow query or template
    return f"built at {time.time():.6f}\n", {"Cache-Control": "public, max-age=60"}


@app.get("/session")
def visits() -> str:
    session["visits"] = session.get("visits", 0) + 1
    return f"visits: {session['visits']}\n"


@app.get("/form")
def form() -> str:
    token = session.setdefault("csrf_token", secrets.token_urlsafe(16))
    return (
        '<form method="post">'
        f'<input type="hidden" name="csrf_token" value="{token}">'
        "<button>send</button></form>\n"
    )


@app.post("/form")
def submit() -> str:
    expected = session.get("csrf_token")
    if not expected or not secrets.compare_digest(expected, request.form.get("csrf_token", "")):
        abort(403)
    return "accepted\n"
