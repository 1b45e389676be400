"""The HatCat API on Ray Serve: one ingress in front of N model replicas, the same code on a laptop or a cluster.

    python -m hatcat.serve_ray [--replicas 2 | --min-replicas 1 --max-replicas 4] [--session-affinity]
                               [--no-workbench] [--address auto] [--gpus-per-replica 1]

Deployments (one Serve application, HTTP on HATCAT_HOST:HATCAT_PORT):

- `Model` (N replicas): each loads one Engine (model + probe pack) and runs the same FastAPI app as
  `python app.py` (`hatcat.api.create_api`): the same routes, errors, auth, limits and `/health` +
  `/metrics` of its own. A replica holds no session state: the steerings live in the session store
  (`HATCAT_SESSION_STORE=redis://...`, which several replicas need) and travel with each request.
- `Workbench` (one replica, unless `--no-workbench`): the Gradio workbench on an Engine of its own.
  Gradio's queue keeps per-client state between its `join` and `data` calls, so the UI is one replica.
- `Ingress`: takes every HTTP request and forwards it, as ASGI messages, to a replica through a
  deployment handle — `/v1/*`, `/health` and `/metrics` to `Model`, the rest to `Workbench` — and
  streams the answer back with an `X-HatCat-Replica` header naming the replica that answered.
  When a replica dies mid-stream, an event stream ends with the API's error event
  (`data: {"error": {..., "code": "replica_failed"}}` then `data: [DONE]`); the next request goes
  to a live replica (and Serve starts a replacement).

Optional session affinity (`--session-affinity`): requests carrying a session (`X-Session-Id`, or
`session_id` in the body or query) go to the replica Ray's experimental `ConsistentHashRouter`
picks for it — a warm-cache hint, never needed for correctness (the router spills under load and
remaps when replicas come and go). Per replica, Serve checks health (`Model.check_health`) and Ray
exports its `ray_serve_*` metrics with a `replica` label; HatCat's own `/metrics` answer comes from
the replica named in `X-HatCat-Replica`.

Without `--address` Ray starts locally (fractional CPUs per replica, as on a 2-core machine);
`--address auto` joins a running cluster (`ray start --head` / KubeRay), where `--gpus-per-replica 1`
gives each model replica a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from hatcat.config import SCALE_EXTRA, Settings, require_package
from hatcat.errors import HatCatError, InvalidValue

APP_NAME = "hatcat"
MODEL_PATHS = ("/v1/", "/v1", "/health", "/metrics")
SESSION_HEADER = "x-session-id"
REPLICA_HEADER = "x-hatcat-replica"
log = logging.getLogger("hatcat.serve_ray")


class AsgiReplica:
    """A replica that runs an ASGI app of its own and answers forwarded requests as ASGI messages."""

    app: Any

    async def _started(self) -> None:
        """Run the app's lifespan startup once (Gradio starts its queue there)."""
        if getattr(self, "_lifespan", None) is not None:
            return
        self._lifespan = asyncio.get_running_loop().create_future()
        inbox: asyncio.Queue[dict] = asyncio.Queue()
        await inbox.put({"type": "lifespan.startup"})

        async def send(message: dict) -> None:
            if message["type"].startswith("lifespan.startup") and not self._lifespan.done():
                self._lifespan.set_result(message)

        self._lifespan_task = asyncio.create_task(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, send)
        )
        self._lifespan_task.add_done_callback(
            lambda _: self._lifespan.done() or self._lifespan.set_result({"type": "lifespan.startup.complete"})
        )
        await self._lifespan

    async def forward(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[dict[str, Any]]:
        """The app's ASGI messages for one request. Cancelling the stream (the client went away)
        is a disconnect for the app: a generation stops at its next step."""
        await self._started()
        messages: asyncio.Queue[dict | None] = asyncio.Queue()
        gone = asyncio.Event()
        sent_body = False

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        task = asyncio.create_task(self.app(scope, receive, messages.put))
        task.add_done_callback(lambda _: messages.put_nowait(None))
        try:
            while (message := await messages.get()) is not None:
                if message["type"] == "http.response.start":
                    message = {
                        **message,
                        "headers": [*message.get("headers", []), (REPLICA_HEADER.encode(), self.name.encode())],
                    }
                yield message
            task.result()  # raises what the app raised past its own error handling
        finally:
            gone.set()
            if not task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(task), timeout=5)
                except TimeoutError:
                    task.cancel()

    @property
    def name(self) -> str:
        from ray import serve

        return serve.get_replica_context().replica_id.to_full_id_str()


class Model(AsgiReplica):
    """One Engine and the API app on it."""

    def __init__(self, settings: Settings) -> None:
        from hatcat.api import create_api
        from hatcat.engine import Engine

        self.engine = Engine.from_settings(settings)
        self.app = create_api(self.engine)

    def check_health(self) -> None:
        """Serve calls this every 10 s (and the replica's actor must answer at all); a replica whose
        engine raises here is marked unhealthy and replaced."""
        self.engine.info()


class Workbench(AsgiReplica):
    """The Gradio workbench (and the API) on an Engine of its own: one replica."""

    def __init__(self, settings: Settings) -> None:
        from app import build_app
        from hatcat.engine import Engine

        self.app = build_app(Engine.from_settings(settings))


class Ingress:
    """Forwards each HTTP request to a Model (or the Workbench) replica and streams the answer back."""

    def __init__(self, model: Any, workbench: Any | None, max_body_bytes: int, session_affinity: bool) -> None:
        self.model, self.workbench = model, workbench
        self.max_body_bytes, self.session_affinity = max_body_bytes, session_affinity

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import StreamingResponse

        from hatcat.api.errors import error_response

        body = await self._body(request)
        scope = _forwarded_scope(request.scope)
        model = self.workbench is None or request.url.path.startswith(MODEL_PATHS)
        handle = (self.model if model else self.workbench).options(stream=True)
        session = _session(request, body) if self.session_affinity and model else None
        if session:
            handle = handle.options(session_id=session)
        stream = handle.forward.remote(scope, body)
        try:
            start = await stream.__anext__()
        except Exception as err:  # noqa: BLE001 - the replica died or could not be reached
            log.warning("replica failed before answering: %r", err)
            return error_response(503, f"the model replica failed: {_reason(err)}; retry", code="replica_failed")
        raw_headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", [])]
        event_stream = any(k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in raw_headers)
        response = StreamingResponse(_body_chunks(stream, event_stream), status_code=start["status"])
        response.raw_headers = raw_headers  # as the replica sent them (repeated headers included)
        return response

    async def _body(self, request: Any) -> bytes:
        """The request body, cut at one byte past the cap (the replica's limits then answer 413)."""
        chunks, size = [], 0
        async for chunk in request.stream():
            chunks.append(chunk)
            size += len(chunk)
            if size > self.max_body_bytes:
                break
        return b"".join(chunks)[: self.max_body_bytes + 1]


async def _body_chunks(stream: Any, event_stream: bool) -> AsyncIterator[bytes]:
    """The body messages' bytes; if the replica dies mid-stream, an event stream ends with an error event."""
    try:
        async for message in stream:
            if message["type"] != "http.response.body":
                continue
            if message.get("body"):
                yield message["body"]
            if not message.get("more_body", False):
                return  # the response is complete
    except Exception as err:  # noqa: BLE001 - the replica died mid-stream: say so in the stream's own terms
        log.warning("replica failed mid-stream: %r", err)
        if event_stream:
            from hatcat.api.errors import error_body

            failure = error_body(503, f"the model replica failed mid-stream: {_reason(err)}", code="replica_failed")
            yield f"data: {json.dumps(failure)}\n\ndata: [DONE]\n\n".encode()
    finally:
        stream.cancel()


def _reason(err: BaseException) -> str:
    return str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__


def _forwarded_scope(scope: dict[str, Any]) -> dict[str, Any]:
    """The picklable part of an HTTP scope (no app, router or state objects)."""
    keep = (
        "type",
        "http_version",
        "method",
        "scheme",
        "path",
        "raw_path",
        "query_string",
        "headers",
        "client",
        "server",
    )
    forwarded = {k: scope[k] for k in keep if k in scope}
    forwarded["headers"] = [(bytes(k), bytes(v)) for k, v in scope.get("headers", [])]
    return {**forwarded, "asgi": {"version": "3.0"}, "root_path": ""}


def _session(request: Any, body: bytes) -> str | None:
    """The request's session: the X-Session-Id header, else `session_id` in the query or the JSON body."""
    if request.headers.get(SESSION_HEADER):
        return request.headers[SESSION_HEADER]
    if session := parse_qs(request.url.query).get("session_id"):
        return session[0]
    try:
        value = json.loads(body) if body else None
    except ValueError:
        return None
    return value.get("session_id") if isinstance(value, dict) and isinstance(value.get("session_id"), str) else None


@dataclasses.dataclass(frozen=True)
class Scale:
    """How many model replicas and what each takes; fixed (`replicas`) or autoscaled (min..max)."""

    replicas: int | None = 2
    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 4
    cpus_per_replica: float = 0.5
    gpus_per_replica: float = 0
    session_affinity: bool = False
    workbench: bool = True


def build(settings: Settings, scale: Scale) -> Any:
    """The Serve application: Ingress -> Model (N replicas) [+ Workbench]."""
    from ray import serve

    model_options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": scale.cpus_per_replica, "num_gpus": scale.gpus_per_replica},
        "max_ongoing_requests": settings.max_batch + settings.max_queue,
        "health_check_period_s": 10,
    }
    if scale.replicas is None:
        model_options["autoscaling_config"] = {
            "min_replicas": scale.min_replicas,
            "max_replicas": scale.max_replicas,
            "target_ongoing_requests": scale.target_ongoing_requests,
        }
    else:
        model_options["num_replicas"] = scale.replicas
    if scale.session_affinity:
        from ray.serve.config import RequestRouterConfig
        from ray.serve.experimental.consistent_hash_router import ConsistentHashRouter

        model_options["request_router_config"] = RequestRouterConfig(request_router_class=ConsistentHashRouter)
    model = serve.deployment(Model, name="Model", **model_options).bind(settings)
    workbench = None
    if scale.workbench:
        workbench = serve.deployment(
            Workbench,
            name="Workbench",
            num_replicas=1,
            max_ongoing_requests=256,
            ray_actor_options={"num_cpus": scale.cpus_per_replica, "num_gpus": scale.gpus_per_replica},
        ).bind(settings)
    ingress = serve.deployment(Ingress, name="Ingress", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
    return ingress.bind(model, workbench, settings.max_body_bytes, scale.session_affinity)


def app(args: dict[str, Any]) -> Any:
    """Application builder for a Serve config file (`import_path: hatcat.serve_ray:app`, KubeRay's
    `serveConfigV2`): settings from the environment, `args` as `Scale`'s fields."""
    from hatcat.store import Store

    settings = Settings.from_env()
    Store(settings.db_url)
    fields = [f.name for f in dataclasses.fields(Scale)]
    unknown = sorted(set(args) - set(fields))
    if unknown:
        raise InvalidValue(f"unknown application args: {', '.join(unknown)}; allowed: {', '.join(fields)}")
    return build(settings, Scale(**args))


def deploy(settings: Settings, scale: Scale, blocking: bool = False) -> None:
    """Start Serve's HTTP proxy on HATCAT_HOST:HATCAT_PORT and run the application on the current
    Ray cluster (`ray.init` first). The record store is opened (migrated) once here, not by every replica."""
    from ray import serve

    from hatcat.store import Store

    Store(settings.db_url)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(build(settings, scale), name=APP_NAME, route_prefix="/", blocking=blocking)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hatcat.serve_ray", description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default=None, help="Ray cluster to join (auto, ray://head:10001); unset: local")
    parser.add_argument("--replicas", type=int, default=None, help="fixed number of model replicas (default 2)")
    parser.add_argument("--min-replicas", type=int, default=None, help="autoscale: fewest model replicas")
    parser.add_argument("--max-replicas", type=int, default=None, help="autoscale: most model replicas")
    parser.add_argument(
        "--target-ongoing-requests", type=float, default=4, help="autoscale: requests per replica to aim for"
    )
    parser.add_argument("--cpus-per-replica", type=float, default=0.5, help="CPUs Ray reserves per replica")
    parser.add_argument("--gpus-per-replica", type=float, default=0, help="GPUs per replica (1 on GPU workers)")
    parser.add_argument("--session-affinity", action="store_true", help="route a session to one replica when it can")
    parser.add_argument("--no-workbench", action="store_true", help="serve the API only (no Gradio replica)")
    args = parser.parse_args(argv)
    try:
        autoscale = args.min_replicas is not None or args.max_replicas is not None
        if autoscale and args.replicas is not None:
            raise InvalidValue("give --replicas or --min-replicas/--max-replicas, not both")
        scale = Scale(
            replicas=None if autoscale else (2 if args.replicas is None else args.replicas),
            min_replicas=1 if args.min_replicas is None else args.min_replicas,
            max_replicas=max(args.min_replicas or 1, 4) if args.max_replicas is None else args.max_replicas,
            target_ongoing_requests=args.target_ongoing_requests,
            cpus_per_replica=args.cpus_per_replica,
            gpus_per_replica=args.gpus_per_replica,
            session_affinity=args.session_affinity,
            workbench=not args.no_workbench,
        )
        if scale.replicas is not None and scale.replicas < 1:
            raise InvalidValue("--replicas must be >= 1")
        if scale.min_replicas < 0 or scale.max_replicas < max(scale.min_replicas, 1):
            raise InvalidValue("autoscaling needs 0 <= --min-replicas <= --max-replicas and --max-replicas >= 1")
        if scale.cpus_per_replica <= 0 or scale.gpus_per_replica < 0:
            raise InvalidValue("--cpus-per-replica must be > 0 and --gpus-per-replica >= 0")
        require_package("ray", "python -m hatcat.serve_ray", SCALE_EXTRA)
        settings = Settings.from_env()
        if settings.session_store is None and (scale.replicas or scale.max_replicas) > 1:
            print(
                "hatcat: warning: HATCAT_SESSION_STORE is unset, so each replica keeps its own steerings; "
                "set it to a redis:// URL",
                file=sys.stderr,
            )
        import ray

        ray.init(address=args.address, include_dashboard=False, logging_level="WARNING")
        deploy(settings, scale, blocking=True)
    except HatCatError as err:
        print(f"hatcat: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
