"""The HTTP front: a Starlette app over a `Service`, served by uvicorn.

Endpoints: `POST /v1/generate`, `POST /v1/score`, `GET /v1/prompts`,
`GET /healthz`, `GET /metrics` (Prometheus text). A refused request gets a
JSON body `{"error": {"status", "kind", "field", "message", ...}}`; an
unexpected failure gets a 500 with the same shape, and the server goes on.
The worker thread starts and stops with the app's lifespan.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import AsyncIterator, Awaitable, Callable, Iterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from spot.serve.requests import RequestError, parse_json
from spot.serve.service import Service


def _error_response(e: RequestError) -> JSONResponse:
  return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _endpoint(service: Service, name: str,
              handle: Callable[[Request], Awaitable[dict]]) -> Callable:
  """Wraps a handler: JSON out, errors as JSON bodies, requests and latency counted."""

  async def endpoint(request: Request) -> Response:
    start = time.perf_counter()
    try:
      response: Response = JSONResponse(await handle(request))
    except RequestError as e:
      service.metrics.errors.labels(e.kind).inc()
      response = _error_response(e)
    except Exception as e:  # pylint: disable=broad-except
      service.metrics.errors.labels("internal").inc()
      response = _error_response(RequestError(
          500, "internal", None, f"the server failed on this request ({type(e).__name__}: "
          f"{e}); it keeps serving: retry, and report it if it persists."))
    service.metrics.requests.labels(name, str(response.status_code)).inc()
    service.metrics.latency.labels(name).observe(time.perf_counter() - start)
    return response

  return endpoint


def create_app(service: Service) -> Starlette:
  """The Starlette app of `service` (which it starts and stops with its lifespan)."""

  async def generate(request: Request) -> dict:
    return await service.generate(parse_json(await request.body()))

  async def score(request: Request) -> dict:
    return await service.score(parse_json(await request.body()))

  async def prompts(request: Request) -> dict:
    del request
    return await service.prompts()

  async def health(request: Request) -> dict:
    del request
    return service.health()

  async def metrics(request: Request) -> Response:
    del request
    return Response(service.metrics.text(), media_type=service.metrics.CONTENT_TYPE)

  @contextlib.asynccontextmanager
  async def lifespan(app: Starlette) -> AsyncIterator[None]:
    del app
    service.start()
    try:
      yield
    finally:
      service.stop()

  async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods, as JSON bodies like every other refusal."""
    status = getattr(exc, "status_code", 500)
    routes_text = "POST /v1/generate, POST /v1/score, GET /v1/prompts, GET /healthz, GET /metrics"
    return _error_response(RequestError(
        status, "not_found" if status == 404 else "bad_method", "path",
        f"{request.method} {request.url.path} is not an endpoint of this server "
        f"({getattr(exc, 'detail', '')}); use one of {routes_text}."))

  routes = [
      Route("/v1/generate", _endpoint(service, "generate", generate), methods=["POST"]),
      Route("/v1/score", _endpoint(service, "score", score), methods=["POST"]),
      Route("/v1/prompts", _endpoint(service, "prompts", prompts), methods=["GET"]),
      Route("/healthz", _endpoint(service, "healthz", health), methods=["GET"]),
      Route("/metrics", metrics, methods=["GET"]),
  ]
  return Starlette(routes=routes, lifespan=lifespan,
                   exception_handlers={HTTPException: http_error})


def bind(host: str, port: int) -> socket.socket:
  """A listening TCP socket on (host, port); port 0 picks a free one."""
  sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
  sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
  sock.bind((host, port))
  sock.listen(2048)
  return sock


def serve(service: Service, sock: socket.socket, log_level: str = "warning") -> None:
  """Serves `service` on `sock` until interrupted (uvicorn, one process, one event loop)."""
  import uvicorn
  config = uvicorn.Config(create_app(service), log_level=log_level, access_log=False,
                          timeout_graceful_shutdown=5)
  uvicorn.Server(config).run(sockets=[sock])


@contextlib.contextmanager
def running(service: Service, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
  """Serves `service` from a background thread; yields its base URL (tests, benchmarks)."""
  import uvicorn
  sock = bind(host, port)
  config = uvicorn.Config(create_app(service), log_level="warning", access_log=False,
                          timeout_graceful_shutdown=5)
  server = uvicorn.Server(config)
  thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
  thread.start()
  deadline = time.time() + 60
  while not server.started:
    if not thread.is_alive() or time.time() > deadline:
      sock.close()
      raise RuntimeError(f"the server on {host}:{sock.getsockname()[1]} did not start.")
    time.sleep(0.02)
  try:
    yield f"http://{host}:{sock.getsockname()[1]}"
  finally:
    server.should_exit = True
    thread.join(30)
    sock.close()
