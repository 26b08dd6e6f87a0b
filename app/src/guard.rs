//! Which of the API port's paths need which token, and which body types they read
//! (`meshscope-gate` does the checking).
//!
//! - open: `/healthz`, `/metrics` (meshscope's own), the UI's static files (`/`, `/ui/…`:
//!   no data; the UI asks for the token and sends it on its API calls);
//! - ingest: `/api/v1/ingest/…`;
//! - read: everything else, including `/api/v1/status` and unknown paths (a 404 tells a
//!   caller without a token nothing).

use meshscope_gate::{Access, Bodies, ErrorStyle, Route, Scope};

pub fn route_of(path: &str) -> Route {
    let access = if matches!(path, "/" | "/healthz" | "/metrics") || path.starts_with("/ui/") {
        Access::Open
    } else if path.starts_with("/api/v1/ingest/") {
        Access::Need(Scope::Ingest)
    } else {
        Access::Need(Scope::Read)
    };
    // JSON bodies: SQL. The Prometheus API reads forms (as Grafana sends them); pushes read
    // lines of text (access logs, stats, NDJSON rows): those rely on the Origin checks.
    let bodies = if path == "/api/v1/sql" {
        Bodies::Json
    } else {
        Bodies::Any
    };
    let style = if path.starts_with("/prometheus/") {
        ErrorStyle::Prometheus
    } else if path.starts_with("/jaeger/") {
        ErrorStyle::Jaeger
    } else {
        ErrorStyle::Meshscope
    };
    Route {
        access,
        bodies,
        style,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for p in ["/", "/healthz", "/metrics", "/ui/app.js"] {
            assert_eq!(route_of(p).access, Access::Open, "{p}");
        }
        for p in [
            "/api/v1/status",
            "/api/v1/graph",
            "/api/v1/sql",
            "/api/v1/demo",
            "/prometheus/api/v1/query",
            "/jaeger/api/services",
            "/nope",
            "/uix",
            "/healthz/x",
        ] {
            assert_eq!(route_of(p).access, Access::Need(Scope::Read), "{p}");
        }
        for p in ["/api/v1/ingest/accesslog", "/api/v1/ingest/rows/spans"] {
            assert_eq!(route_of(p).access, Access::Need(Scope::Ingest), "{p}");
        }
        assert_eq!(route_of("/api/v1/sql").bodies, Bodies::Json);
        assert_eq!(route_of("/api/v1/ingest/rows/spans").bodies, Bodies::Any);
        assert_eq!(route_of("/prometheus/api/v1/query").bodies, Bodies::Any);
        assert_eq!(
            route_of("/prometheus/api/v1/query").style,
            ErrorStyle::Prometheus
        );
        assert_eq!(route_of("/jaeger/api/traces").style, ErrorStyle::Jaeger);
    }
}
