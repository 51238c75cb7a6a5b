"""Prometheus metrics (``/metrics``) and ``/healthz`` on ``metrics.listen``.

Counters are updated by the pipeline and the servers; bundle-state gauges and published bytes are read from the
journal at scrape time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from .httpbase import Handler
from .journal import Journal
from .published import Published


class _StateCollector(Collector):
    def __init__(self, journal: Journal, published: Published):
        self.journal = journal
        self.published = published

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("hydra_agent_bundles", "Bundles known to the agent, by state", labels=["state"])
        for state, n in self.journal.state_counts().items():
            g.add_metric([state], n)
        yield g
        s = GaugeMetricFamily("hydra_agent_published_blob_bytes", "Bytes of published blobs in the store")
        s.add_metric([], self.published.published_bytes())
        yield s


class _ReclaimableCollector(Collector):
    def __init__(self, reclaimable: Callable[[], int]):
        self.reclaimable = reclaimable

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("hydra_agent_reclaimable_bytes", "Bytes `agent gc` with the configured retention "
                              "would free now (versions beyond retention.keep, blobs nothing references)")
        g.add_metric([], self.reclaimable())
        yield g


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.results = Counter("hydra_agent_bundle_results", "Pipeline results by outcome", ["outcome"],
                               registry=self.registry)
        self.ingested = Counter("hydra_agent_ingest_bytes", "Bytes read from bundle files into the store",
                                registry=self.registry)
        self.requests = Counter("hydra_agent_http_requests", "HTTP requests served", ["server", "method", "code"],
                                registry=self.registry)
        self.sent = Counter("hydra_agent_http_sent_bytes", "Body bytes sent", ["server"], registry=self.registry)

    def attach(self, journal: Journal, published: Published) -> None:
        self.registry.register(_StateCollector(journal, published))

    def attach_reclaimable(self, reclaimable: Callable[[], int]) -> None:
        self.registry.register(_ReclaimableCollector(reclaimable))

    def observe(self, server: str, method: str, status: int, sent: int) -> None:
        self.requests.labels(server, method, str(status)).inc()
        if sent:
            self.sent.labels(server).inc(sent)


class MetricsHandler(Handler):
    server_version = "hydra-bundle-metrics"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            m: Metrics = self.srv.context["metrics"]
            self.reply(200, generate_latest(m.registry), content_type=CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            health = self.srv.context["health"]()
            self.reply(200 if health.get("ok") else 503, json.dumps(health).encode(),
                       content_type="application/json")
        else:
            self.reply(404, b"not found\n")

    do_HEAD = do_GET
