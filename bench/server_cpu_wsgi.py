"""The app's WSGI handler, with each response saying how much CPU its request took in the worker.

For ``bench/annotate_load.py`` only (served as ``server_cpu_wsgi:application``
with ``--pythonpath bench``): adds ``X-Server-CPU-ms``, the CPU time (user +
system) of the worker thread that handled the request, in milliseconds, from
before Django sees the request to the finished response (Django renders a
page whole before returning it). Database work happens in the PostgreSQL
server process and is not in it; the bench measures that separately.
"""

import time

from webapp.wsgi import application as django_application

HEADER = "X-Server-CPU-ms"


def application(environ, start_response):
    began = time.thread_time()
    captured = {}

    def capture(status, headers, exc_info=None):
        captured["args"] = (status, headers, exc_info)
        return lambda data: None  # Django never uses the write() callable

    body = b"".join(django_application(environ, capture))
    cpu_ms = (time.thread_time() - began) * 1000
    status, headers, exc_info = captured["args"]
    start_response(status, [*headers, (HEADER, f"{cpu_ms:.3f}")], exc_info)
    return [body]
