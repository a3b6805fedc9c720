"""The WSGI entry point: Django's application wrapped in the middleware.

Run it: ``gunicorn --chdir examples django_site.wsgi:application``.
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from wsgi_memopt import MemoryOptimizer

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "django_site.settings")

application = MemoryOptimizer(get_wsgi_application())
