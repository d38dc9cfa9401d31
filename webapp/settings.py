"""Django settings for Rewardloop.

Everything a deployment changes comes from the environment:

- ``REWARDLOOP_DATA_DIR``: where the SQLite database, the embedded broker's
  message folders, model weights and downloads live (default ``<repo>/var``).
- ``DATABASE_URL``: e.g. ``postgres://user@127.0.0.1:5432/rewardloop``. Unset:
  SQLite in WAL mode under the data directory. ``DJANGO_CONN_MAX_AGE`` (seconds,
  default 0) keeps connections between requests.
- ``REWARDLOOP_CACHE_URL``: e.g. ``redis://127.0.0.1:6379/2``: the shared cache,
  which then also serves sessions. Unset: a per-process memory cache, sessions in
  the database.
- ``CELERY_BROKER_URL``: e.g. ``redis://127.0.0.1:6379/0``. Unset: kombu's
  ``filesystem://`` transport under the data directory (no server needed).
- ``DJANGO_SECRET_KEY`` (unset: generated once into ``DATA_DIR/secret_key``; with
  DEBUG off a weak one stops the start), ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS``.
- ``REWARDLOOP_HTTPS=1``: secure cookies, HTTPS redirect, proxy header, HSTS
  (``REWARDLOOP_HSTS_SECONDS``, ``REWARDLOOP_HSTS_PRELOAD``).
- ``REWARDLOOP_TRAIN_INTERVAL_S`` (default 300): how often Celery beat checks
  whether a project has enough new ratings to train.
- ``REWARDLOOP_LOGIN_FAILURE_LIMIT`` (default 10), ``REWARDLOOP_LOGIN_LOCKOUT_MINUTES``
  (default 15): login throttling per username and per IP address (django-axes).
- ``REWARDLOOP_API_RATE`` (default ``600/m``): requests per API token per second
  (``s``), minute (``m``), hour (``h``) or day (``d``), on the REST API, ``/v1/`` and
  direct calls to the inference process alike; beyond it a 429. Counted in the cache:
  shared by every web process and the inference process with ``REWARDLOOP_CACHE_URL``,
  else per process.
- ``REWARDLOOP_INFERENCE_URL`` (default ``http://127.0.0.1:$REWARDLOOP_INFERENCE_PORT``, that
  port 8001 unless set; ``make run`` sets it to the web port + 1): the inference process
  (``manage.py serve_inference``) that the OpenAI-compatible routes ``/v1/...`` call. Caps on
  one request there: ``REWARDLOOP_SERVE_MAX_BODY_BYTES`` (1 MiB), ``REWARDLOOP_SERVE_MAX_PROMPT_CHARS``
  (16,000), ``REWARDLOOP_SERVE_MAX_TOKENS`` (512), ``REWARDLOOP_SERVE_MAX_N`` (8).
  ``REWARDLOOP_SERVE_TIMELINE_LEN`` (4096): the inference process's ``/debug/timeline`` keeps the
  latest this many ended requests and as many engine steps (older ones are dropped).
- ``REWARDLOOP_TORCH_THREADS``: torch threads per worker process (default: the
  usable cores (affinity, cgroup quota) divided by the worker's concurrency and by
  ``REWARDLOOP_WORKER_POOLS`` (default 2: generation and training), at least 1;
  a larger explicit value is capped at usable cores ÷ concurrency).
- ``REWARDLOOP_S3_BUCKET`` (unset: local folders): keep model versions, reward models,
  exports and plots in this S3-compatible bucket (``REWARDLOOP_S3_ENDPOINT_URL``,
  ``REWARDLOOP_S3_REGION``, ``REWARDLOOP_S3_PREFIX``; credentials as boto3 reads them,
  e.g. ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``). ``REWARDLOOP_CACHE_DIR``
  (default ``DATA_DIR/cache``): this machine's copies of fetched versions.
- ``REWARDLOOP_IMPORT_MAX_BYTES`` (default 256 MiB), ``REWARDLOOP_IMPORT_MAX_LINES``
  (default 1,000,000) and ``REWARDLOOP_IMPORT_MAX_LINE_BYTES`` (default 64 KiB): caps on
  one prompt file (``manage.py import_prompts``).
"""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from csp.constants import NONE, SELF

from webapp.secret_key import secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("REWARDLOOP_DATA_DIR", BASE_DIR / "var")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
# DJANGO_SECRET_KEY, or a random key generated once into DATA_DIR/secret_key (mode 0600).
# With DEBUG off, a weak or the old development DJANGO_SECRET_KEY stops the start.
SECRET_KEY = secret_key(environ=os.environ, data_dir=DATA_DIR, debug=DEBUG)
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver").split(",")

# REWARDLOOP_HTTPS=1: served over HTTPS (directly or behind a proxy that sets
# X-Forwarded-Proto): cookies only over HTTPS, plain HTTP redirected, HSTS for
# REWARDLOOP_HSTS_SECONDS (default one year, subdomains included). The HSTS preload
# directive is sent only with REWARDLOOP_HSTS_PRELOAD=1 (it asks browsers' preload
# lists to include the domain, a commitment the deployer makes, not this code).
REWARDLOOP_HTTPS = os.environ.get("REWARDLOOP_HTTPS", "0") == "1"
if REWARDLOOP_HTTPS:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$"]  # the load balancer's plain-HTTP health probe
    SECURE_HSTS_SECONDS = int(os.environ.get("REWARDLOOP_HSTS_SECONDS", str(365 * 24 * 3600)))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = os.environ.get("REWARDLOOP_HSTS_PRELOAD", "0") == "1"
    if not SECURE_HSTS_PRELOAD:
        SILENCED_SYSTEM_CHECKS = ["security.W021"]  # preload not asked for: a choice, not an oversight

INSTALLED_APPS = [
    "webapp.admin.RewardloopAdminConfig",  # django.contrib.admin, 403 for signed-in non-staff
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "django_celery_beat",
    "csp",
    "axes",
    "ninja",  # the REST API; as an app, its docs page loads Swagger UI from static files, not a CDN
    "webapp.accounts",
    "webapp.policies",
    "webapp.annotation",
    "webapp.training",
    "webapp.rewards",
    "webapp.serving",
    "webapp.arena",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "webapp.middleware.HtmxVaryMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "webapp.middleware.HtmxLoginRedirectMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: turns a locked-out login into a 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
            "builtins": ["webapp.policies.templatetags.rewardloop"],
        },
    },
]

_sqlite_path = DATA_DIR / "db.sqlite3"
DATABASES = {
    # DJANGO_CONN_MAX_AGE (seconds, default 0): keep database connections between requests.
    "default": dj_database_url.config(
        default=f"sqlite:///{_sqlite_path}",
        conn_max_age=int(os.environ.get("DJANGO_CONN_MAX_AGE", "0")),
        conn_health_checks=True,
    ),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        # WAL lets the web server read while a worker writes; IMMEDIATE takes the
        # write lock at BEGIN so concurrent writers queue instead of failing.
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # Tests run workers in other processes, so the test database must be a file.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}

# Cache and sessions. With REWARDLOOP_CACHE_URL (e.g. redis://127.0.0.1:6379/2) the
# cache is that Redis, shared by every web process, and sessions are read from it
# (written through to the database, so a Redis restart logs nobody out). Without it:
# each process's own memory cache, and sessions in the database only (a per-process
# cache cannot hold sessions: a logout in one process would not reach the others).
REWARDLOOP_CACHE_URL = os.environ.get("REWARDLOOP_CACHE_URL", "")
if REWARDLOOP_CACHE_URL:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REWARDLOOP_CACHE_URL}
    }
    SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    SESSION_ENGINE = "django.contrib.sessions.backends.db"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Login throttling (django-axes): after REWARDLOOP_LOGIN_FAILURE_LIMIT failed logins for one
# username, or from one IP address, further attempts answer 429 for
# REWARDLOOP_LOGIN_LOCKOUT_MINUTES, checked by AxesStandaloneBackend before any password is
# hashed. A successful login clears that username's and address's failures. Failures are
# kept in the database (shared by every web process). The address is REMOTE_ADDR: behind a
# reverse proxy, have the proxy pass the client's address as REMOTE_ADDR.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = int(os.environ.get("REWARDLOOP_LOGIN_FAILURE_LIMIT", "10"))
AXES_COOLOFF_TIME = timedelta(minutes=int(os.environ.get("REWARDLOOP_LOGIN_LOCKOUT_MINUTES", "15")))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]  # each on its own: per username, and per address
AXES_RESET_ON_SUCCESS = True
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_LOCKOUT_CALLABLE = "webapp.accounts.views.login_lockout"  # axes' page, plus Retry-After
AXES_VERBOSE = False

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True

CSRF_FAILURE_VIEW = "webapp.views.csrf_failure"

# No inline script anywhere: every script is a same-origin static file.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
    "EXCLUDE_URL_PREFIXES": ["/admin"],
}

# Celery
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_FOLDER = DATA_DIR / "broker"
if CELERY_BROKER_URL.startswith("filesystem://"):
    # kombu's filesystem transport with its half-written-file race closed (webapp/broker.py);
    # kombu takes this class in place of the URL's scheme, so the URL stays filesystem://.
    CELERY_BROKER_TRANSPORT = "webapp.broker:FilesystemTransport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(CELERY_BROKER_FOLDER / "queue"),
        "data_folder_out": str(CELERY_BROKER_FOLDER / "queue"),
        "control_folder": str(CELERY_BROKER_FOLDER / "control"),
        "store_processed": False,
        # An idle worker looks at the queue folder this often (kombu's default: 1 s, which
        # added up to about 12 s of waiting between a training run's steps).
        "polling_interval": 0.1,
        # A worker removes hidden temporary message files older than this (seconds): their
        # writer was killed before renaming them into place (webapp/broker.py).
        "stale_temporary_age": 600,
        # A worker gives back a message another machine's (or container's) reader claimed
        # (renamed to a hidden name) and did not read within this many seconds; one of its own
        # machine's and container's once its reader's process is gone, but never one claimed
        # less than "min_claim_age" (default 60) seconds ago (webapp/broker.py).
        "stale_claim_age": 3600,
    }
    # The filesystem transport has no broadcast; workers need no remote control.
    CELERY_WORKER_ENABLE_REMOTE_CONTROL = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
# A web request sends after its write committed; with the broker down it gives up within about
# two seconds (webapp/broker.py records what was not sent, and the schedule re-sends it).
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "generation"
CELERY_TASK_ROUTES = {
    "webapp.training.tasks.*": {"queue": "training"},
    "webapp.rewards.tasks.*": {"queue": "training"},
    "webapp.policies.tasks.*": {"queue": "training"},
    "webapp.annotation.tasks.*": {"queue": "generation"},
}
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = TIME_ZONE

REWARDLOOP_TRAIN_INTERVAL_S = int(os.environ.get("REWARDLOOP_TRAIN_INTERVAL_S", "300"))
REWARDLOOP_POOL_INTERVAL_S = int(os.environ.get("REWARDLOOP_POOL_INTERVAL_S", "30"))
REWARDLOOP_API_RATE = os.environ.get("REWARDLOOP_API_RATE", "600/m")
# OpenAI-compatible serving (/v1/): where the inference process listens, and the caps on one request.
REWARDLOOP_INFERENCE_PORT = int(os.environ.get("REWARDLOOP_INFERENCE_PORT") or "8001")
REWARDLOOP_INFERENCE_URL = os.environ.get("REWARDLOOP_INFERENCE_URL") or f"http://127.0.0.1:{REWARDLOOP_INFERENCE_PORT}"
REWARDLOOP_SERVE_MAX_BODY_BYTES = int(os.environ.get("REWARDLOOP_SERVE_MAX_BODY_BYTES", str(1 << 20)))
REWARDLOOP_SERVE_MAX_PROMPT_CHARS = int(os.environ.get("REWARDLOOP_SERVE_MAX_PROMPT_CHARS", "16000"))
REWARDLOOP_SERVE_MAX_TOKENS = int(os.environ.get("REWARDLOOP_SERVE_MAX_TOKENS", "512"))
REWARDLOOP_SERVE_MAX_N = int(os.environ.get("REWARDLOOP_SERVE_MAX_N", "8"))
REWARDLOOP_SERVE_TIMELINE_LEN = int(os.environ.get("REWARDLOOP_SERVE_TIMELINE_LEN", "4096"))
REWARDLOOP_TORCH_THREADS = int(os.environ.get("REWARDLOOP_TORCH_THREADS", "0"))
REWARDLOOP_WORKER_POOLS = int(os.environ.get("REWARDLOOP_WORKER_POOLS", "2"))
# A worker child is replaced after this many tasks, or after a task that leaves it above
# this RSS, so memory a task kept (a failed task's traceback, torch's allocator, heap
# fragmentation) goes back to the system; the new child reloads its model (~2 s). 0: never.
# bench/worker_rss.py measures both.
CELERY_WORKER_MAX_TASKS_PER_CHILD = int(os.environ.get("REWARDLOOP_WORKER_MAX_TASKS_PER_CHILD", "100")) or None
CELERY_WORKER_MAX_MEMORY_PER_CHILD = (  # KiB, as Celery counts it
    int(os.environ.get("REWARDLOOP_WORKER_MAX_MEMORY_PER_CHILD_MB", "3072")) * 1024 or None
)
REWARDLOOP_MODELS_DIR = Path(os.environ.get("REWARDLOOP_MODELS_DIR", DATA_DIR / "models")).resolve()
# Finished version downloads (zipped Hugging Face folders, one per exported version).
REWARDLOOP_EXPORTS_DIR = DATA_DIR / "exports"
# This machine's copies of artifacts fetched from a remote storage (and a training worker's
# working folder): never shared between machines.
REWARDLOOP_CACHE_DIR = Path(os.environ.get("REWARDLOOP_CACHE_DIR", DATA_DIR / "cache")).resolve()

# Artifacts (webapp.policies.artifacts): local folders by default, one S3-compatible bucket
# when REWARDLOOP_S3_BUCKET is set (credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
# or any other source boto3 reads).
_LOCAL_ARTIFACTS = "webapp.policies.artifacts.LocalArtifactStorage"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "models": {"BACKEND": _LOCAL_ARTIFACTS, "OPTIONS": {"setting": "REWARDLOOP_MODELS_DIR"}},
    "exports": {"BACKEND": _LOCAL_ARTIFACTS, "OPTIONS": {"setting": "REWARDLOOP_EXPORTS_DIR"}},
    "plots": {"BACKEND": _LOCAL_ARTIFACTS, "OPTIONS": {"setting": "DATA_DIR", "subdir": "plots"}},
}
REWARDLOOP_S3_BUCKET = os.environ.get("REWARDLOOP_S3_BUCKET", "")
if REWARDLOOP_S3_BUCKET:
    _s3 = {
        "bucket_name": REWARDLOOP_S3_BUCKET,
        "endpoint_url": os.environ.get("REWARDLOOP_S3_ENDPOINT_URL") or None,
        "region_name": os.environ.get("REWARDLOOP_S3_REGION") or None,
        "file_overwrite": True,
        "querystring_auth": False,
    }
    _prefix = os.environ.get("REWARDLOOP_S3_PREFIX", "").strip("/")
    for _kind in ("models", "exports", "plots"):
        STORAGES[_kind] = {
            "BACKEND": "storages.backends.s3.S3Storage",
            "OPTIONS": {**_s3, "location": f"{_prefix}/{_kind}" if _prefix else _kind},
        }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "webapp": {"handlers": ["console"], "level": os.environ.get("REWARDLOOP_LOG_LEVEL", "INFO")},
        # Tracebacks of 500s reach the console even with DEBUG off.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}

# Prompt import caps (``manage.py import_prompts``; a file over one is rejected, nothing stored).
# The import streams the file, so memory does not grow with these; they bound time and database size.
REWARDLOOP_IMPORT_MAX_BYTES = int(os.environ.get("REWARDLOOP_IMPORT_MAX_BYTES", str(256 * 1024 * 1024)))
REWARDLOOP_IMPORT_MAX_LINES = int(os.environ.get("REWARDLOOP_IMPORT_MAX_LINES", "1000000"))
REWARDLOOP_IMPORT_MAX_LINE_BYTES = int(os.environ.get("REWARDLOOP_IMPORT_MAX_LINE_BYTES", "65536"))

# Learning and generation settings whose defaults live beside the code that reads them
# (rewards/services.py, training/reward_batch.py, training/overoptimisation.py,
# annotation/services.py): set here only when the environment names them, so the README's table
# of variables holds for these too.
for _name, _type in (
    ("REWARDLOOP_RM_MIN_JUDGMENTS", int),
    ("REWARDLOOP_RM_FRESH_PROMPTS", int),
    ("REWARDLOOP_RM_TRUST_MIN_WEIGHT", float),
    ("REWARDLOOP_GUARD_MIN_HUMAN", int),
    ("REWARDLOOP_GUARD_RM_GAP", float),
    ("REWARDLOOP_GENERATION_BATCH", int),
):
    if os.environ.get(_name, "").strip():
        try:
            globals()[_name] = _type(os.environ[_name])
        except ValueError:
            raise ImproperlyConfigured(
                f"{_name}={os.environ[_name]!r} is not {'an integer' if _type is int else 'a number'}"
            ) from None
if globals().get("REWARDLOOP_GENERATION_BATCH", 1) < 1:
    raise ImproperlyConfigured(f"REWARDLOOP_GENERATION_BATCH={os.environ['REWARDLOOP_GENERATION_BATCH']!r} is below 1")
