//! Who may use the server. With a token, every API request must carry it
//! (`Authorization: Bearer <token>`, or the cookie the page gets when it is opened
//! with `?token=`); without one (loopback only), requests must name a loopback host,
//! so that a web page elsewhere cannot reach the server by rebinding a DNS name.
//! Either way, a request that changes something (any API method but GET and HEAD)
//! must be JSON and, from a browser, come from this server's own page: a page on
//! another site can neither send it without the browser asking the server first
//! (which it refuses) nor pass as this server's page.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;

/// The cookie that carries the token for the page.
pub const COOKIE: &str = "samus_token";

/// The access rule of one server.
#[derive(Debug, Clone)]
pub struct Access {
    /// The token every API request must carry, if any.
    pub token: Option<String>,
    /// Whether the server listens on a loopback address only.
    pub loopback: bool,
}

impl Access {
    /// Whether `given` is the token.
    pub fn is_token(&self, given: &str) -> bool {
        self.token
            .as_deref()
            .is_some_and(|token| same_secret(given.trim(), token))
    }

    /// Whether `headers` carry the token (always, without one).
    pub fn admits(&self, headers: &HeaderMap) -> bool {
        if self.token.is_none() {
            return true;
        }
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|kv| kv.trim().strip_prefix(COOKIE)?.strip_prefix('='));
        bearer
            .into_iter()
            .chain(cookie)
            .any(|given| self.is_token(given))
    }

    /// Whether the request's `Host` is one this server answers to: any, with a token;
    /// else a loopback name.
    pub fn host_allowed(&self, headers: &HeaderMap) -> bool {
        if self.token.is_some() || !self.loopback {
            return true;
        }
        let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Why a request that changes something is refused, if it is: it is not JSON, or a
/// browser sent it from another origin than `http://<Host>`.
pub fn cross_site_write(method: &Method, headers: &HeaderMap) -> Option<&'static str> {
    if matches!(*method, Method::GET | Method::HEAD) {
        return None;
    }
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let json = text(header::CONTENT_TYPE).is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return Some("send API requests that change something as `Content-Type: application/json`");
    }
    let own_origin = text(header::ORIGIN).is_none_or(|origin| {
        text(header::HOST).is_some_and(|host| origin == format!("http://{host}"))
    });
    let fetch_site = text(HeaderName::from_static("sec-fetch-site"))
        .is_none_or(|site| matches!(site, "same-origin" | "none"));
    if !(own_origin && fetch_site) {
        return Some("this request came from another site's page; use the page this server serves");
    }
    None
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(given: &str, token: &str) -> bool {
    given.len() == token.len()
        && given
            .bytes()
            .zip(token.bytes())
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
}

/// The token a server runs with: `given` (checked), else none on a loopback
/// address, else a fresh one.
pub fn settle_token(given: Option<&str>, loopback: bool) -> anyhow::Result<Option<String>> {
    match given {
        Some(t) if t.len() < 8 || !t.chars().all(|c| c.is_ascii_graphic()) => {
            anyhow::bail!("--token: use at least 8 printable characters without spaces")
        }
        Some(t) => Ok(Some(t.to_string())),
        None if loopback => Ok(None),
        None => Ok(Some(new_token())),
    }
}

/// A fresh random token (128 bits, hex).
fn new_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The middleware in front of every route: a foreign `Host` gets 403, an API
/// request without the token 401, a change from another site's page 403 and one
/// that is not JSON 415.
pub async fn guard(State(access): State<Access>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    if !access.host_allowed(headers) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "this server only answers requests for 127.0.0.1 or localhost".to_string(),
        )
        .into_response();
    }
    if request.uri().path().starts_with("/api/") && !access.admits(headers) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "this server needs its token: open the URL `samus serve` printed, or send \
             `Authorization: Bearer <token>`"
                .to_string(),
        )
        .into_response();
    }
    if request.uri().path().starts_with("/api/") {
        if let Some(reason) = cross_site_write(request.method(), headers) {
            let status = if reason.contains("Content-Type") {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            } else {
                StatusCode::FORBIDDEN
            };
            return ApiError::new(status, reason.to_string()).into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_token_comes_as_a_bearer_or_a_cookie() {
        let access = Access {
            token: Some("abc123".into()),
            loopback: false,
        };
        assert!(access.admits(&headers(&[(header::AUTHORIZATION, "Bearer abc123")])));
        assert!(access.admits(&headers(&[(header::COOKIE, "x=1; samus_token=abc123")])));
        assert!(!access.admits(&headers(&[(header::AUTHORIZATION, "Bearer abc124")])));
        assert!(!access.admits(&headers(&[(header::COOKIE, "samus_token=abc")])));
        assert!(!access.admits(&HeaderMap::new()));
    }

    #[test]
    fn other_addresses_get_a_generated_token() {
        let generated = settle_token(None, false).unwrap().expect("a token");
        assert_eq!(generated.len(), 32);
        assert!(generated.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(settle_token(None, false).unwrap(), Some(generated));
        assert_eq!(settle_token(None, true).unwrap(), None);
        assert_eq!(
            settle_token(Some("given-token"), true).unwrap().as_deref(),
            Some("given-token")
        );
        assert!(settle_token(Some("short"), false).is_err());
        assert!(settle_token(Some("has a space"), false).is_err());
    }

    #[test]
    fn without_a_token_only_loopback_hosts_are_answered() {
        let access = Access {
            token: None,
            loopback: true,
        };
        for ok in [
            "127.0.0.1:8765",
            "127.0.0.2:8765",
            "localhost:1",
            "[::1]:8765",
            "localhost",
        ] {
            assert!(access.host_allowed(&headers(&[(header::HOST, ok)])), "{ok}");
        }
        for bad in [
            "evil.example:8765",
            "127.0.0.1.evil.example",
            "10.0.0.1:8765",
            "",
        ] {
            assert!(
                !access.host_allowed(&headers(&[(header::HOST, bad)])),
                "{bad}"
            );
        }
        assert!(!access.host_allowed(&HeaderMap::new()));
    }

    #[test]
    fn changes_must_be_json_from_this_servers_page() {
        let json = (header::CONTENT_TYPE, "application/json; charset=utf-8");
        let host = (header::HOST, "127.0.0.1:8765");
        let post = Method::POST;
        assert_eq!(cross_site_write(&Method::GET, &HeaderMap::new()), None);
        // A script or curl: no Origin.
        assert_eq!(
            cross_site_write(&post, &headers(&[json.clone(), host.clone()])),
            None
        );
        // This server's own page.
        let own = (header::ORIGIN, "http://127.0.0.1:8765");
        let same = (HeaderName::from_static("sec-fetch-site"), "same-origin");
        assert_eq!(
            cross_site_write(&post, &headers(&[json.clone(), host.clone(), own, same])),
            None
        );
        // A form posted from elsewhere: text/plain, or JSON from another origin.
        let plain = (header::CONTENT_TYPE, "text/plain");
        assert!(cross_site_write(&post, &headers(&[plain, host.clone()]))
            .is_some_and(|r| r.contains("Content-Type")));
        assert!(cross_site_write(&Method::PUT, &headers(std::slice::from_ref(&host))).is_some());
        let evil = (header::ORIGIN, "http://evil.example");
        assert!(
            cross_site_write(&post, &headers(&[json.clone(), host.clone(), evil]))
                .is_some_and(|r| r.contains("another site"))
        );
        let cross = (HeaderName::from_static("sec-fetch-site"), "cross-site");
        assert!(cross_site_write(&post, &headers(&[json, host, cross])).is_some());
    }
}
