//! Routing on the outbound side: the HTTP rules this proxy's policies give
//! a destination service (compiled by the zone control plane, in
//! precedence order), matched per request on path, method, headers and
//! query; then what the matching rule does to the request: header changes,
//! a path rewrite, a redirect, a timeout. Where the request goes (backends,
//! mirror) is `split.rs`.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use proto::v1 as pb;

use crate::split::{Mirror, Split};

/// One value condition.
#[derive(Debug)]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Regex(regex_lite::Regex),
    Present(bool),
}

impl StrMatch {
    pub fn build(m: &pb::StringMatch) -> Result<Self, String> {
        use pb::string_match::Match;
        Ok(match &m.r#match {
            Some(Match::Exact(s)) => StrMatch::Exact(s.clone()),
            Some(Match::Prefix(s)) => StrMatch::Prefix(s.clone()),
            Some(Match::Regex(r)) => StrMatch::Regex(anchored(r)?),
            Some(Match::Present(p)) => StrMatch::Present(*p),
            None => return Err("empty match".into()),
        })
    }

    /// A header or query value (`None`: absent). Prefixes are plain.
    pub fn matches_value(&self, v: Option<&str>) -> bool {
        match (self, v) {
            (StrMatch::Present(p), v) => *p == v.is_some(),
            (_, None) => false,
            (StrMatch::Exact(s), Some(v)) => s == v,
            (StrMatch::Prefix(s), Some(v)) => v.starts_with(s.as_str()),
            (StrMatch::Regex(r), Some(v)) => r.is_match(v),
        }
    }
}

/// A regex that must match the whole value.
fn anchored(r: &str) -> Result<regex_lite::Regex, String> {
    regex_lite::Regex::new(&format!("^(?:{r})$")).map_err(|e| format!("regex {r:?}: {e}"))
}

/// A path condition; prefixes match whole segments.
#[derive(Debug)]
pub struct PathCond(StrMatch);

impl PathCond {
    pub fn build(m: &pb::StringMatch) -> Result<Self, String> {
        let s = StrMatch::build(m)?;
        if let StrMatch::Present(_) = s {
            return Err("a path cannot be matched by presence".into());
        }
        Ok(Self(s))
    }

    pub fn matches(&self, path: &str) -> bool {
        self.matched_prefix(path).is_some()
    }

    /// When the path matches: the length of the prefix matched (the whole
    /// path for exact and regex matches).
    pub fn matched_prefix(&self, path: &str) -> Option<usize> {
        match &self.0 {
            StrMatch::Exact(s) => (s == path).then_some(path.len()),
            StrMatch::Prefix(p) => {
                let p = p.strip_suffix('/').unwrap_or(p);
                let ok = path.starts_with(p)
                    && (path.len() == p.len() || path.as_bytes()[p.len()] == b'/' || p.is_empty());
                ok.then_some(p.len())
            }
            StrMatch::Regex(r) => r.is_match(path).then_some(path.len()),
            StrMatch::Present(_) => None,
        }
    }
}

#[derive(Debug)]
struct Match {
    path: Option<PathCond>,
    method: Option<Method>,
    headers: Vec<(HeaderName, StrMatch)>,
    query: Vec<(String, StrMatch)>,
}

impl Match {
    /// The matched prefix length when the path was matched by one.
    fn matches(
        &self,
        method: &Method,
        path: &str,
        query: &[(String, String)],
        h: &HeaderMap,
    ) -> Option<Option<usize>> {
        let prefix = match &self.path {
            Some(p) => Some(p.matched_prefix(path)?),
            None => None,
        };
        if self.method.as_ref().is_some_and(|m| m != method) {
            return None;
        }
        for (name, m) in &self.headers {
            let mut values = h.get_all(name).iter().map(|v| v.to_str().ok());
            let ok = match m {
                StrMatch::Present(_) => m.matches_value(h.get(name).map(|_| "")),
                _ => values.any(|v| m.matches_value(v)),
            };
            if !ok {
                return None;
            }
        }
        for (name, m) in &self.query {
            let mut values = query
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str());
            let ok = match m {
                StrMatch::Present(_) => m.matches_value(values.next()),
                _ => values.any(|v| m.matches_value(Some(v))),
            };
            if !ok {
                return None;
            }
        }
        Some(prefix)
    }
}

/// Header changes, parsed once.
#[derive(Debug, Default)]
pub struct HeaderOps {
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
}

impl HeaderOps {
    fn build(o: &pb::HeaderOps) -> Result<Self, String> {
        let pair = |(k, v): (&String, &String)| -> Result<(HeaderName, HeaderValue), String> {
            Ok((
                HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| format!("bad header name {k:?}"))?,
                HeaderValue::from_str(v).map_err(|_| format!("bad header value for {k}"))?,
            ))
        };
        Ok(Self {
            set: o.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: o.add.iter().map(pair).collect::<Result<_, _>>()?,
            remove: o
                .remove
                .iter()
                .map(|k| {
                    HeaderName::from_bytes(k.as_bytes())
                        .map_err(|_| format!("bad header name {k:?}"))
                })
                .collect::<Result<_, _>>()?,
        })
    }

    pub fn apply(&self, h: &mut HeaderMap) {
        for n in &self.remove {
            h.remove(n);
        }
        for (n, v) in &self.set {
            h.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            h.append(n.clone(), v.clone());
        }
    }
}

#[derive(Debug)]
enum Rewrite {
    None,
    Prefix(String),
    Full(String),
}

#[derive(Debug)]
pub struct Redirect {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<u16>,
    path: Option<String>,
    pub status: StatusCode,
}

/// A rule as the data path runs it.
#[derive(Debug)]
pub struct HttpRule {
    /// `HttpRoute/NAME/RULE`.
    pub name: Arc<str>,
    matches: Vec<Match>,
    /// Where requests go; `None`: the destination service as a whole.
    pub split: Option<Split>,
    pub mirror: Option<Mirror>,
    pub request_headers: Option<HeaderOps>,
    pub response_headers: Option<HeaderOps>,
    rewrite: Rewrite,
    pub redirect: Option<Redirect>,
    pub timeout: Option<Duration>,
}

/// What a rule matched.
pub struct Selected<'a> {
    pub rule: &'a HttpRule,
    prefix: Option<usize>,
}

/// A destination service's routes.
#[derive(Debug, Default)]
pub struct Routes {
    pub http: Vec<HttpRule>,
    /// Its TCP route's backends, if it has one.
    pub tcp: Option<Split>,
    pub policies: Vec<String>,
}

impl Routes {
    pub fn build(
        c: &pb::Cluster,
        split: &dyn Fn(&[pb::Backend]) -> Result<Split, String>,
        mirror: &dyn Fn(&pb::Mirror) -> Result<Mirror, String>,
    ) -> Result<Self, String> {
        let mut http = Vec::with_capacity(c.http_routes.len());
        for r in &c.http_routes {
            let e = |x: String| format!("route {}: {x}", r.name);
            let matches = r
                .matches
                .iter()
                .map(|m| -> Result<Match, String> {
                    Ok(Match {
                        path: m.path.as_ref().map(PathCond::build).transpose()?,
                        method: (!m.method.is_empty())
                            .then(|| Method::from_bytes(m.method.as_bytes()))
                            .transpose()
                            .map_err(|_| format!("bad method {:?}", m.method))?,
                        headers: m
                            .headers
                            .iter()
                            .map(|h| -> Result<_, String> {
                                Ok((
                                    HeaderName::from_bytes(h.name.as_bytes())
                                        .map_err(|_| format!("bad header name {:?}", h.name))?,
                                    StrMatch::build(h.r#match.as_ref().ok_or("empty match")?)?,
                                ))
                            })
                            .collect::<Result<_, _>>()?,
                        query: m
                            .query
                            .iter()
                            .map(|q| -> Result<_, String> {
                                Ok((
                                    q.name.clone(),
                                    StrMatch::build(q.r#match.as_ref().ok_or("empty match")?)?,
                                ))
                            })
                            .collect::<Result<_, _>>()?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(e)?;
            let rewrite = if !r.rewrite_prefix.is_empty() {
                Rewrite::Prefix(r.rewrite_prefix.clone())
            } else if !r.rewrite_path.is_empty() {
                Rewrite::Full(r.rewrite_path.clone())
            } else {
                Rewrite::None
            };
            http.push(HttpRule {
                name: r.name.as_str().into(),
                matches,
                split: (!r.backends.is_empty())
                    .then(|| split(&r.backends))
                    .transpose()
                    .map_err(e)?,
                mirror: r.mirror.as_ref().map(mirror).transpose().map_err(e)?,
                request_headers: r
                    .request_headers
                    .as_ref()
                    .map(HeaderOps::build)
                    .transpose()
                    .map_err(e)?,
                response_headers: r
                    .response_headers
                    .as_ref()
                    .map(HeaderOps::build)
                    .transpose()
                    .map_err(e)?,
                rewrite,
                redirect: r
                    .redirect
                    .as_ref()
                    .map(|d| -> Result<Redirect, String> {
                        Ok(Redirect {
                            scheme: (!d.scheme.is_empty()).then(|| d.scheme.clone()),
                            host: (!d.host.is_empty()).then(|| d.host.clone()),
                            port: (d.port != 0)
                                .then(|| u16::try_from(d.port).map_err(|_| "bad port".to_string()))
                                .transpose()?,
                            path: (!d.path.is_empty()).then(|| d.path.clone()),
                            status: StatusCode::from_u16(d.status as u16)
                                .ok()
                                .filter(|s| s.is_redirection())
                                .ok_or_else(|| format!("bad redirect status {}", d.status))?,
                        })
                    })
                    .transpose()
                    .map_err(e)?,
                timeout: (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms)),
            });
        }
        Ok(Self {
            http,
            tcp: c
                .tcp_route
                .as_ref()
                .map(|t| split(&t.backends).map_err(|x| format!("route {}: {x}", t.name)))
                .transpose()?,
            policies: c.policies.clone(),
        })
    }

    pub fn dump(&self) -> serde_json::Value {
        serde_json::json!({
            "policies": self.policies,
            "http": self.http.iter().map(|r| serde_json::json!({
                "name": r.name.as_ref(),
                "matches": r.matches.len(),
                "backends": r.split.as_ref().map(|s| s.dump()),
                "mirror": r.mirror.as_ref().map(|m| serde_json::json!({
                    "service": m.cluster.service,
                    "endpoints": m.cluster.endpoints.len(),
                    "perMillion": m.per_million,
                })),
                "redirect": r.redirect.as_ref().map(|d| d.status.as_u16()),
                "timeoutMs": r.timeout.map(|t| t.as_millis() as u64),
            })).collect::<Vec<_>>(),
            "tcp": self.tcp.as_ref().map(|s| s.dump()),
        })
    }

    /// The first rule that matches the request.
    pub fn select(
        &self,
        method: &Method,
        uri: &http::Uri,
        headers: &HeaderMap,
    ) -> Option<Selected<'_>> {
        if self.http.is_empty() {
            return None;
        }
        let path = uri.path();
        let query = uri.query().map(parse_query).unwrap_or_default();
        for rule in &self.http {
            if rule.matches.is_empty() {
                return Some(Selected { rule, prefix: None });
            }
            if let Some(prefix) = rule
                .matches
                .iter()
                .find_map(|m| m.matches(method, path, &query, headers))
            {
                return Some(Selected { rule, prefix });
            }
        }
        None
    }
}

impl Selected<'_> {
    /// The request's path and query after the rule's rewrite (the query is
    /// kept), or `None` when the rule does not rewrite.
    pub fn rewritten(&self, uri: &http::Uri) -> Option<String> {
        let path = uri.path();
        let new_path = match &self.rule.rewrite {
            Rewrite::None => return None,
            Rewrite::Full(p) => p.clone(),
            Rewrite::Prefix(p) => {
                let rest = &path[self.prefix.unwrap_or(0).min(path.len())..];
                match (p.ends_with('/'), rest.starts_with('/')) {
                    (true, true) => format!("{p}{}", &rest[1..]),
                    (false, false) if !rest.is_empty() => format!("{p}/{rest}"),
                    _ => format!("{p}{rest}"),
                }
            }
        };
        Some(match uri.query() {
            Some(q) => format!("{new_path}?{q}"),
            None => new_path,
        })
    }

    /// The `location` of the rule's redirect, from the request's URI and
    /// `Host`.
    pub fn location(&self, uri: &http::Uri, host: Option<&str>) -> Option<String> {
        let r = self.rule.redirect.as_ref()?;
        let host_header = host.unwrap_or("");
        let (h, p) = match host_header.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h, Some(p)),
            _ => (host_header, None),
        };
        let host = r.host.as_deref().unwrap_or(h);
        let port = match r.port {
            Some(p) => Some(p.to_string()),
            None if r.host.is_some() => None,
            None => p.map(str::to_string),
        };
        let path = r.path.as_deref().unwrap_or(uri.path());
        let scheme = r.scheme.as_deref().unwrap_or("http");
        let mut s = format!("{scheme}://{host}");
        if let Some(p) = port {
            s.push(':');
            s.push_str(&p);
        }
        s.push_str(path);
        if let Some(q) = uri.query() {
            s.push('?');
            s.push_str(q);
        }
        Some(s)
    }
}

/// Query parameters, decoded as forms are (`+` is a space).
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::string_match::Match as M;

    fn sm(m: M) -> Option<pb::StringMatch> {
        Some(pb::StringMatch { r#match: Some(m) })
    }

    fn no_split(_: &[pb::Backend]) -> Result<Split, String> {
        Err("no backends in this test".into())
    }
    fn no_mirror(_: &pb::Mirror) -> Result<Mirror, String> {
        Err("no mirror in this test".into())
    }

    fn routes(rules: Vec<pb::HttpRouteRule>) -> Routes {
        let c = pb::Cluster {
            service: "api".into(),
            http_routes: rules,
            ..Default::default()
        };
        Routes::build(&c, &no_split, &no_mirror).unwrap()
    }

    fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> (Method, http::Uri, HeaderMap) {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        (method.parse().unwrap(), uri.parse().unwrap(), h)
    }

    fn selected(r: &Routes, method: &str, uri: &str, headers: &[(&str, &str)]) -> Option<String> {
        let (m, u, h) = req(method, uri, headers);
        r.select(&m, &u, &h).map(|s| s.rule.name.to_string())
    }

    #[test]
    fn rules_match_on_path_method_headers_and_query_in_order() {
        let r = routes(vec![
            pb::HttpRouteRule {
                name: "exact".into(),
                matches: vec![pb::HttpMatch {
                    path: sm(M::Exact("/health".into())),
                    ..Default::default()
                }],
                ..Default::default()
            },
            pb::HttpRouteRule {
                name: "v2-alice".into(),
                matches: vec![pb::HttpMatch {
                    path: sm(M::Prefix("/v2".into())),
                    method: "GET".into(),
                    headers: vec![pb::NamedMatch {
                        name: "x-user".into(),
                        r#match: sm(M::Regex("al(ice|an)".into())),
                    }],
                    query: vec![pb::NamedMatch {
                        name: "debug".into(),
                        r#match: sm(M::Present(true)),
                    }],
                }],
                ..Default::default()
            },
            pb::HttpRouteRule {
                name: "no-beta-header".into(),
                matches: vec![pb::HttpMatch {
                    headers: vec![pb::NamedMatch {
                        name: "x-beta".into(),
                        r#match: sm(M::Present(false)),
                    }],
                    query: vec![pb::NamedMatch {
                        name: "q".into(),
                        r#match: sm(M::Exact("a b".into())),
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        ]);
        assert_eq!(
            selected(&r, "GET", "/health", &[]).as_deref(),
            Some("exact")
        );
        assert_eq!(selected(&r, "GET", "/health/x", &[]), None);
        assert_eq!(
            selected(&r, "GET", "/v2/items?debug", &[("x-user", "alan")]).as_deref(),
            Some("v2-alice")
        );
        // The regex matches the whole value.
        assert_eq!(
            selected(&r, "GET", "/v2/items?debug", &[("x-user", "xalice")]),
            None
        );
        // Whole segments: /v20 is not under /v2.
        assert_eq!(
            selected(&r, "GET", "/v20?debug", &[("x-user", "alice")]),
            None
        );
        assert_eq!(
            selected(&r, "POST", "/v2?debug", &[("x-user", "alice")]),
            None
        );
        // Query values are decoded; an absent header matches present: false.
        assert_eq!(
            selected(&r, "GET", "/x?q=a+b", &[]).as_deref(),
            Some("no-beta-header")
        );
        assert_eq!(
            selected(&r, "GET", "/x?q=a%20b", &[]).as_deref(),
            Some("no-beta-header")
        );
        assert_eq!(selected(&r, "GET", "/x?q=a%20b", &[("x-beta", "1")]), None);
    }

    #[test]
    fn rewrites_keep_the_query_and_redirects_build_a_location() {
        let r = routes(vec![
            pb::HttpRouteRule {
                name: "old-api".into(),
                matches: vec![pb::HttpMatch {
                    path: sm(M::Prefix("/old/".into())),
                    ..Default::default()
                }],
                rewrite_prefix: "/new".into(),
                ..Default::default()
            },
            pb::HttpRouteRule {
                name: "moved".into(),
                matches: vec![pb::HttpMatch {
                    path: sm(M::Prefix("/docs".into())),
                    ..Default::default()
                }],
                redirect: Some(pb::Redirect {
                    host: "docs.example.com".into(),
                    scheme: "https".into(),
                    status: 301,
                    ..Default::default()
                }),
                ..Default::default()
            },
            pb::HttpRouteRule {
                name: "all".into(),
                rewrite_path: "/fixed".into(),
                ..Default::default()
            },
        ]);
        let (m, u, h) = req("GET", "/old/items/1?x=1", &[]);
        let s = r.select(&m, &u, &h).unwrap();
        assert_eq!(s.rewritten(&u).as_deref(), Some("/new/items/1?x=1"));
        let u2: http::Uri = "/old".parse().unwrap();
        assert_eq!(
            r.select(&m, &u2, &h).unwrap().rewritten(&u2).as_deref(),
            Some("/new")
        );
        let (m, u, h) = req("GET", "/docs/a?b=c", &[]);
        let s = r.select(&m, &u, &h).unwrap();
        assert_eq!(
            s.rule.redirect.as_ref().unwrap().status,
            StatusCode::MOVED_PERMANENTLY
        );
        assert_eq!(
            s.location(&u, Some("api:8080")).as_deref(),
            Some("https://docs.example.com/docs/a?b=c")
        );
        let (m, u, h) = req("GET", "/anything?z", &[]);
        let s = r.select(&m, &u, &h).unwrap();
        assert_eq!(s.rule.name.as_ref(), "all");
        assert_eq!(s.rewritten(&u).as_deref(), Some("/fixed?z"));
        assert!(s.location(&u, None).is_none());
    }

    #[test]
    fn header_operations_set_add_and_remove() {
        let ops = HeaderOps::build(&pb::HeaderOps {
            set: [("x-env".to_string(), "prod".to_string())].into(),
            add: [("x-tag".to_string(), "b".to_string())].into(),
            remove: vec!["x-secret".into()],
        })
        .unwrap();
        let (_, _, mut h) = req(
            "GET",
            "/",
            &[("x-env", "dev"), ("x-tag", "a"), ("x-secret", "s")],
        );
        ops.apply(&mut h);
        assert_eq!(h.get("x-env").unwrap(), "prod");
        let tags: Vec<_> = h.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
        assert!(h.get("x-secret").is_none());
    }

    #[test]
    fn percent_decoding_leaves_bad_escapes_alone() {
        assert_eq!(decode("a%2Fb"), "a/b");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz"), "%zz");
        assert_eq!(decode("%4"), "%4");
    }
}
