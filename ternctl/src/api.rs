//! The global control plane's admin API, as ternctl reaches it: where the
//! server and token come from (flags, the config file), and the calls.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Deserialize;
use serde_json::{json, Value};

/// Where to reach the global: what the flags said (each may be unset).
#[derive(Clone)]
pub(crate) struct Target {
    pub config: Option<PathBuf>,
    pub server: Option<String>,
    pub token: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct FileConfig {
    server: String,
    token: String,
}

pub(crate) struct Api {
    server: String,
    token: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

pub(crate) fn default_config_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".tern/config.json"))
}

/// Read a ternctl config (it holds the admin token), refusing one that
/// other users can read.
pub(crate) fn read_config(p: &Path) -> anyhow::Result<FileConfig> {
    let text = model::fsutil::read_secret(p)?;
    serde_json::from_str(&text).with_context(|| format!("{} is not a ternctl config", p.display()))
}

impl Api {
    pub(crate) fn new(cli: Target) -> anyhow::Result<Self> {
        let local = PathBuf::from("tern-global-data/ternctl.json");
        let path = cli.config.clone().or_else(|| {
            default_config_path()
                .filter(|p| p.exists())
                .or_else(|| local.exists().then_some(local))
        });
        let file: Option<FileConfig> = match &path {
            Some(p) if p.exists() => Some(read_config(p)?),
            Some(p) if cli.config.is_some() => bail!("config file {} does not exist", p.display()),
            _ => None,
        };
        let server = cli
            .server
            .or_else(|| file.as_ref().map(|f| f.server.clone()))
            .unwrap_or_else(|| "http://127.0.0.1:5681".into());
        let token = cli
            .token
            .or_else(|| file.as_ref().map(|f| f.token.clone()))
            .context(
                "no admin token: set TERN_CONFIG to the global's <data-dir>/ternctl.json, \
                 run `ternctl use-config <data-dir>/ternctl.json`, or pass --token",
            )?;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        Ok(Self {
            server: server.trim_end_matches('/').to_string(),
            token,
            client,
        })
    }

    pub(crate) async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let (status, v, _) = self.call_warned(method, path, body).await?;
        Ok((status, v))
    }

    /// [`Api::call`], with the `Warning` headers the server sent.
    pub(crate) async fn call_warned(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, Value, Vec<String>)> {
        let url = format!("{}{}", self.server, path);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&url)
            .header("authorization", format!("Bearer {}", self.token));
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(b)?)
            }
            None => Bytes::new(),
        };
        let resp = self
            .client
            .request(req.body(Full::new(bytes))?)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the global control plane at {}: {}; is it running, and is that its admin address? (--server / TERN_CONFIG)", self.server, chain(&e)))?;
        let status = resp.status().as_u16();
        // `299 - "text"`, as Kubernetes sends them.
        let warnings = resp
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|w| {
                w.split_once(" - ")
                    .map(|(_, t)| t.trim_matches('"'))
                    .unwrap_or(w)
                    .to_string()
            })
            .collect();
        let b = resp.into_body().collect().await?.to_bytes();
        let v = serde_json::from_slice(&b)
            .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&b) }));
        Ok((status, v, warnings))
    }

    pub(crate) async fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, v) = self.call(method, path, body).await?;
        if status >= 400 {
            match v.get("error").and_then(Value::as_str) {
                Some(e) if !e.trim().is_empty() => bail!("{e}"),
                _ => bail!(
                    "the global answered {status}{} to {method} {path}",
                    hyper::StatusCode::from_u16(status)
                        .ok()
                        .and_then(|s| s.canonical_reason())
                        .map(|r| format!(" {r}"))
                        .unwrap_or_default()
                ),
            }
        }
        Ok(v)
    }
}

/// A resource's name, checked before it goes into a URL path: a `?` or
/// `#` in it would otherwise cut the path short and name another resource.
pub(crate) fn name(n: &str) -> anyhow::Result<&str> {
    model::resource::check_name("name", n)
        .map_err(|e| anyhow::anyhow!("{n:?} is not a resource name: {}", e.message))?;
    Ok(n)
}

/// What went wrong reaching the global, cause by cause (no debug dumps).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// A query parameter value (or a path segment that is not a resource
/// name), percent-encoded.
pub(crate) fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `ternctl use-config`: make a config file the default (it holds the
/// admin token: 0600 in a 0700 folder).
pub(crate) fn use_config(path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let _: FileConfig = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a ternctl config", path.display()))?;
    let dest = default_config_path().context("HOME is not set")?;
    model::fsutil::private_dir(dest.parent().expect("has a parent"), &[])?;
    model::fsutil::write_private(&dest, &text)?;
    println!("ternctl now uses {}", dest.display());
    Ok(())
}
