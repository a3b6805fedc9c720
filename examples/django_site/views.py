"""Three views: one for everyone (cached), two per visitor (never cached, never shared)."""

from __future__ import annotations

import time

from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.utils.html import escape
from django.views.decorators.cache import cache_control


@cache_control(public=True, max_age=60)
def cached(request: HttpRequest) -> HttpResponse:
    """The same page for everyone: served from the cache after the first request."""
    time.sleep(0.05)  # stands for a slow query or template
    return HttpResponse(f"built at {time.time():.6f}\n", content_type="text/plain")


def visits(request: HttpRequest) -> HttpResponse:
    """Counts the visitor's visits in the session: Set-Cookie and Vary: Cookie, never stored."""
    request.session["visits"] = request.session.get("visits", 0) + 1
    return HttpResponse(f"visits: {request.session['visits']}\n", content_type="text/plain")


def form(request: HttpRequest) -> HttpResponse:
    """A form with Django's CSRF token (what ``{% csrf_token %}`` renders); POST checks it."""
    if request.method == "POST":
        return HttpResponse("accepted\n", content_type="text/plain")
    token = escape(get_token(request))
    return HttpResponse(
        '<form method="post">'
        f'<input type="hidden" name="csrfmiddlewaretoken" value="{token}">'
        "<button>send</button></form>\n"
    )
