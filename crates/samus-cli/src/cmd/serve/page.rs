//! The page, embedded in the binary: `page/index.html`, `app.js` and `app.css`.
//! Opened with `?token=`, it stores the token in a cookie and drops it from the URL.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};

use super::access::{Access, COOKIE};
use super::api::ApiError;

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// `GET /`: the page; `/?token=T` sets the cookie and redirects to `/`.
pub async fn index(
    State(access): State<Access>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if let (Some(given), Some(_)) = (query.get("token"), &access.token) {
        if !access.is_token(given) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "wrong token: open the URL `samus serve` printed".to_string(),
            )
            .into_response();
        }
        let cookie = format!("{COOKIE}={given}; Path=/; HttpOnly; SameSite=Strict");
        return ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        INDEX,
    )
        .into_response()
}

/// `GET /app.js`.
pub async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        SCRIPT,
    )
        .into_response()
}

/// `GET /app.css`.
pub async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE).into_response()
}

/// Any other path.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no such page or API route: {}", uri.path()),
    )
}
