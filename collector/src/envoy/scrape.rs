//! Scraping Envoy admin endpoints (`--envoy-admin <url>`, repeatable): every interval, GET
//! `/server_info` for the proxy's identity (node id and metadata) and `/stats/prometheus` for
//! its stats. The identity also teaches the address book which workload owns the proxy's IP.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tracing::{debug, warn};

use super::access_log::ProxyIdentity;
use super::push::{EnvoyIngest, store_stats};
pub use super::sources::{SourceStatus, Sources};
use super::stats::identity_from_server_info;

/// An admin body larger than this is refused (a large Envoy has a few MiB of stats).
const MAX_ADMIN_BODY: usize = 64 << 20;

const KIND: &str = "envoy-admin";

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>;

async fn get(client: &HttpClient, url: &str) -> Result<String, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let resp = tokio::time::timeout(Duration::from_secs(10), client.get(uri))
        .await
        .map_err(|_| format!("GET {url}: timed out after 10 s"))?
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| format!("GET {url}: reading the body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    String::from_utf8(body.to_vec()).map_err(|_| format!("GET {url}: body is not UTF-8"))
}

/// Scrapes one admin endpoint once: identity, then stats. Returns samples stored.
async fn scrape_once(
    client: &HttpClient,
    ingest: &EnvoyIngest,
    base: &str,
) -> Result<(usize, ProxyIdentity), String> {
    let info = get(client, &format!("{base}/server_info")).await?;
    let info: serde_json::Value =
        serde_json::from_str(&info).map_err(|e| format!("{base}/server_info is not JSON: {e}"))?;
    let proxy = identity_from_server_info(&info);
    ingest.learn(&proxy);
    let stats = get(client, &format!("{base}/stats/prometheus")).await?;
    let (stored, rejected) = store_stats(ingest, &stats, &proxy)
        .await
        .map_err(|e| format!("storing stats of {base}: {e}"))?;
    if !rejected.is_empty() {
        debug!(%base, rejected = rejected.len(), first = ?rejected.first(), "some stats lines were rejected");
    }
    Ok((stored, proxy))
}

/// Runs one scrape loop per admin URL until `stop` flips; statuses go to `sources`.
pub fn spawn_scrapers(
    ingest: Arc<EnvoyIngest>,
    urls: Vec<String>,
    interval: Duration,
    sources: Sources,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    {
        let mut s = sources.lock().unwrap_or_else(|e| e.into_inner());
        for u in &urls {
            s.push(SourceStatus {
                kind: KIND,
                url: u.clone(),
                ..Default::default()
            });
        }
    }
    urls.into_iter()
        .enumerate()
        .map(|(i, url)| {
            let (client, ingest, sources, mut stop) = (client.clone(), ingest.clone(), sources.clone(), stop.clone());
            let base = url.trim_end_matches('/').to_string();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => return,
                    }
                    let res = scrape_once(&client, &ingest, &base).await;
                    let mut all = sources.lock().unwrap_or_else(|e| e.into_inner());
                    // Other sources (tailed files) come and go: find this one among its kind.
                    let Some(st) = all.iter_mut().filter(|s| s.kind == KIND).nth(i) else {
                        continue;
                    };
                    st.scrapes += 1;
                    match res {
                        Ok((n, proxy)) => {
                            st.samples_stored += n as u64;
                            st.proxy = proxy.pod.or(proxy.ip);
                            st.last_success_unix = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .ok()
                                .map(|d| d.as_secs());
                            st.last_error = None;
                        }
                        Err(e) => {
                            if st.last_error.as_deref() != Some(e.as_str()) {
                                warn!(url = %base, error = %e, "scraping an Envoy admin endpoint failed");
                            }
                            st.last_error = Some(e);
                        }
                    }
                }
            })
        })
        .collect()
}
