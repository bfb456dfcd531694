"""``pgcache serve``: an OpenAI-compatible caching proxy, for applications in any language.

Needs the ``server`` extra (``pip install 'pgcache[server]'``). The application
is :func:`pgcache.server.app.create_app`; docs/server.md lists every endpoint,
header and setting.
"""
