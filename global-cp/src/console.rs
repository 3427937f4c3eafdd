//! The web console, served by the global on its admin port under `/ui/`.
//!
//! The assets are compiled into the binary (`console/`: one HTML page, one
//! script, one stylesheet; no build step, no toolchain for users). A
//! person signs in with the admin token on a login page (never in a URL);
//! the global answers with a session cookie (random, HttpOnly,
//! SameSite=Strict, 12 h) that the API accepts for reads, as it accepts
//! the bearer token. The one change the console can make is aborting a
//! running drill (an abort only ever restores): that request must also
//! carry the session's CSRF token, which the console page embeds. Other
//! changes go through `ternctl` or the API with the admin token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("../console/index.html");
const LOGIN: &str = include_str!("../console/login.html");
const APP_JS: &str = include_str!("../console/app.js");
const STYLE: &str = include_str!("../console/style.css");

pub const COOKIE: &str = "tern_session";
const LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at once; the oldest goes first.
const MAX_SESSIONS: usize = 1000;

/// The header a console write carries its session's CSRF token in.
pub const CSRF_HEADER: &str = "x-tern-csrf";

/// Signed-in browsers: when each session began, and its CSRF token.
#[derive(Default)]
pub struct Sessions {
    by_id: Mutex<HashMap<String, (Instant, String)>>,
}

impl Sessions {
    fn create(&self) -> String {
        let id = format!("{}{}", model::token::random_id(), model::token::random_id());
        let csrf = format!("{}{}", model::token::random_id(), model::token::random_id());
        let mut g = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        g.retain(|_, (born, _)| now.duration_since(*born) < LIFETIME);
        if g.len() >= MAX_SESSIONS {
            if let Some(oldest) = g.iter().min_by_key(|(_, b)| b.0).map(|(k, _)| k.clone()) {
                g.remove(&oldest);
            }
        }
        g.insert(id.clone(), (now, csrf));
        id
    }

    /// The CSRF token of the request's live session.
    fn csrf(&self, headers: &HeaderMap) -> Option<String> {
        let id = cookie(headers, COOKIE)?;
        let g = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        // Compared as a map key: the id is 256 random bits, so a lookup
        // leaks nothing an attacker could use.
        g.get(id)
            .filter(|(born, _)| born.elapsed() < LIFETIME)
            .map(|(_, csrf)| csrf.clone())
    }

    /// Whether the request's cookie names a live session.
    pub fn valid(&self, headers: &HeaderMap) -> bool {
        self.csrf(headers).is_some()
    }

    /// A live session's write: its cookie and its CSRF token both.
    pub fn write_allowed(&self, headers: &HeaderMap) -> bool {
        let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
        match (self.csrf(headers), given) {
            (Some(want), Some(given)) => {
                common::telemetry::constant_time_eq(want.as_bytes(), given.as_bytes())
            }
            _ => false,
        }
    }

    fn end(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            self.by_id
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
        }
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

#[derive(Clone)]
pub struct Console {
    pub sessions: Arc<Sessions>,
    pub token: Arc<String>,
}

pub fn router(c: Console) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(index))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", axum::routing::post(logout))
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route("/ui/style.css", get(|| async { asset("text/css", STYLE) }))
        .with_state(c)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn page(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // The console runs only its own script and styles.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

async fn index(AxState(c): AxState<Console>, headers: HeaderMap) -> Response {
    match c.sessions.csrf(&headers) {
        // Hex only: nothing to escape.
        Some(csrf) => page(StatusCode::OK, INDEX.replace("{{csrf}}", &csrf)),
        None => Redirect::to("/ui/login").into_response(),
    }
}

async fn login_page() -> Response {
    page(StatusCode::OK, LOGIN.replace("{{error}}", ""))
}

/// `token=...` from a form body.
fn form_token(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let raw = text
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == "token")?
        .1;
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let h = std::str::from_utf8(&b[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

async fn login(AxState(c): AxState<Console>, body: Bytes) -> Response {
    let given = form_token(&body).unwrap_or_default();
    let given = given.trim();
    if !common::telemetry::constant_time_eq(given.as_bytes(), c.token.as_bytes()) {
        tracing::warn!("console sign-in refused: wrong admin token");
        return page(
            StatusCode::UNAUTHORIZED,
            LOGIN.replace(
                "{{error}}",
                "<p class=\"error\" id=\"error\">That is not the admin token. It is in the global's &lt;data-dir&gt;/admin-token.</p>",
            ),
        );
    }
    let id = c.sessions.create();
    let mut r = Redirect::to("/ui/").into_response();
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        LIFETIME.as_secs()
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    tracing::info!("console session started");
    r
}

async fn logout(AxState(c): AxState<Console>, headers: HeaderMap) -> Response {
    c.sessions.end(&headers);
    let mut r = Redirect::to("/ui/login").into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("tern_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_form_token_is_percent_decoded() {
        assert_eq!(form_token(b"token=ab%2Fc%3D&x=1").as_deref(), Some("ab/c="));
        assert_eq!(form_token(b"x=1").as_deref(), None);
        assert_eq!(form_token(b"token=a%2").as_deref(), Some("a%2"));
    }

    #[test]
    fn a_session_is_valid_only_with_its_cookie() {
        let s = Sessions::default();
        let id = s.create();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("a=b; {COOKIE}={id}")).unwrap(),
        );
        assert!(s.valid(&h));
        let mut wrong = HeaderMap::new();
        wrong.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("{COOKIE}=x{id}")).unwrap(),
        );
        assert!(!s.valid(&wrong));
        // A write needs the session's CSRF token as well.
        assert!(!s.write_allowed(&h));
        let mut with = h.clone();
        with.insert(
            CSRF_HEADER,
            HeaderValue::from_str(&s.csrf(&h).unwrap()).unwrap(),
        );
        assert!(s.write_allowed(&with));
        with.insert(CSRF_HEADER, HeaderValue::from_static("guess"));
        assert!(!s.write_allowed(&with));
        s.end(&h);
        assert!(!s.valid(&h));
    }
}
