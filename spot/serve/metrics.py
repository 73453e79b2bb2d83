"""Server metrics in Prometheus text format (`GET /metrics`), on a registry of their own.

Counters of requests (by endpoint and status) and errors (by kind), histograms
of request latency and batch size and compute time, gauges of the queue depth
and the prompt cache. Each server has its own `CollectorRegistry`, so two
servers in one process (tests, benchmarks) never share counts.
"""

from __future__ import annotations

from typing import Callable

import prometheus_client as prom

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
  """The metrics of one server."""

  def __init__(self, queue_depth: Callable[[], float], cache_entries: Callable[[], float],
               cache_bytes: Callable[[], float]):
    self.registry = prom.CollectorRegistry()
    r = self.registry
    self.requests = prom.Counter("spot_serve_requests", "HTTP requests by endpoint and status.",
                                 ["endpoint", "status"], registry=r)
    self.errors = prom.Counter("spot_serve_errors", "Failed requests by error kind.",
                               ["kind"], registry=r)
    self.examples = prom.Counter("spot_serve_examples", "Examples computed, by endpoint.",
                                 ["endpoint"], registry=r)
    self.latency = prom.Histogram("spot_serve_request_latency_seconds",
                                  "Request latency, arrival to response.", ["endpoint"],
                                  buckets=LATENCY_BUCKETS, registry=r)
    self.batch_size = prom.Histogram("spot_serve_batch_size", "Examples per computed batch.",
                                     buckets=BATCH_BUCKETS, registry=r)
    self.batch_seconds = prom.Histogram("spot_serve_batch_seconds", "Device time per batch.",
                                        buckets=LATENCY_BUCKETS, registry=r)
    self.batch_prompts = prom.Histogram("spot_serve_batch_prompts",
                                        "Distinct prompts per computed batch.",
                                        buckets=BATCH_BUCKETS, registry=r)
    prom.Gauge("spot_serve_queue_depth", "Examples waiting for a batch.",
               registry=r).set_function(queue_depth)
    prom.Gauge("spot_serve_prompt_cache_entries", "Prompts held in the cache.",
               registry=r).set_function(cache_entries)
    prom.Gauge("spot_serve_prompt_cache_bytes", "Bytes of prompts held in the cache.",
               registry=r).set_function(cache_bytes)

  def text(self) -> bytes:
    """The Prometheus text exposition of every metric."""
    return prom.generate_latest(self.registry)

  CONTENT_TYPE = prom.CONTENT_TYPE_LATEST
