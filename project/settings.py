"""Ticket Enhancer settings: every value comes from the environment, with safe local defaults."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from project.envparse import llm_prices, not_negative, time_zone

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# A local `.env` is a convenience for `make run`; real deployments set the environment.
if (BASE_DIR / ".env").is_file():
    env.read_env(BASE_DIR / ".env")


def secret(name: str, default: str = "") -> str:
    """Return a secret from `<NAME>` or from the file named by `<NAME>_FILE`."""
    path = os.environ.get(f"{name}_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise ImproperlyConfigured(f"{name}_FILE={path} cannot be read: {exc}") from exc
    return env.str(name, default=default)


DEBUG = env.bool("DEBUG", default=False)
# The django-insecure- prefix makes `check --deploy` flag a production run that forgot SECRET_KEY.
_DEV_SECRET_KEY = "django-insecure-local-development-key-change-me-in-production-0123456789"  # noqa: S105 - local default; production sets SECRET_KEY
SECRET_KEY = secret("SECRET_KEY", _DEV_SECRET_KEY)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
# In Kubernetes, Prometheus scrapes /metrics by pod IP (the Host header is that IP); the downward API
# passes it as POD_IP.
if env.str("POD_IP", default=""):
    ALLOWED_HOSTS.append(env.str("POD_IP"))
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_q",
    "axes",
    "tickets",
    "clusters",
    "enhancements",
]

MIDDLEWARE = [
    "project.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    # Last, as django-axes asks: it turns a lockout raised during authentication into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

# --- Content-Security-Policy (django-csp; Django 5.2 has none built in) ------------------------------------
# The admin and our templates load scripts and styles from our own static files only. Inline style attributes
# (Django's admin templates and ours use them) need 'unsafe-inline' for styles; scripts never get it. The API
# docs pages (Swagger UI / ReDoc) start with an inline script, so they are left out of the policy.
CONTENT_SECURITY_POLICY = {
    "EXCLUDE_URL_PREFIXES": ["/api/v1/docs/", "/api/v1/redoc/"],
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'", "'unsafe-inline'"],
        "img-src": ["'self'", "data:"],
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    },
}

# --- login protection (django-axes) ---------------------------------------------------------------
# Wrong passwords for one user from one address lock that pair out for a while; a lockout by user alone
# would let anyone lock a support lead out, by address alone would lock out an office behind one NAT.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("LOGIN_LOCKOUT_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "project.clientip.client_ip"
# Log who failed from where (axes masks both by default); the password is never logged.
AXES_SENSITIVE_PARAMETERS: list[str] = []
# No "AXES: BEGIN ..." banner in every process's log at start-up; failures and lockouts are still logged.
AXES_VERBOSE = False
# Proxies in front of gunicorn that append to X-Forwarded-For (1 behind the Kubernetes ingress, 0 when
# gunicorn is reached directly); the client address is the entry that many places from the right.
TRUSTED_PROXY_HOPS = env.int("TRUSTED_PROXY_HOPS", default=0)

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

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
        },
    },
]

# --- Database -------------------------------------------------------------------------------
_db_url = secret("DATABASE_URL", f"sqlite:///{BASE_DIR / 'var' / 'db.sqlite3'}")
DATABASES = {"default": env.db_url_config(_db_url)}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    if _db["NAME"] != ":memory:":
        # Owner-only: the file holds every tenant's tickets (and encrypted secrets). SQLite gives its -wal and
        # -shm files the main file's permissions.
        _db_file = Path(_db["NAME"])
        _db_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if _db_file.parent == BASE_DIR / "var":
            _db_file.parent.chmod(0o700)
        if not _db_file.exists():
            os.close(os.open(_db_file, os.O_CREAT | os.O_WRONLY, 0o600))
        elif _db_file.stat().st_mode & 0o077 and _db_file.stat().st_uid == os.getuid():
            _db_file.chmod(0o600)
    # A file, not memory, so the end-to-end tests' server and worker processes share it; beside the
    # configured database and one per test run, so concurrent runs on one machine never share it.
    _db["TEST"] = {"NAME": str(Path(_db["NAME"]).parent / f"test-db-{os.getpid()}.sqlite3")}
    # WAL lets the web server read while the worker writes; busy timeout absorbs short locks.
    _db.setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
        }
    )
else:
    _db["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    _db["CONN_HEALTH_CHECKS"] = True
    _db.setdefault("OPTIONS", {}).setdefault("connect_timeout", env.int("DB_CONNECT_TIMEOUT", default=3))
    _db["TEST"] = {"NAME": f"test_{_db['NAME']}_{os.getpid()}"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis, cache and the task queue ---------------------------------------------------------
REDIS_URL = secret("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    # The database cache is shared by the web server and the worker (Django-Q keeps its cluster
    # stats in the cache), unlike a per-process local-memory cache.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.db.DatabaseCache",
            "LOCATION": "ticket_enhancer_cache",
        }
    }

Q_TIMEOUT = env.int("Q_TIMEOUT", default=300)
Q_CLUSTER: dict[str, object] = {
    "name": "ticket-enhancer",
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": Q_TIMEOUT,
    # `retry` must exceed `timeout`, or a slow task is handed to a second worker while it runs.
    "retry": Q_TIMEOUT + 60,
    # The Enhancement row is the truth and the sweep re-enqueues lost work, so the broker never
    # redelivers a task by itself: one attempt per enqueue.
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 1000,
    "poll": 0.5,
    "label": "Task queue",
    "sync": env.bool("Q_SYNC", default=False),
}
# Prefetch no more tasks than there are workers: on SIGTERM the cluster still runs what it prefetched. The
# grace period (deploy/k8s: 360 s) covers a running task; a prefetched one cut off by it stays `running`
# and the sweep re-enqueues it (the note marker prevents a second post).
Q_CLUSTER["queue_limit"] = Q_CLUSTER["workers"]
if REDIS_URL:
    # Timeouts so a Redis that accepts connections but never answers cannot hold a webhook for long;
    # the row is committed first and the sweep enqueues it later.
    _sep = "&" if "?" in REDIS_URL else "?"
    Q_CLUSTER["redis"] = (
        REDIS_URL if "socket_timeout" in REDIS_URL else f"{REDIS_URL}{_sep}socket_timeout=2&socket_connect_timeout=2"
    )
else:
    Q_CLUSTER["orm"] = "default"

# --- Auth, i18n, static ----------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": (
            "whitenoise.storage.CompressedManifestStaticFilesStorage"
            if env.bool("STATIC_MANIFEST", default=not DEBUG and (STATIC_ROOT / "staticfiles.json").exists())
            else "django.contrib.staticfiles.storage.StaticFilesStorage"
        )
    },
}

# --- Security (TLS ends at the ingress) ------------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SECURE_REDIRECT_EXEMPT = [r"^health$", r"^api/v1/ready$", r"^metrics$"]
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=not DEBUG)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=not DEBUG)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Preloading commits the whole registrable domain (every subdomain, not only this service) to HTTPS in
# browsers and is slow to undo: the domain owner opts in with SECURE_HSTS_PRELOAD=1, so check --deploy
# does not demand it from the service (docs/security.md).
SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- REST framework --------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Our per-tenant API tokens (enhancements.ApiToken); DRF's authtoken app is not installed.
        "enhancements.authentication.TenantTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "project.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Ticket Enhancer API",
    "DESCRIPTION": "Read API for enhancements and feedback.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
}

# --- Product settings ------------------------------------------------------------------------
FIELD_ENCRYPTION_KEY = secret("FIELD_ENCRYPTION_KEY", "")
# When set, /metrics answers only `Authorization: Bearer <token>`; unset, it answers only requests that did not
# come through a reverse proxy (no X-Forwarded-For / X-Real-IP / Forwarded), i.e. a scrape of the pod itself.
METRICS_TOKEN = secret("METRICS_TOKEN", "")
OPENAI_API_KEY = secret("OPENAI_API_KEY", "")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="") or None
OPENAI_MODEL = env.str("OPENAI_MODEL", default="gpt-4o-mini")
LLM_PROVIDER = env.str("LLM_PROVIDER", default="auto")
if LLM_PROVIDER not in {"auto", "openai", "offline"}:
    raise ImproperlyConfigured(f"LLM_PROVIDER must be auto, openai or offline, not {LLM_PROVIDER!r}")
LLM_TIMEOUT = env.float("LLM_TIMEOUT", default=30.0)
LLM_REDACT = env.bool("LLM_REDACT", default=True)
LLM_MAX_TICKET_CHARS = env.int("LLM_MAX_TICKET_CHARS", default=6000)
# The provider's limits for our key, shared by every worker through Redis (enhancements/llm_budget.py); 0 = none.
# Set them a little under the provider's, so the deployment slows down before the provider answers 429.
LLM_REQUESTS_PER_MINUTE = env.int("LLM_REQUESTS_PER_MINUTE", default=0)
LLM_TOKENS_PER_MINUTE = env.int("LLM_TOKENS_PER_MINUTE", default=0)
LLM_BUDGET_BURST_SECONDS = env.float("LLM_BUDGET_BURST_SECONDS", default=1.0)
LLM_BUDGET_MAX_WAIT = env.float("LLM_BUDGET_MAX_WAIT", default=60.0)
LLM_COMPLETION_TOKENS_ESTIMATE = env.int("LLM_COMPLETION_TOKENS_ESTIMATE", default=600)
LLM_BUDGET_MAX_DEFER = env.float("LLM_BUDGET_MAX_DEFER", default=3600.0)  # then the offline note (processing.py)
SDP_TIMEOUT = env.float("SDP_TIMEOUT", default=15.0)
# Each tenant's daily AI budget, unless its own is set (tickets/ai_budget.py, docs/security.md); 0 = unlimited.
LLM_DAILY_TOKEN_BUDGET = env.int("LLM_DAILY_TOKEN_BUDGET", default=2_000_000)
LLM_DAILY_COST_CAP = not_negative("LLM_DAILY_COST_CAP", env.str("LLM_DAILY_COST_CAP", default="0"))
LLM_PRICES = llm_prices(env.str("LLM_PRICES", default="gpt-4o-mini=0.15:0.60"))  # per 1M prompt:completion tokens
LLM_BUDGET_TIMEZONE = time_zone("LLM_BUDGET_TIMEZONE", env.str("LLM_BUDGET_TIMEZONE", default="UTC"))
# Embeddings for the similar-ticket search (tickets/embeddings.py): `local` = the static model shipped in the
# wordllama wheel (no network), `openai` = any OpenAI-compatible /v1/embeddings, `off` = lexical search only.
EMBEDDINGS_PROVIDER = env.str("EMBEDDINGS_PROVIDER", default="local")
if EMBEDDINGS_PROVIDER not in {"local", "openai", "off"}:
    raise ImproperlyConfigured(f"EMBEDDINGS_PROVIDER must be local, openai or off, not {EMBEDDINGS_PROVIDER!r}")
EMBEDDINGS_MODEL = env.str("EMBEDDINGS_MODEL", default="")
# Unset: the LLM's OPENAI_BASE_URL / OPENAI_API_KEY / LLM_TIMEOUT (resolved in tickets/embeddings.py).
EMBEDDINGS_BASE_URL = env.str("EMBEDDINGS_BASE_URL", default="") or None
EMBEDDINGS_API_KEY = secret("EMBEDDINGS_API_KEY", "")
EMBEDDINGS_TIMEOUT = env.float("EMBEDDINGS_TIMEOUT", default=0.0) or None
if EMBEDDINGS_TIMEOUT is not None and EMBEDDINGS_TIMEOUT < 0:
    raise ImproperlyConfigured("EMBEDDINGS_TIMEOUT must be a positive number of seconds")
# The tenants' semantic windows a process keeps (tickets/search/window.py): MB in all (0 = off), TTL in seconds.
SEARCH_WINDOW_CACHE_MB = not_negative("SEARCH_WINDOW_CACHE_MB", env.str("SEARCH_WINDOW_CACHE_MB", "64"), "off")
SEARCH_WINDOW_CACHE_TTL = not_negative("SEARCH_WINDOW_CACHE_TTL", env.str("SEARCH_WINDOW_CACHE_TTL", "60"), "always")
SDP_ALLOW_INSECURE_URLS = env.bool("SDP_ALLOW_INSECURE_URLS", default=False)
WEBHOOK_MAX_BYTES = env.int("WEBHOOK_MAX_BYTES", default=262144)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(WEBHOOK_MAX_BYTES, 2621440)
ENHANCEMENT_MAX_ATTEMPTS = env.int("ENHANCEMENT_MAX_ATTEMPTS", default=5)
ENHANCEMENT_STUCK_AFTER = env.int("ENHANCEMENT_STUCK_AFTER", default=Q_TIMEOUT + 120)
# Each qcluster worker process runs up to this many enhancements at once, in threads: a task waits seconds on
# the LLM and SDP and uses milliseconds of CPU (enhancements/runner.py). 1 runs them in the worker itself.
ENHANCEMENT_THREADS = env.int("ENHANCEMENT_THREADS", default=4)
# A worker beats for its running rows every HEARTBEAT seconds; a running row whose last beat is older than
# DEAD_AFTER belongs to a dead worker and the sweep takes it back. Workers also sweep every SWEEP seconds
# (one of them at a time), so recovery does not wait for the every-minute schedule or a queue backlog.
ENHANCEMENT_HEARTBEAT_SECONDS = env.float("ENHANCEMENT_HEARTBEAT_SECONDS", default=10.0)
ENHANCEMENT_DEAD_AFTER = env.float("ENHANCEMENT_DEAD_AFTER", default=45.0)
ENHANCEMENT_SWEEP_SECONDS = env.float("ENHANCEMENT_SWEEP_SECONDS", default=15.0)
# Base of the exponential backoff (seconds) between attempts of one enhancement.
ENHANCEMENT_RETRY_BASE = env.float("ENHANCEMENT_RETRY_BASE", default=30.0)
ENHANCEMENT_RETRY_MAX = env.float("ENHANCEMENT_RETRY_MAX", default=1800.0)
PUBLIC_BASE_URL = env.str("PUBLIC_BASE_URL", default="http://127.0.0.1:8000")
# /metrics reports time to note over notes posted in this many recent seconds (bounds the rows read).
METRICS_WINDOW_SECONDS = env.int("METRICS_WINDOW_SECONDS", default=3600)

for _name in (
    "WEBHOOK_MAX_BYTES",
    "ENHANCEMENT_MAX_ATTEMPTS",
    "ENHANCEMENT_STUCK_AFTER",
    "Q_TIMEOUT",
    "METRICS_WINDOW_SECONDS",
):
    if globals()[_name] <= 0:
        raise ImproperlyConfigured(f"{_name} must be a positive number")
_counts = (LLM_REQUESTS_PER_MINUTE, LLM_TOKENS_PER_MINUTE, LLM_COMPLETION_TOKENS_ESTIMATE, LLM_DAILY_TOKEN_BUDGET)
if min(_counts) < 0 or not (LLM_BUDGET_BURST_SECONDS > 0 and LLM_BUDGET_MAX_WAIT >= 0):
    raise ImproperlyConfigured(
        "LLM_REQUESTS_PER_MINUTE, LLM_TOKENS_PER_MINUTE, LLM_COMPLETION_TOKENS_ESTIMATE and LLM_DAILY_TOKEN_BUDGET "
        "must not be negative, LLM_BUDGET_BURST_SECONDS must be positive"
    )
if ENHANCEMENT_THREADS < 1 or ENHANCEMENT_HEARTBEAT_SECONDS <= 0 or ENHANCEMENT_SWEEP_SECONDS < 1:
    raise ImproperlyConfigured(
        "ENHANCEMENT_THREADS must be at least 1, ENHANCEMENT_HEARTBEAT_SECONDS positive and "
        "ENHANCEMENT_SWEEP_SECONDS at least 1"
    )
if ENHANCEMENT_DEAD_AFTER < 2 * ENHANCEMENT_HEARTBEAT_SECONDS:
    # One late beat (a busy CPU, a short database blip) must not make a live task look dead.
    raise ImproperlyConfigured("ENHANCEMENT_DEAD_AFTER must be at least twice ENHANCEMENT_HEARTBEAT_SECONDS")
if LLM_TIMEOUT <= 0 or SDP_TIMEOUT <= 0:
    raise ImproperlyConfigured("LLM_TIMEOUT and SDP_TIMEOUT must be positive numbers of seconds")

# --- Logging ---------------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO").upper()
LOG_FORMAT = env.str("LOG_FORMAT", default="console")
if LOG_FORMAT not in {"json", "console"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be json or console, not {LOG_FORMAT!r}")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "project.logging.ContextFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s %(enhancement_id)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        },
        "console": {"format": "%(asctime)s %(levelname)-7s %(name)s [%(request_id)s %(enhancement_id)s] %(message)s"},
    },
    "handlers": {
        "stderr": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]},
    },
    "root": {"handlers": ["stderr"], "level": LOG_LEVEL},
    "loggers": {
        "django": {"level": LOG_LEVEL},
        "django.db.backends": {"level": "INFO"},
        # Request lines and connection traces are noise; openai >= 3 ships its own copies (httpx2, httpcore2).
        "httpx": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
        "openai": {"level": "WARNING"},
    },
}
