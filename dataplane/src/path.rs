//! Request paths in one canonical spelling, before any rule sees them and
//! before they are forwarded: a path an access rule, a rate limit, a fault
//! or a route checks is the path the app receives. Without this, a rule on
//! `/admin` would not see `/%61dmin`, `//admin` or `/public/../admin`,
//! which many servers treat as `/admin`.
//!
//! The steps are RFC 3986's normalization (section 6.2.2) plus merged
//! slashes, as Envoy's `normalize_path` and `merge_slashes` do:
//! percent-encoded unreserved characters are decoded and other escapes
//! are written in upper case; `//` becomes `/`; `.` and `..` segments are
//! resolved (never above the root). An encoded slash or backslash (`%2F`,
//! `%5C`) stays encoded: decoding it would change which segments the app
//! sees. A malformed escape (`%` without two hex digits) is refused.

use std::borrow::Cow;

use http::uri::{PathAndQuery, Uri};

/// Why a path was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed percent-encoding in the request path (a % must be followed by two hex digits)")]
pub struct BadPath;

/// The canonical spelling of an origin-form path (no query). Anything that
/// does not start with `/` (such as `*`) is returned as it is.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, BadPath> {
    if !path.starts_with('/') || is_canonical(path) {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len() - 1;
    // Whether the result ends in a slash: the input did, or its last
    // segment was `.` or `..` (`/a/b/..` is the folder `/a/`).
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "" | "." => trailing = i == last,
            ".." => {
                out.pop();
                trailing = i == last;
            }
            s => {
                out.push(s);
                trailing = false;
            }
        }
    }
    let mut n = String::with_capacity(decoded.len());
    for s in &out {
        n.push('/');
        n.push_str(s);
    }
    if trailing || out.is_empty() {
        n.push('/');
    }
    Ok(Cow::Owned(n))
}

/// Rewrite `req`'s path to its canonical spelling.
pub fn canonical<B>(req: &mut http::Request<B>) -> Result<(), BadPath> {
    if let Some(uri) = normalize_uri(req.uri())? {
        *req.uri_mut() = uri;
    }
    Ok(())
}

/// `uri` with its path normalized (the query kept as it is); `None` when it
/// is already canonical.
pub fn normalize_uri(uri: &Uri) -> Result<Option<Uri>, BadPath> {
    let path = uri.path();
    let Cow::Owned(n) = normalize(path)? else {
        return Ok(None);
    };
    let pq = match uri.query() {
        Some(q) => format!("{n}?{q}"),
        None => n,
    };
    let mut parts = uri.clone().into_parts();
    // A normalized path holds only characters the original held, so it
    // parses whenever the original did.
    parts.path_and_query = Some(PathAndQuery::try_from(pq).map_err(|_| BadPath)?);
    Uri::from_parts(parts).map(Some).map_err(|_| BadPath)
}

/// No escapes, no empty segment, no dot segment: nothing to do (the
/// common case, checked without allocating).
fn is_canonical(path: &str) -> bool {
    let b = path.as_bytes();
    !b.contains(&b'%')
        && !path.contains("//")
        && !b[1..]
            .split(|c| *c == b'/')
            .any(|s| s == b"." || s == b"..")
}

fn decode_unreserved(path: &str) -> Result<String, BadPath> {
    let b = path.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            let c = path[i..].chars().next().expect("in bounds");
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let hex = |c: u8| (c as char).to_digit(16);
        let (Some(hi), Some(lo)) = (
            b.get(i + 1).and_then(|c| hex(*c)),
            b.get(i + 2).and_then(|c| hex(*c)),
        ) else {
            return Err(BadPath);
        };
        let v = (hi * 16 + lo) as u8;
        if v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~') {
            out.push(v as char);
        } else {
            out.push_str(&format!("%{v:02X}"));
        }
        i += 3;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str) -> String {
        normalize(p).unwrap().into_owned()
    }

    /// The spellings a rule on `/admin` must see as `/admin`, and the
    /// ones that must stay what they are.
    #[test]
    fn other_spellings_of_a_path_become_the_canonical_one() {
        for p in [
            "/admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "//admin",
            "/./admin",
            "/public/../admin",
            "/public/%2E%2E/admin",
            "/../../admin",
        ] {
            assert_eq!(n(p), "/admin", "{p}");
        }
        assert_eq!(n("/a//b///c/"), "/a/b/c/");
        assert_eq!(n("/a/b/.."), "/a/");
        assert_eq!(n("/a/."), "/a/");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/"), "/");
        // Reserved characters stay encoded, in upper case; an encoded
        // slash is not a segment boundary.
        assert_eq!(n("/a%2fb"), "/a%2Fb");
        assert_eq!(n("/a%2Fb/../c"), "/c");
        assert_eq!(n("/x%3f%20y"), "/x%3F%20y");
        // Not dot segments.
        assert_eq!(n("/.well-known/x"), "/.well-known/x");
        assert_eq!(n("/a/..b/c."), "/a/..b/c.");
        assert_eq!(n("*"), "*");
        // Non-ASCII (as hyper hands it over) survives.
        assert_eq!(n("/caf\u{e9}//x"), "/caf\u{e9}/x");
    }

    #[test]
    fn canonical_paths_are_not_copied() {
        for p in ["/", "/a", "/a/b/", "/.well-known/x", "/a.b/c..d"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
        for p in ["//", "/a//b", "/a/./b", "/a/..", "/%41"] {
            assert!(matches!(normalize(p), Ok(Cow::Owned(_))), "{p}");
        }
    }

    #[test]
    fn a_malformed_escape_is_refused() {
        for p in ["/a%", "/a%4", "/a%zz", "/%g1"] {
            assert_eq!(normalize(p), Err(BadPath), "{p}");
        }
    }

    #[test]
    fn the_query_is_kept_as_it_is() {
        let u: Uri = "/a/../b?x=%2e%2e&y=//".parse().unwrap();
        let n = normalize_uri(&u).unwrap().unwrap();
        assert_eq!(n.path_and_query().unwrap().as_str(), "/b?x=%2e%2e&y=//");
        let u: Uri = "http://api:80//b?q".parse().unwrap();
        assert_eq!(
            normalize_uri(&u).unwrap().unwrap().to_string(),
            "http://api:80/b?q"
        );
        assert!(normalize_uri(&"/b?q".parse().unwrap()).unwrap().is_none());
    }
}
