"""PasteDeploy factories: put :class:`~wsgi_memopt.MemoryOptimizer` in front of an app by ini file.

The package registers both factories under the name ``main``, so ``egg:wsgi_memopt`` finds
them (``paste.filter_app_factory`` and ``paste.filter_factory``)::

    [app:main]
    use = egg:myapp
    filter-with = memopt

    [filter:memopt]
    use = egg:wsgi_memopt
    cache_max_mb = 25
    cache_exclude_paths = /admin/*, /account/*

or, equally, ``[pipeline:main] pipeline = memopt myapp``. Every key of the ``[filter:...]``
section is a setting, written as ini text (``25``, ``true``, ``200,203``); an unknown
key or a bad value stops the app from loading with a :class:`~wsgi_memopt.SettingsError` that
names the ini key. Settings not written in the file come from the ``WSGI_MEMOPT_*`` environment
variables, then the defaults: the file wins over the environment, as explicit arguments do.

PasteDeploy's ``[DEFAULT]`` trap: a key that is also in ``[DEFAULT]`` is *dropped* from the
section's own keys, even when the section writes it again, so ``cache_ttl_s = 60`` in
``[filter:memopt]`` would silently lose to ``cache_ttl_s = 600`` in ``[DEFAULT]``. Write it as
PasteDeploy asks, ``set cache_ttl_s = 60``, to override a ``[DEFAULT]`` value. This module
reads a setting's name from the global configuration (``[DEFAULT]`` and ``set`` keys) when the
section does not have it, so both forms take effect; other ``[DEFAULT]`` keys (``debug``,
``here``, ...) are not settings and are left alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .settings import Settings, env_values

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

    from .middleware import MemoryOptimizer

__all__ = ["filter_app_factory", "filter_factory", "settings_from_ini"]


def settings_from_ini(global_conf: Mapping[str, str], local_conf: Mapping[str, str]) -> Settings:
    """The settings of a ``[filter:...]`` section: its keys > ``WSGI_MEMOPT_*`` > defaults.

    A setting missing from ``local_conf`` is taken from ``global_conf`` (``[DEFAULT]`` and
    ``set name = value``), because PasteDeploy drops a section's key that ``[DEFAULT]`` has too.
    """
    values, origins = env_values(os.environ)
    local_names = {key.strip().lower() for key in local_conf}
    for key, value in global_conf.items():
        name = key.strip().lower()
        if name in Settings.NAMES and name not in local_names:
            values[name] = value
            origins[name] = f"ini key {key!r} ([DEFAULT] or set)"
    for key, value in local_conf.items():
        name = key.strip().lower()
        values.pop(name, None)  # an env value under the same name: the file wins
        values[key] = value
        origins[key] = f"ini key {key!r}"
    return Settings.from_mapping(values, origins=origins)


def filter_app_factory(
    app: WSGIApplication, global_conf: Mapping[str, str], **local_conf: str
) -> MemoryOptimizer:
    """``paste.filter_app_factory``: ``app`` wrapped in a :class:`MemoryOptimizer`."""
    from .middleware import MemoryOptimizer

    return MemoryOptimizer(app, settings_from_ini(global_conf, local_conf))


def filter_factory(
    global_conf: Mapping[str, str], **local_conf: str
) -> Callable[[WSGIApplication], MemoryOptimizer]:
    """``paste.filter_factory``: a function that wraps an app in a :class:`MemoryOptimizer`.

    The settings are parsed here, when the ini file is loaded, so a bad value fails the load
    whichever way the filter is applied.
    """
    from .middleware import MemoryOptimizer

    settings = settings_from_ini(global_conf, local_conf)

    def wrap(app: WSGIApplication) -> MemoryOptimizer:
        return MemoryOptimizer(app, settings)

    return wrap
