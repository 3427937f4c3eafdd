//! Resources in the global's store: `ternctl apply`, `get` and `delete`.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use model::resource::{self, Resource};
use serde_json::{json, Value};

use crate::api::{Api, Target};
use crate::output::{print_value, s, table, Output};

/// Validate every document locally, then at the global as a dry run, then
/// send each; nothing is written while any document is invalid or would be
/// refused.
pub async fn apply(target: Target, files: &[String], dry_run: bool) -> anyhow::Result<()> {
    let mut docs: Vec<(String, usize, Resource)> = Vec::new();
    let mut errors = Vec::new();
    for (name, text) in read_sources(files)? {
        match resource::parse_documents(&name, &text) {
            Ok(rs) => docs.extend(
                rs.into_iter()
                    .enumerate()
                    .map(|(i, r)| (name.clone(), i + 1, r)),
            ),
            Err(es) => errors.extend(es),
        }
    }
    // The same resource twice in one batch: the second would silently
    // replace the first.
    let mut seen = std::collections::HashMap::new();
    let mut repeated = Vec::new();
    for (file, i, r) in &docs {
        if let Some((f0, i0)) = seen.insert(r.key(), (file, i)) {
            repeated.push(format!(
                "{file}: document {i} ({}/{}) repeats document {i0} of {f0}; give each resource once",
                r.kind, r.metadata.name
            ));
        }
    }
    if !errors.is_empty() || !repeated.is_empty() {
        for e in &errors {
            eprintln!("error: {e}");
        }
        for e in &repeated {
            eprintln!("error: {e}");
        }
        bail!(
            "{} invalid document(s); nothing was applied",
            errors.len() + repeated.len()
        );
    }
    if docs.is_empty() {
        bail!("no resources found in {}", files.join(", "));
    }
    let api = Api::new(target)?;
    // Every document as a dry run first: the global checks what only it
    // can (versions, kinds it writes itself), and nothing is written while
    // any document would be refused.
    let mut results = Vec::with_capacity(docs.len());
    let mut refused = 0;
    for (file, _, r) in &docs {
        let (status, v, warnings) = api
            .call_warned("PUT", &put_path(r, true), Some(&serde_json::to_value(r)?))
            .await?;
        for w in &warnings {
            eprintln!("warning: {w}");
        }
        if status == 200 {
            results.push(s(&v, "/result"));
        } else {
            refused += 1;
            report(file, r, &v);
        }
    }
    if refused > 0 {
        bail!("{refused} resource(s) would be refused; nothing was applied");
    }
    if dry_run {
        for ((_, _, r), result) in docs.iter().zip(&results) {
            println!("{} {result} (dry run)", what(r));
        }
        return Ok(());
    }
    let mut failed = 0;
    for ((file, _, r), result) in docs.iter().zip(&results) {
        let (status, v) = api
            .call("PUT", &put_path(r, false), Some(&serde_json::to_value(r)?))
            .await?;
        match status {
            201 => println!("{} created", what(r)),
            200 => println!(
                "{} {} (version {})",
                what(r),
                // A document the dry run found new was created meanwhile.
                if result == "created" {
                    "configured"
                } else {
                    result
                },
                s(&v, "/metadata/resourceVersion")
            ),
            _ => {
                // Changed by someone else since the dry run.
                failed += 1;
                report(file, r, &v);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} resource(s) were not applied (changed since the dry run)");
    }

    Ok(())
}

fn put_path(r: &Resource, dry_run: bool) -> String {
    let info = resource::kind_info(&r.kind).expect("validated");
    format!(
        "/api/v1/{}/{}{}",
        info.plural,
        r.metadata.name,
        if dry_run { "?dryRun=true" } else { "" }
    )
}

/// The global's refusal of one document.
fn report(file: &str, r: &Resource, v: &Value) {
    let why = v.get("error").and_then(Value::as_str).unwrap_or("refused");
    eprintln!("error: {file}: {}: {why}", what(r));
}

fn what(r: &Resource) -> String {
    format!("{}/{}", r.kind.to_lowercase(), r.metadata.name)
}

/// One resource, or every resource of a kind.
pub async fn get(
    api: &Api,
    kind: &str,
    name: Option<String>,
    output: Output,
) -> anyhow::Result<()> {
    let p = plural(kind)?;
    let items: Vec<Value> = match &name {
        Some(n) => vec![
            api.ok(
                "GET",
                &format!("/api/v1/{p}/{}", crate::api::name(n)?),
                None,
            )
            .await?,
        ],
        None => api.ok("GET", &format!("/api/v1/{p}"), None).await?["items"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    if !matches!(output, Output::Table | Output::Wide) {
        let v = if name.is_some() {
            items[0].clone()
        } else {
            json!({ "items": items })
        };
        return print_value(&v, output);
    }
    if items.is_empty() {
        eprintln!("no {p} found");
        return Ok(());
    }
    table(
        &["NAME", "VERSION", "UPDATED", "SPEC"],
        items
            .iter()
            .map(|r| {
                vec![
                    s(r, "/metadata/name"),
                    s(r, "/metadata/resourceVersion"),
                    s(r, "/metadata/updateTimestamp"),
                    r.get("spec")
                        .filter(|x| !x.is_null())
                        .map_or_else(|| "-".into(), |x| x.to_string()),
                ]
            })
            .collect(),
    );
    Ok(())
}

pub async fn delete(api: &Api, kind: &str, name: &str) -> anyhow::Result<()> {
    if matches!(kind, "token" | "tokens") {
        bail!("tokens are not deleted: revoke one with `ternctl revoke ID` (its id from `ternctl get tokens`)");
    }
    let p = plural(kind)?;
    api.ok(
        "DELETE",
        &format!("/api/v1/{p}/{}", crate::api::name(name)?),
        None,
    )
    .await?;
    println!("{}/{name} deleted", kind.to_lowercase());
    Ok(())
}

/// Files given to apply: each file, each *.yaml/*.yml/*.json in a folder
/// (sorted), or stdin for `-`.
fn read_sources(args: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for a in args {
        if a == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("read stdin")?;
            out.push(("<stdin>".to_string(), s));
            continue;
        }
        let p = Path::new(a);
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("read folder {a}"))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
                })
                .collect();
            entries.sort();
            for e in entries {
                let text =
                    std::fs::read_to_string(&e).with_context(|| format!("read {}", e.display()))?;
                out.push((e.display().to_string(), text));
            }
        } else {
            let text = std::fs::read_to_string(p).with_context(|| format!("read {a}"))?;
            out.push((a.clone(), text));
        }
    }
    Ok(out)
}

fn plural(kind: &str) -> anyhow::Result<&'static str> {
    resource::kind_info(kind)
        .map(|k| k.plural)
        .with_context(|| {
            format!(
                "unknown kind {kind:?}; known kinds: {}, and tokens",
                resource::known_kinds()
            )
        })
}
