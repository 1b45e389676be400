"""Settings: the one place that reads the environment.

Every `HATCAT_*` variable (and `HF_HUB_OFFLINE`) is parsed here into a frozen `Settings`.
A bad value raises `ConfigError` whose message is one line naming the variable and what
is allowed; `app.py` prints it and exits with status 2.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hatcat import paths
from hatcat.errors import HatCatError

EMBEDDED_DEFAULT = "embedded:gemma-3-270m"
DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")
SCALE_EXTRA = "pip install 'hatcat[scale]' (or pip install -r requirements-scale.txt)"
POSTGRES_EXTRA = "pip install 'psycopg[binary]' (in requirements-dev.txt)"


class ConfigError(HatCatError, ValueError):
    """A setting has a value HatCat cannot use; the message is one line."""

    code = "invalid_setting"


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one HatCat process."""

    model_name: str = EMBEDDED_DEFAULT
    host: str = "127.0.0.1"
    port: int = 8765
    base_layers: tuple[int, ...] = (0,)
    keep_top_k: int = 100
    probe_pack: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: Path = paths.CACHE
    probes_dir: Path = paths.PROBES
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_tokens: int = 2048
    default_max_tokens: int = 128  # a chat request without max_tokens (OpenWebUI sends none) stops here
    max_batch: int = 8
    max_queue: int = 64
    hf_offline: bool = False
    auto_train: bool = False  # no pack for the model: train the full pack in the background at start
    auto_train_limit: int | None = None  # train at most this many concepts (a quick check of the path)
    users_file: Path | None = None
    db: str | None = None  # a SQLAlchemy URL or a SQLite file path; None: <cache dir>/hatcat.db
    max_body_bytes: int = 1_048_576
    rate_limit: int = 120  # requests per minute per key (with access control); 0 = off
    max_streams: int = 4  # concurrent streamed chat completions per key; 0 = off
    auth_failures: int = 5  # failed authentications per minute per client address and per key id; 0 = off
    session_store: str | None = None  # a redis:// URL: steering per session shared by replicas; None: in-process

    @property
    def access_control(self) -> bool:
        """Whether the workbench and /v1 need a login or a key."""
        return self.users_file is not None or self.api_key is not None

    @property
    def db_url(self) -> str:
        """The record store's SQLAlchemy URL (SQLite under the cache dir unless HATCAT_DB says otherwise)."""
        if self.db and "://" in self.db:
            return self.db
        return f"sqlite:///{Path(self.db).expanduser() if self.db else self.cache_dir / 'hatcat.db'}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse settings from `environ` (default: the process environment)."""
        env = os.environ if environ is None else environ
        get = lambda name: (env.get(name) or "").strip()
        defaults = cls()
        # Hugging Face Spaces (and other hosts) give the port as GRADIO_SERVER_PORT or PORT
        port_var = next((n for n in ("HATCAT_PORT", "GRADIO_SERVER_PORT", "PORT") if get(n)), "HATCAT_PORT")
        return cls(
            model_name=get("HATCAT_MODEL_NAME") or defaults.model_name,
            host=get("HATCAT_HOST") or get("GRADIO_SERVER_NAME") or defaults.host,
            port=_int(port_var, get(port_var), defaults.port, 1, 65535),
            base_layers=_layers("HATCAT_BASE_LAYERS", get("HATCAT_BASE_LAYERS"), defaults.base_layers),
            keep_top_k=_int("HATCAT_KEEP_TOP_K", get("HATCAT_KEEP_TOP_K"), defaults.keep_top_k, 1, 100_000),
            probe_pack=get("HATCAT_PROBE_PACK") or None,
            device=_device(get("HATCAT_DEVICE") or defaults.device),
            dtype=_choice("HATCAT_DTYPE", get("HATCAT_DTYPE") or defaults.dtype, DTYPES),
            cache_dir=Path(get("HATCAT_CACHE_DIR")).expanduser() if get("HATCAT_CACHE_DIR") else defaults.cache_dir,
            probes_dir=Path(get("HATCAT_PROBES_DIR")).expanduser() if get("HATCAT_PROBES_DIR") else defaults.probes_dir,
            api_key=get("HATCAT_API_KEY") or None,
            cors_origins=_origins("HATCAT_CORS_ORIGINS", get("HATCAT_CORS_ORIGINS")),
            max_tokens=_int("HATCAT_MAX_TOKENS", get("HATCAT_MAX_TOKENS"), defaults.max_tokens, 1, 1_000_000),
            default_max_tokens=_int(
                "HATCAT_DEFAULT_MAX_TOKENS", get("HATCAT_DEFAULT_MAX_TOKENS"), defaults.default_max_tokens, 1, 1_000_000
            ),
            max_batch=_int("HATCAT_MAX_BATCH", get("HATCAT_MAX_BATCH"), defaults.max_batch, 1, 256),
            max_queue=_int("HATCAT_MAX_QUEUE", get("HATCAT_MAX_QUEUE"), defaults.max_queue, 0, 100_000),
            hf_offline=_bool("HF_HUB_OFFLINE", get("HF_HUB_OFFLINE"), defaults.hf_offline),
            auto_train=_bool("HATCAT_AUTO_TRAIN", get("HATCAT_AUTO_TRAIN"), defaults.auto_train),
            auto_train_limit=_int("HATCAT_AUTO_TRAIN_LIMIT", get("HATCAT_AUTO_TRAIN_LIMIT"), 0, 1, 1_000_000)
            if get("HATCAT_AUTO_TRAIN_LIMIT")
            else None,
            users_file=Path(get("HATCAT_USERS_FILE")).expanduser() if get("HATCAT_USERS_FILE") else None,
            db=_db("HATCAT_DB", get("HATCAT_DB")),
            max_body_bytes=_int(
                "HATCAT_MAX_BODY_BYTES", get("HATCAT_MAX_BODY_BYTES"), defaults.max_body_bytes, 1024, 1 << 30
            ),
            rate_limit=_int("HATCAT_RATE_LIMIT", get("HATCAT_RATE_LIMIT"), defaults.rate_limit, 0, 1_000_000),
            max_streams=_int("HATCAT_MAX_STREAMS", get("HATCAT_MAX_STREAMS"), defaults.max_streams, 0, 10_000),
            auth_failures=_int(
                "HATCAT_AUTH_FAILURES", get("HATCAT_AUTH_FAILURES"), defaults.auth_failures, 0, 1_000_000
            ),
            session_store=_session_store("HATCAT_SESSION_STORE", get("HATCAT_SESSION_STORE")),
        )


def require_package(module: str, needed_by: str, install: str) -> None:
    """Refuse (one line naming what to install) when an optional `module` that `needed_by` uses is missing."""
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{needed_by} needs the {module!r} package, which is not installed: {install}")


def _int(name: str, raw: str, default: int, low: int, high: int) -> int:
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer; allowed: {low}..{high}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={raw!r} is out of range; allowed: {low}..{high}")
    return value


def _layers(name: str, raw: str, default: tuple[int, ...]) -> tuple[int, ...]:
    if not raw:
        return default
    try:
        layers = tuple(sorted({int(part) for part in raw.split(",") if part.strip()}))
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is invalid; allowed: comma-separated layer numbers 0..5, e.g. 0,1") from None
    if not layers or any(not 0 <= layer <= 5 for layer in layers):
        raise ConfigError(f"{name}={raw!r} is invalid; allowed: comma-separated layer numbers 0..5, e.g. 0,1")
    return layers


def _origins(name: str, raw: str) -> tuple[str, ...]:
    """Comma-separated origins (`scheme://host[:port]`), or `*` alone for any origin."""
    origins = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    if "*" in origins and len(origins) > 1:
        raise ConfigError(
            f"{name}={raw!r} is invalid; allowed: * alone, or comma-separated origins like https://chat.example.org"
        )
    if any(o != "*" and not (o.startswith(("http://", "https://")) and o.split("://", 1)[1]) for o in origins):
        raise ConfigError(
            f"{name}={raw!r} is invalid; allowed: * alone, or comma-separated origins like https://chat.example.org"
        )
    return origins


def _session_store(name: str, raw: str) -> str | None:
    """Unset: in-process; else a Redis URL (`redis://`, `rediss://` or `unix://`)."""
    if not raw:
        return None
    if not raw.startswith(("redis://", "rediss://", "unix://")) or not raw.split("://", 1)[1]:
        raise ConfigError(
            f"{name}={raw!r} is invalid; allowed: unset (in-process) or a Redis URL like redis://host:6379/0"
        )
    require_package("redis", name, SCALE_EXTRA)
    return raw


def _db(name: str, raw: str) -> str | None:
    """Unset: SQLite under the cache dir; a file path (SQLite); or a SQLAlchemy URL whose driver is installed."""
    if raw.startswith("postgresql"):
        driver = raw.split("://", 1)[0].partition("+")[2] or "psycopg2"
        require_package(driver, name, POSTGRES_EXTRA if driver == "psycopg" else f"pip install {driver}")
    return raw or None


def _choice(name: str, raw: str, allowed: tuple[str, ...]) -> str:
    if raw.lower() not in allowed:
        raise ConfigError(f"{name}={raw!r} is invalid; allowed: {', '.join(allowed)}")
    return raw.lower()


def _device(raw: str) -> str:
    """`auto`, `cpu`, `mps`, `cuda` or `cuda:N`."""
    base, _, index = raw.lower().partition(":")
    if base in DEVICES and (not index or (base == "cuda" and index.isdigit())):
        return raw.lower()
    raise ConfigError(f"HATCAT_DEVICE={raw!r} is invalid; allowed: auto, cpu, cuda, cuda:N, mps")


def _bool(name: str, raw: str, default: bool) -> bool:
    if not raw:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is invalid; allowed: 1, 0, true, false, yes, no, on, off")
