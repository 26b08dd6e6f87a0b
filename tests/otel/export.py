"""Exports spans to meshscope with the real OpenTelemetry Python SDK, over OTLP/gRPC and
OTLP/HTTP (protobuf), and prints what it sent as JSON for the Rust test to compare."""
import argparse
import json

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode


class Recording(SpanExporter):
    """Passes spans to the real exporter and keeps its answers (SUCCESS or FAILURE)."""

    def __init__(self, inner):
        self.inner = inner
        self.results = []

    def export(self, spans):
        r = self.inner.export(spans)
        self.results.append(r.name)
        return r

    def shutdown(self):
        self.inner.shutdown()


def export(exporter, transport, results):
    exporter = Recording(exporter)
    provider = TracerProvider(resource=Resource.create({"service.name": f"reviews-{transport}", "k8s.namespace.name": "default"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("meshscope-test", "1.0")
    sent = []
    with tracer.start_as_current_span("GET /reviews", kind=SpanKind.SERVER) as root:
        root.set_attribute("guid:x-request-id", f"rid-{transport}")
        root.set_attribute("http.method", "GET")
        root.set_attribute("http.status_code", 503)
        root.set_attribute("upstream_cluster", "outbound|9080|v2|ratings.default.svc.cluster.local")
        root.set_attribute("response_flags", "UO")
        root.set_attribute("custom.int", 42)
        root.set_attribute("custom.bool", True)
        root.set_attribute("custom.list", ["a", "b"])
        root.add_event("retry", {"attempt": 1})
        root.set_status(Status(StatusCode.ERROR, "upstream overflow"))
        rc = root.get_span_context()
        with tracer.start_as_current_span("ratings call", kind=SpanKind.CLIENT, links=[Link(rc, {"why": "test"})]) as child:
            cc = child.get_span_context()
            child.set_attribute("peer.address", "127.0.10.7")
    provider.shutdown()
    results[transport] = exporter.results
    sent.append({"trace_id": format(rc.trace_id, "032x"), "span_id": format(rc.span_id, "016x"), "name": "GET /reviews", "kind": "server"})
    sent.append({"trace_id": format(cc.trace_id, "032x"), "span_id": format(cc.span_id, "016x"), "name": "ratings call", "kind": "client",
                 "parent_span_id": format(rc.span_id, "016x")})
    return sent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc", required=True, help="host:port of OTLP/gRPC")
    ap.add_argument("--http", required=True, help="http://host:port of OTLP/HTTP")
    ap.add_argument("--token", help="sent as `authorization: Bearer <token>`")
    a = ap.parse_args()
    headers = {"authorization": f"Bearer {a.token}"} if a.token else None
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
    results = {}
    out = {
        "grpc": export(GrpcExporter(endpoint=a.grpc, insecure=True, headers=headers), "grpc", results),
        "http": export(HttpExporter(endpoint=a.http.rstrip("/") + "/v1/traces", headers=headers), "http", results),
        "results": results,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
