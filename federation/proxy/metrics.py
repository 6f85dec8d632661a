"""Prometheus metrics of a proxy (``fedkafka_proxy_*``), on their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from federation.protocol.versions import API_NAMES

MAX_TOPIC_LABELS = 2000  # logical topics are operator-created, but cap the label space anyway
#: SASL mechanisms named in metric labels; a client may send any name, the rest are "other"
KNOWN_MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER",
                              "GSSAPI"})


class ProxyMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("fedkafka_proxy_requests_total",
                                "Requests served, per API and version.", ["api", "version"],
                                registry=r)
        self.errors = Counter("fedkafka_proxy_errors_total",
                              "Partition- or request-level errors returned, per API and code.",
                              ["api", "error_code"], registry=r)
        self.latency = Histogram("fedkafka_proxy_request_seconds",
                                 "Time from a request's arrival to its response, per API.",
                                 ["api"], registry=r,
                                 buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5,
                                          1, 2.5, 5, 10))
        self.upstream_latency = Histogram("fedkafka_proxy_upstream_seconds",
                                          "Round trip of requests to physical brokers.",
                                          ["cluster"], registry=r,
                                          buckets=(.0005, .001, .0025, .005, .01, .025, .05, .1,
                                                   .25, .5, 1, 2.5, 5, 10))
        self.bytes_in_total = Counter("fedkafka_proxy_bytes_in_total",
                                      "Record bytes produced, per logical topic.", ["topic"],
                                      registry=r)
        self.bytes_out_total = Counter("fedkafka_proxy_bytes_out_total",
                                       "Record bytes fetched, per logical topic.", ["topic"],
                                       registry=r)
        self.connections = Gauge("fedkafka_proxy_connections", "Open client connections.",
                                 registry=r)
        self.closed_bad_frames = Counter("fedkafka_proxy_connections_closed_total",
                                         "Client connections closed by the proxy, per reason.",
                                         ["reason"], registry=r)
        self.limit_hits = Counter(
            "fedkafka_proxy_limit_hits_total",
            "Times a resource limit of the proxy config's limits was hit, per limit (its field "
            "name: max_connections, frame_timeout, max_array_elements, "
            "max_partitions_per_request, max_client_timeout...).", ["limit"], registry=r)
        self.authentications = Counter(
            "fedkafka_proxy_authentications_total",
            "SASL authentications, per mechanism and result (ok, failed, "
            "unsupported_mechanism, illegal_state); all but ok close the connection.",
            ["mechanism", "result"], registry=r)
        self.map_version = Gauge("fedkafka_proxy_map_version", "Version of the map served.",
                                 registry=r)
        self.map_age = Gauge("fedkafka_proxy_map_updated_timestamp_seconds",
                             "When the served map was last updated (unix time).", registry=r)
        self.store_healthy = Gauge("fedkafka_proxy_store_healthy",
                                   "1 while the metadata store is reachable, 0 while the proxy "
                                   "serves its last map without it.", registry=r)
        self.upstream_errors = Counter(
            "fedkafka_proxy_upstream_errors_total",
            "Upstream failures and leader errors per physical cluster (each makes the proxy "
            "re-read that cluster's metadata).", ["cluster"], registry=r)
        self.info = Gauge("fedkafka_proxy_info",
                          "1, labelled with the proxy's pool and roles (join connections and "
                          "requests on it to see them by role).", ["node_id", "pool", "roles"],
                          registry=r)
        self.routing = Counter("fedkafka_nameservice_routing_decisions_total",
                               "Clients routed to a pool by the name service, per pool.",
                               ["pool"], registry=r)
        self._topics: set[str] = set()

    def _topic(self, topic: str) -> str:
        if topic in self._topics:
            return topic
        if len(self._topics) >= MAX_TOPIC_LABELS:
            return "_other"
        self._topics.add(topic)
        return topic

    def request(self, api_key: int, seconds: float, version: int = -1) -> None:
        name = API_NAMES.get(api_key, "unknown")
        self.requests.labels(name, str(version)).inc()
        self.latency.labels(name).observe(seconds)

    def limit_hit(self, limit: str) -> None:
        self.limit_hits.labels(limit).inc()

    def authentication(self, mechanism: str, result: str) -> None:
        label = mechanism if mechanism in KNOWN_MECHANISMS else "other"
        self.authentications.labels(label, result).inc()

    def routed(self, pool: str) -> None:
        self.routing.labels(self._topic(pool)).inc()

    def error(self, api: str, code: int) -> None:
        self.errors.labels(api, str(int(code))).inc()

    def bytes_in(self, topic: str, n: int) -> None:
        self.bytes_in_total.labels(self._topic(topic)).inc(n)

    def bytes_out(self, topic: str, n: int) -> None:
        self.bytes_out_total.labels(self._topic(topic)).inc(n)
