//! `AccessPolicy` (who may call the proxies it targets) and `MtlsPolicy`
//! (whether they also accept plaintext).
//!
//! ```yaml
//! kind: AccessPolicy
//! metadata: {name: api-callers}
//! spec:
//!   targetRef: {service: api}       # the destinations that enforce it
//!   mode: enforce                   # or shadow: count, do not deny
//!   rules:
//!     - name: web-reads
//!       action: allow
//!       from: [{service: web}, {region: eu-west}]
//!       when: {methods: [GET, HEAD], paths: [{prefix: /v1/}]}
//!     - name: everyone-else
//!       action: deny
//! ```

use serde::{Deserialize, Serialize};

use super::route::{check_method_list, PathMatch};
use super::{Mode, Selector, Targeted};
use crate::resource::{check_name, FieldError};

pub const MAX_RULES: usize = 256;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    #[default]
    Allow,
    Deny,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessPolicySpec {
    #[serde(default)]
    pub target_ref: Selector,
    #[serde(default)]
    pub mode: Mode,
    pub rules: Vec<AccessRule>,
}

impl Targeted for AccessPolicySpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessRule {
    /// Named in the 403 body, logs and metrics; `rule-N` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub action: Action,
    /// Callers, any of these (by the identity their certificate carries).
    /// None: every caller, plaintext ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<Selector>,
    /// HTTP conditions; a rule with conditions never matches a TCP flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<HttpCondition>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpCondition {
    /// Any of these; none: any method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Any of these; none: any path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<PathMatch>,
}

impl AccessPolicySpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")?;
        if self.rules.is_empty() || self.rules.len() > MAX_RULES {
            return Err(FieldError::new(
                "spec.rules",
                format!("give 1 to {MAX_RULES} rules"),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, r) in self.rules.iter().enumerate() {
            let p = format!("spec.rules[{i}]");
            check_rule(&p, "rules", r.name.as_deref(), i, &mut names)?;
            check_callers_and_conditions(&p, &r.from, r.when.as_ref())?;
        }
        Ok(())
    }
}

/// A rule's (or fault's) name: valid, and unique within its list
/// (`what`: the list's name, for the error).
pub(super) fn check_rule(
    p: &str,
    what: &str,
    name: Option<&str>,
    index: usize,
    names: &mut std::collections::BTreeSet<String>,
) -> Result<(), FieldError> {
    if let Some(n) = name {
        check_name(&format!("{p}.name"), n)?;
    }
    let name = super::route::rule_name(name, index);
    if !names.insert(name.clone()) {
        return Err(FieldError::new(
            format!("{p}.name"),
            format!("two {what} are named {name:?}"),
        ));
    }
    Ok(())
}

/// `from` (callers) and `when` (HTTP conditions) of a rule or fault.
pub(super) fn check_callers_and_conditions(
    p: &str,
    from: &[Selector],
    when: Option<&HttpCondition>,
) -> Result<(), FieldError> {
    if from.len() > 64 {
        return Err(FieldError::new(format!("{p}.from"), "at most 64 callers"));
    }
    for (j, f) in from.iter().enumerate() {
        f.check(&format!("{p}.from[{j}]"))?;
    }
    if let Some(w) = when {
        let wp = format!("{p}.when");
        if w.methods.len() > 16 || w.paths.len() > 32 {
            return Err(FieldError::new(wp, "at most 16 methods and 32 paths"));
        }
        check_method_list(&format!("{wp}.methods"), &w.methods)?;
        for (j, pm) in w.paths.iter().enumerate() {
            pm.check(&format!("{wp}.paths[{j}]"))?;
        }
    }
    Ok(())
}

/// `strict`: mTLS only (the default). `permissive`: the inbound port also
/// accepts plaintext, for moving a service onto the mesh; plaintext
/// callers have no identity, so only access rules without `from` match
/// them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MtlsMode {
    #[default]
    Strict,
    Permissive,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MtlsPolicySpec {
    #[serde(default)]
    pub target_ref: Selector,
    pub mode: MtlsMode,
}

impl Targeted for MtlsPolicySpec {
    fn target(&self) -> &Selector {
        &self.target_ref
    }
}

impl MtlsPolicySpec {
    pub fn check(&self) -> Result<(), FieldError> {
        self.target_ref.check("spec.targetRef")
    }
}

/// `Mesh` `spec.access`: what happens to a request no access rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessDefaults {
    /// `allow` (the default) or `deny`.
    pub default: Action,
    /// `shadow` with `default: deny`: count and log what a deny-all mesh
    /// would refuse, and let it through.
    pub mode: Mode,
}
