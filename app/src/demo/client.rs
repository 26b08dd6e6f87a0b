//! The simulator's way into meshscope: plain HTTP over loopback to the server's own ports,
//! exactly as a log shipper, a stats pusher and Envoy's OTLP tracer would send.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;

use meshscope_testkit::bookinfo::Pod;

pub struct Pusher {
    client: Client<HttpConnector, Full<Bytes>>,
    api: SocketAddr,
    otlp_http: Option<SocketAddr>,
    /// `Authorization` value when the server asks for tokens.
    authorization: Option<String>,
}

/// A loopback address to reach a listener bound to `addr` (0.0.0.0 → 127.0.0.1).
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr
}

fn identity_query(pod: &Pod) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    q.append_pair("pod", pod.name)
        .append_pair("namespace", pod.namespace)
        .append_pair("app", pod.app)
        .append_pair("ip", pod.ip);
    if let Some(v) = pod.version {
        q.append_pair("version", v);
    }
    q.finish()
}

impl Pusher {
    pub fn new(api: SocketAddr, otlp_http: Option<SocketAddr>, token: Option<String>) -> Pusher {
        Pusher {
            client: Client::builder(TokioExecutor::new()).build_http(),
            api: reachable(api),
            otlp_http: otlp_http.map(reachable),
            authorization: token.map(|t| format!("Bearer {t}")),
        }
    }

    /// POSTs `body`; retries a few times on 429 (storage back-pressure).
    async fn post(&self, uri: &str, content_type: &str, body: Bytes) -> Result<(), String> {
        for attempt in 0..5u64 {
            let mut req =
                hyper::Request::post(uri).header(hyper::header::CONTENT_TYPE, content_type);
            if let Some(a) = &self.authorization {
                req = req.header(hyper::header::AUTHORIZATION, a);
            }
            let req = req
                .body(Full::new(body.clone()))
                .map_err(|e| format!("POST {uri}: {e}"))?;
            let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
                .await
                .map_err(|_| format!("POST {uri}: no answer within 30 s"))?
                .map_err(|e| format!("POST {uri}: {e}"))?;
            let status = resp.status();
            let text = resp
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_default();
            if status.is_success() {
                // an ingest answer lists rejected lines even with 200
                if text.contains("\"rejected\":[{") {
                    return Err(format!("POST {uri}: some lines were rejected: {text}"));
                }
                return Ok(());
            }
            if status == hyper::StatusCode::TOO_MANY_REQUESTS {
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
                continue;
            }
            return Err(format!("POST {uri}: HTTP {status}: {text}"));
        }
        Err(format!("POST {uri}: still refused (429) after 5 tries"))
    }

    /// Access-log lines written by `pod`'s sidecar.
    pub async fn access_log(&self, pod: &Pod, lines: &[String]) -> Result<(), String> {
        let mut body = lines.join("\n");
        body.push('\n');
        let uri = format!(
            "http://{}/api/v1/ingest/accesslog?{}",
            self.api,
            identity_query(pod)
        );
        self.post(&uri, "text/plain", Bytes::from(body)).await
    }

    /// `pod`'s Envoy stats in Prometheus text.
    pub async fn stats(&self, pod: &Pod, text: String) -> Result<(), String> {
        let uri = format!(
            "http://{}/api/v1/ingest/stats?{}",
            self.api,
            identity_query(pod)
        );
        self.post(&uri, "text/plain", Bytes::from(text)).await
    }

    /// Spans of several proxies in one OTLP/HTTP protobuf request.
    pub async fn spans(&self, by_pod: Vec<(&Pod, Vec<Span>)>) -> Result<(), String> {
        let Some(otlp) = self.otlp_http else {
            return Ok(());
        };
        let resource_spans = by_pod
            .into_iter()
            .map(|(pod, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(pod.trace_service())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "envoy".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let req = ExportTraceServiceRequest { resource_spans };
        let uri = format!("http://{otlp}/v1/traces");
        self.post(
            &uri,
            "application/x-protobuf",
            Bytes::from(req.encode_to_vec()),
        )
        .await
    }
}
