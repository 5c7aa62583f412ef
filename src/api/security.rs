//! The API's guard at the edge: API keys, per-client rate limits, the cap on
//! requests in flight, and CORS.
//!
//! Order (outermost first, see `api::router`): request id and log line →
//! CORS (a preflight is answered here, so browsers can ask before they have
//! a key) → in-flight cap (503 at once, never a queue) → [`guard`] (key
//! check, then rate limit) → routes.
//!
//! Invariants:
//! - `/health`, `/healthz` and `/ready` pass every check here, so probes see
//!   the service's real state; the metrics listener is another socket and
//!   never reaches this module;
//! - keys are held only as SHA-256 digests, compared in constant time, and
//!   never logged (the request log line has no headers);
//! - the rate-limit key is the authenticated key's name, else the client
//!   address. A key that was not verified (keys disabled, or a wrong key)
//!   never picks the budget: rotating made-up keys cannot escape the limit;
//! - `X-Forwarded-For` is believed only from `security.trusted_proxies`,
//!   read from the right so a client cannot forge its own entry;
//! - every response that went through the limiter carries
//!   `X-RateLimit-Limit` (the burst) and `X-RateLimit-Remaining`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;
use prometheus::{IntCounter, IntCounterVec};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

use super::AppState;
use super::error::ApiError;
use super::request_id::current_request_id;
use crate::config::{CorsConfig, SecurityConfig, ServerConfig, parse_network};
use crate::limits::{Decision, GcraLimiter, RateLimiter, RedisGcraLimiter};

/// Most distinct clients the in-process limiter tracks at once.
const MAX_TRACKED_CLIENTS: usize = 100_000;

const RATE_LIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const RATE_LIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Ingest,
    Read,
    Admin,
}

impl Scope {
    fn parse(text: &str) -> Option<Scope> {
        match text {
            "ingest" => Some(Scope::Ingest),
            "read" => Some(Scope::Read),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Scope::Ingest => "ingest",
            Scope::Read => "read",
            Scope::Admin => "admin",
        }
    }
}

/// One configured key: its holder, digest and scopes.
struct KnownKey {
    name: String,
    digest: [u8; 32],
    scopes: Vec<Scope>,
}

/// Why a request was not authorised.
enum AuthError {
    Missing,
    Unknown,
    Forbidden { name: String, scope: Scope },
}

/// The edge policy built from `security` and `server`.
pub struct Security {
    /// `None` when `api_key_enabled` is false.
    keys: Option<Vec<KnownKey>>,
    /// `None` when `rate_limit.enabled` is false.
    limiter: Option<Arc<dyn RateLimiter>>,
    exempt: Vec<IpNet>,
    trusted_proxies: Vec<IpNet>,
    in_flight: Arc<Semaphore>,
    rate_limited: IntCounter,
    auth_refused: IntCounterVec,
    shed: IntCounter,
}

impl Security {
    /// Builds the policy; the configuration was validated by `config::load`,
    /// so entries that do not parse cannot occur (they are skipped).
    pub fn new(
        security: &SecurityConfig,
        server: &ServerConfig,
        telemetry: &crate::telemetry::Telemetry,
    ) -> Self {
        let keys = security.api_key_enabled.then(|| {
            security
                .api_keys
                .iter()
                .filter_map(|key| {
                    Some(KnownKey {
                        name: key.name.clone(),
                        digest: decode_digest(&key.sha256)?,
                        scopes: key.scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
                    })
                })
                .collect()
        });
        let rate = &security.rate_limit;
        let limiter = rate.enabled.then(|| {
            Arc::new(GcraLimiter::new(
                rate.requests_per_minute as u64,
                rate.burst as u64,
                MAX_TRACKED_CLIENTS,
            )) as Arc<dyn RateLimiter>
        });
        let networks =
            |entries: &[String]| entries.iter().filter_map(|e| parse_network(e)).collect();
        Security {
            keys,
            limiter,
            exempt: networks(&rate.exempt),
            trusted_proxies: networks(&security.trusted_proxies),
            in_flight: Arc::new(Semaphore::new(server.max_concurrent_requests)),
            rate_limited: telemetry.rate_limited.clone(),
            auth_refused: telemetry.auth_refused.clone(),
            shed: telemetry.requests_shed.clone(),
        }
    }

    /// Shares the rate-limit budgets through Redis instead of keeping them
    /// in process (nothing changes when rate limiting is disabled).
    pub fn share_limits_through(
        mut self,
        link: Arc<crate::cache::redis::RedisLink>,
        rate: &crate::config::RateLimitConfig,
        fail_closed: bool,
    ) -> Self {
        if self.limiter.is_some() {
            self.limiter = Some(Arc::new(RedisGcraLimiter::new(
                link,
                rate.requests_per_minute as u64,
                rate.burst as u64,
                fail_closed,
            )));
        }
        self
    }

    /// The client's address: the peer, or the nearest untrusted hop of
    /// `X-Forwarded-For` when the peer is a trusted proxy.
    fn client_address(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted =
            |address: &IpAddr| self.trusted_proxies.iter().any(|net| net.contains(address));
        if !trusted(&peer) {
            return peer;
        }
        let hops: Vec<&str> = headers
            .get_all(header::HeaderName::from_static("x-forwarded-for"))
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        // Right to left: each hop was appended by the one after it; stop at
        // the first one no trusted proxy vouches for.
        for hop in hops.iter().rev() {
            let Ok(address) = hop.parse::<IpAddr>() else {
                break;
            };
            client = address.to_canonical();
            if !trusted(&client) {
                break;
            }
        }
        client
    }

    /// Checks the request's key against the scope its endpoint needs.
    /// `Ok(None)` when keys are disabled.
    fn authenticate(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<&KnownKey>, AuthError> {
        let Some(keys) = &self.keys else {
            return Ok(None);
        };
        let presented = presented_key(headers).ok_or(AuthError::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every configured digest is compared, each in constant time, so
        // neither the position of a match nor a common prefix shows in the
        // response time.
        let mut found = None;
        for key in keys {
            if bool::from(key.digest.ct_eq(&digest)) {
                found = Some(key);
            }
        }
        let key = found.ok_or(AuthError::Unknown)?;
        match required_scope(method, path) {
            Some(scope) if !key.scopes.contains(&scope) => Err(AuthError::Forbidden {
                name: key.name.clone(),
                scope,
            }),
            _ => Ok(Some(key)),
        }
    }
}

/// Paths that every check here lets through (probes).
fn exempt_path(path: &str) -> bool {
    matches!(path, "/health" | "/healthz" | "/ready")
}

/// The scope an endpoint needs; `None`: any valid key (paths that only
/// answer 404 or 405).
fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    let reading = method == Method::GET || method == Method::HEAD;
    if path == "/api/v1/internal" || path.starts_with("/api/v1/internal/") {
        return Some(Scope::Admin);
    }
    if path == "/api/v1/custom-events" || path.starts_with("/api/v1/custom-events/") {
        return Some(if reading { Scope::Read } else { Scope::Admin });
    }
    if (path == "/api/v1/events" || path == "/api/v1/events/batch") && method == Method::POST {
        return Some(Scope::Ingest);
    }
    reading.then_some(Scope::Read)
}

/// The key from `Authorization: Bearer <key>` or `X-API-Key: <key>`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            let (scheme, key) = value.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
        });
    bearer
        .or_else(|| {
            headers
                .get(API_KEY_HEADER)
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
        })
        .filter(|key| !key.is_empty())
}

fn decode_digest(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (index, pair) in bytes.chunks(2).enumerate() {
        let text = std::str::from_utf8(pair).ok()?;
        digest[index] = u8::from_str_radix(text, 16).ok()?;
    }
    Some(digest)
}

/// Hex SHA-256 of a key: what `security.api_keys[].sha256` holds.
pub fn key_digest_hex(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Middleware: API key, then rate limit (see the module docs).
pub async fn guard(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let security = &state.security;
    let path = request.uri().path();
    if exempt_path(path) {
        return next.run(request).await;
    }
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip().to_canonical())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let client = security.client_address(peer, request.headers());
    let auth = security.authenticate(request.method(), path, request.headers());

    let decision = match &security.limiter {
        Some(limiter) if !security.exempt.iter().any(|net| net.contains(&client)) => {
            let key = match &auth {
                Ok(Some(key)) => format!("key:{}", key.name),
                _ => format!("ip:{client}"),
            };
            Some(limiter.check(&key).await)
        }
        _ => None,
    };
    let mut response = match (decision, auth) {
        (Some(decision), _) if !decision.allowed => {
            security.rate_limited.inc();
            tracing::debug!(client = %client, retry_after_ms = decision.retry_after.as_millis() as u64, "rate limit exceeded");
            too_many_requests(&decision)
        }
        (_, Err(error)) => refuse(security, &client, error),
        (_, Ok(_)) => next.run(request).await,
    };
    if let Some(decision) = decision {
        let headers = response.headers_mut();
        headers.insert(RATE_LIMIT_LIMIT, HeaderValue::from(decision.limit));
        headers.insert(RATE_LIMIT_REMAINING, HeaderValue::from(decision.remaining));
    }
    response
}

fn refuse(security: &Security, client: &IpAddr, error: AuthError) -> Response {
    let (reason, response) = match error {
        AuthError::Missing => (
            "missing",
            ApiError::new(StatusCode::UNAUTHORIZED, "API key required")
                .with_details(
                    json!({"hint": "send Authorization: Bearer <key> or X-API-Key: <key>"}),
                )
                .into_response(),
        ),
        AuthError::Unknown => (
            "unknown",
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid API key").into_response(),
        ),
        AuthError::Forbidden { name, scope } => {
            tracing::debug!(client = %client, api_key = %name, scope = scope.name(), "api key lacks the scope");
            (
                "scope",
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!("this API key lacks the \"{}\" scope", scope.name()),
                )
                .with_details(json!({"required_scope": scope.name()}))
                .into_response(),
            )
        }
    };
    security.auth_refused.with_label_values(&[reason]).inc();
    let mut response = response;
    if response.status() == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// 429 in the shape of every error body, plus `retry_after` (whole seconds,
/// rounded up so a client that waits that long is let through).
fn too_many_requests(decision: &Decision) -> Response {
    let seconds = decision.retry_after.as_secs_f64().ceil().max(1.0) as u64;
    let mut body = json!({"error": "rate limit exceeded", "retry_after": seconds});
    if let Some(request_id) = current_request_id() {
        body["request_id"] = Value::String(request_id);
    }
    let mut response = (StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Middleware: at most `server.max_concurrent_requests` requests in the
/// handlers at once; one more is answered 503 at once (a queue would only
/// grow the latency of everyone).
pub async fn limit_in_flight(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if exempt_path(request.uri().path()) {
        return next.run(request).await;
    }
    let Ok(_permit) = Arc::clone(&state.security.in_flight).try_acquire_owned() else {
        state.security.shed.inc();
        return ApiError::unavailable("too many requests in flight, retry later", 1)
            .into_response();
    };
    next.run(request).await
}

/// The CORS layer `security.cors` describes, or `None` when disabled.
pub fn cors_layer(config: &CorsConfig) -> Option<CorsLayer> {
    if !config.enabled {
        return None;
    }
    let origins = if config.allowed_origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            config
                .allowed_origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    let methods: Vec<Method> = config
        .allowed_methods
        .iter()
        .filter_map(|method| Method::from_bytes(method.as_bytes()).ok())
        .collect();
    let headers = if config.allowed_headers.iter().any(|name| name == "*") {
        AllowHeaders::any()
    } else {
        AllowHeaders::list(
            config
                .allowed_headers
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods(methods)
            .allow_headers(headers)
            // So a browser page can read its request id and its budget.
            .expose_headers([
                HeaderName::from_static("x-request-id"),
                RATE_LIMIT_LIMIT,
                RATE_LIMIT_REMAINING,
                header::RETRY_AFTER,
            ]),
    )
}

/// Middleware outside the CORS layer: tower-http answers a preflight 200
/// with an empty body; 204 says the same thing precisely.
pub async fn preflight_no_content(request: Request, next: Next) -> Response {
    let preflight = request.method() == Method::OPTIONS;
    let mut response = next.run(request).await;
    if preflight && response.status() == StatusCode::OK {
        *response.status_mut() = StatusCode::NO_CONTENT;
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_endpoint_table() {
        let cases = [
            (Method::POST, "/api/v1/events", Some(Scope::Ingest)),
            (Method::POST, "/api/v1/events/batch", Some(Scope::Ingest)),
            (Method::GET, "/api/v1/events", Some(Scope::Read)),
            (Method::GET, "/api/v1/events/stats", Some(Scope::Read)),
            (Method::GET, "/api/v1/metrics", Some(Scope::Read)),
            (Method::GET, "/api/v1/dashboard/metrics", Some(Scope::Read)),
            (Method::GET, "/api/v1/custom-events/x", Some(Scope::Read)),
            (Method::POST, "/api/v1/custom-events", Some(Scope::Admin)),
            (Method::PUT, "/api/v1/custom-events/x", Some(Scope::Admin)),
            (
                Method::DELETE,
                "/api/v1/custom-events/x",
                Some(Scope::Admin),
            ),
            (
                Method::GET,
                "/api/v1/internal/ingestion-metrics",
                Some(Scope::Admin),
            ),
            (Method::PATCH, "/nowhere", None),
        ];
        for (method, path, scope) in cases {
            assert_eq!(required_scope(&method, path), scope, "{method} {path}");
        }
    }

    #[test]
    fn key_is_read_from_either_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_key(&headers), None);
        headers.insert(API_KEY_HEADER, HeaderValue::from_static("abc"));
        assert_eq!(presented_key(&headers), Some("abc"));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer xyz"),
        );
        assert_eq!(presented_key(&headers), Some("xyz"));
    }

    #[test]
    fn digest_round_trips() {
        let hex = key_digest_hex("secret");
        assert_eq!(hex.len(), 64);
        let digest = decode_digest(&hex).expect("decodes");
        let expected: [u8; 32] = Sha256::digest(b"secret").into();
        assert_eq!(digest, expected);
        assert_eq!(decode_digest("zz"), None);
    }
}
