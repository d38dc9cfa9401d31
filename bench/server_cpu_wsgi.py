"""The app's WSGI handler, with each response saying how much CPU and wall time its request took in the worker.

For ``bench/annotate_load.py`` only (served as ``server_cpu_wsgi:application``
with ``--pythonpath bench``). Headers added to every response:

- ``X-Server-CPU-ms``: the CPU time (user + system) of the worker thread that
  handled the request, in milliseconds, from before Django sees the request
  to the finished response (Django renders a page whole before returning it).
  Database work happens in the PostgreSQL server process and is not in it; the
  bench measures that separately.
- ``X-Server-ms``: the wall time of the same span, in milliseconds: the
  server's own latency (CPU, waiting for the database, waiting for a core),
  without the time the request waited in the listen backlog for a free worker,
  nor the client's own time.
- ``X-Server-Start``: ``time.monotonic()`` when the span began, in seconds. On
  Linux the monotonic clock is one clock for every process of the machine, so a
  client on the same machine can tell the time before the server began (its
  own sending, the backlog) from the time after it ended (its own reading).
- ``X-Server-Pid``: the worker process that served it, so the client can tell
  how long a request waited for that worker to finish its previous request.
"""

import os
import time

from webapp.wsgi import application as django_application

HEADER = "X-Server-CPU-ms"
WALL_HEADER = "X-Server-ms"
START_HEADER = "X-Server-Start"
PID_HEADER = "X-Server-Pid"


def application(environ, start_response):
    began = time.thread_time()
    began_wall = time.monotonic()
    captured = {}

    def capture(status, headers, exc_info=None):
        captured["args"] = (status, headers, exc_info)
        return lambda data: None  # Django never uses the write() callable

    body = b"".join(django_application(environ, capture))
    cpu_ms = (time.thread_time() - began) * 1000
    wall_ms = (time.monotonic() - began_wall) * 1000
    status, headers, exc_info = captured["args"]
    extra = [(HEADER, f"{cpu_ms:.3f}"), (WALL_HEADER, f"{wall_ms:.3f}"), (START_HEADER, f"{began_wall:.6f}"),
             (PID_HEADER, str(os.getpid()))]
    start_response(status, [*headers, *extra], exc_info)
    return [body]
