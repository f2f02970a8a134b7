//! One authorization policy: ordered allow/deny rules over the method, the caller's
//! certificate identity and the token's subject, issuer, audience and scopes. The first
//! rule that matches a call decides; a call no rule matches is denied. Without a policy
//! file the built-in scope table ([`crate::api::METHODS`]) is the policy.
//!
//! ```toml
//! [[rule]]
//! name = "partners-read-only"          # metric label and log field
//! effect = "deny"
//! methods = ["jisucloud.v1.OrderService/*", "jisucloud.v1.UserService/Delete*"]
//! callers = ["spiffe://partner.example/*"]
//!
//! [[rule]]
//! name = "readers"
//! effect = "allow"
//! methods = ["jisucloud.v1.UserService/Get*"]
//! scopes = ["users:read"]              # all of them
//! subjects = ["*"]                     # also: issuers, audiences
//! ```
//!
//! Patterns use `*` (any run of characters) and `?`. A rule without a condition on a field
//! matches any value of it. Every decision is counted in
//! `jisu_authz_decisions_total{decision,rule}` and recorded on the call's span; a deny
//! names its rule in the log, never in the response.
use std::{path::Path, sync::Arc};

use metrics::Counter;
use serde::Deserialize;
use wildmatch::WildMatch;

use crate::api::METHODS;
use crate::telemetry::metrics::Metrics;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: String,
    effect: Effect,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    callers: Vec<String>,
    #[serde(default)]
    subjects: Vec<String>,
    #[serde(default)]
    issuers: Vec<String>,
    #[serde(default)]
    audiences: Vec<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    #[serde(default, rename = "rule")]
    rules: Vec<RuleSpec>,
}

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
}

/// What one call looks like to the policy.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// `package.Service/Method`.
    pub method: &'a str,
    /// The client certificate's identity (URI SAN, DNS SAN or CN).
    pub caller: &'a str,
    pub subject: &'a str,
    pub issuer: &'a str,
    pub audiences: &'a [String],
    pub scopes: &'a [String],
}

/// Any of the patterns matches (an empty list matches everything).
#[derive(Debug)]
struct Patterns(Vec<WildMatch>);

impl Patterns {
    fn new(patterns: &[String]) -> Self {
        Self(patterns.iter().map(|p| WildMatch::new(p)).collect())
    }

    fn any(&self, value: &str) -> bool {
        self.0.is_empty() || self.0.iter().any(|p| p.matches(value))
    }
}

#[derive(Debug)]
struct Rule {
    name: Arc<str>,
    effect: Effect,
    methods: Patterns,
    callers: Patterns,
    subjects: Patterns,
    issuers: Patterns,
    audiences: Patterns,
    scopes: Vec<String>,
    counter: Counter,
}

impl Rule {
    fn matches(&self, call: &Call<'_>) -> bool {
        self.methods.any(call.method) && self.matches_caller(call)
    }

    /// Everything but the method.
    fn matches_caller(&self, call: &Call<'_>) -> bool {
        self.callers.any(call.caller)
            && self.subjects.any(call.subject)
            && self.issuers.any(call.issuer)
            && (self.audiences.0.is_empty() || call.audiences.iter().any(|a| self.audiences.any(a)))
            && self.scopes.iter().all(|s| call.scopes.contains(s))
    }
}

/// The decision on one call.
#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    /// The deciding rule's name; `default` when no rule matched.
    pub rule: Arc<str>,
}

/// A loaded policy.
#[derive(Debug)]
pub struct Policy {
    rules: Vec<Rule>,
    /// For each method of the table ([`METHODS`] order, the position
    /// [`crate::api::served_index`] gives), the rules whose method patterns match it, in
    /// order: matched once at load, so a call tests only the rules that can apply to it,
    /// and no method pattern (see [`Policy::decide_at`]).
    by_method: Vec<Box<[usize]>>,
    /// Where it came from, for the logs (`built-in` or the file).
    pub source: String,
    /// The built-in scope table: a deny can then name the missing scope.
    pub builtin: bool,
    default_deny: Counter,
}

fn counter(metrics: &Metrics, decision: &'static str, rule: &str) -> Counter {
    metrics.counter_labelled(
        "jisu_authz_decisions_total",
        &[("decision", decision.into()), ("rule", rule.into())],
    )
}

impl Policy {
    /// The built-in policy: each Jisu method allowed to tokens with its scope.
    pub fn builtin(metrics: &Metrics) -> Self {
        let mut scopes: Vec<&str> = METHODS.iter().map(|m| m.scope).collect();
        scopes.dedup();
        scopes.sort_unstable();
        scopes.dedup();
        let specs = scopes
            .into_iter()
            .map(|scope| RuleSpec {
                name: format!("builtin:{scope}"),
                effect: Effect::Allow,
                methods: METHODS
                    .iter()
                    .filter(|m| m.scope == scope)
                    .map(|m| format!("{}/{}", m.service, m.name))
                    .collect(),
                callers: vec![],
                subjects: vec![],
                issuers: vec![],
                audiences: vec![],
                scopes: vec![scope.to_owned()],
            })
            .collect();
        Self::from_specs(specs, "built-in".into(), metrics)
    }

    /// Parses a TOML policy.
    pub fn parse(text: &str, source: &str, metrics: &Metrics) -> Result<Self, PolicyError> {
        let invalid = |detail: String| PolicyError::Invalid {
            path: source.to_owned(),
            detail,
        };
        let spec: PolicySpec = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let mut names = std::collections::HashSet::new();
        for rule in &spec.rules {
            let name_ok = !rule.name.is_empty()
                && rule.name.len() <= 64
                && rule
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
            if !name_ok {
                return Err(invalid(format!(
                    "rule name {:?}: use 1-64 letters, digits, '-', '_', '.', ':'",
                    rule.name
                )));
            }
            if rule.name == "default" || !names.insert(rule.name.as_str()) {
                return Err(invalid(format!(
                    "rule name {:?} used twice or reserved",
                    rule.name
                )));
            }
        }
        if spec.rules.len() > 256 {
            return Err(invalid("more than 256 rules".into()));
        }
        Ok(Self::from_specs(spec.rules, source.to_owned(), metrics))
    }

    /// Reads and parses a TOML policy file.
    pub fn from_file(path: &Path, metrics: &Metrics) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string(), metrics)
    }

    fn from_specs(specs: Vec<RuleSpec>, source: String, metrics: &Metrics) -> Self {
        let rules: Vec<Rule> = specs
            .into_iter()
            .map(|r| Rule {
                counter: counter(
                    metrics,
                    match r.effect {
                        Effect::Allow => "allow",
                        Effect::Deny => "deny",
                    },
                    &r.name,
                ),
                name: r.name.into(),
                effect: r.effect,
                methods: Patterns::new(&r.methods),
                callers: Patterns::new(&r.callers),
                subjects: Patterns::new(&r.subjects),
                issuers: Patterns::new(&r.issuers),
                audiences: Patterns::new(&r.audiences),
                scopes: r.scopes,
            })
            .collect();
        let by_method = METHODS
            .iter()
            .map(|m| {
                let method = format!("{}/{}", m.service, m.name);
                (0..rules.len())
                    .filter(|&i| rules[i].methods.any(&method))
                    .collect()
            })
            .collect();
        Self {
            builtin: source == "built-in",
            rules,
            by_method,
            source,
            default_deny: counter(metrics, "deny", "default"),
        }
    }

    /// Decides `call` by testing every rule in order, and counts the decision.
    pub fn decide(&self, call: &Call<'_>) -> Decision {
        self.decided(self.rules.iter().find(|r| r.matches(call)))
    }

    /// Decides `call` to the method at `method` in the table
    /// ([`crate::api::served_index`]): only the rules matched to it at load are tested.
    /// Any other position (`None`, a public method) is decided by [`Policy::decide`].
    pub fn decide_at(&self, method: Option<usize>, call: &Call<'_>) -> Decision {
        match method.and_then(|i| self.by_method.get(i)) {
            Some(applicable) => self.decided(
                applicable
                    .iter()
                    .map(|&i| &self.rules[i])
                    .find(|r| r.matches_caller(call)),
            ),
            None => self.decide(call),
        }
    }

    /// The decision of `rule` (none matched: the default deny), counted.
    fn decided(&self, rule: Option<&Rule>) -> Decision {
        match rule {
            Some(rule) => {
                rule.counter.increment(1);
                Decision {
                    allowed: rule.effect == Effect::Allow,
                    rule: rule.name.clone(),
                }
            }
            None => {
                self.default_deny.increment(1);
                Decision {
                    allowed: false,
                    rule: Arc::from("default"),
                }
            }
        }
    }
}

/// The policy in force, shared by every clone; a reload swaps it atomically.
#[derive(Debug, Clone)]
pub struct PolicyHandle(Arc<parking_lot::RwLock<Arc<Policy>>>);

impl PolicyHandle {
    pub fn new(policy: Policy) -> Self {
        Self(Arc::new(parking_lot::RwLock::new(Arc::new(policy))))
    }

    pub fn current(&self) -> Arc<Policy> {
        self.0.read().clone()
    }

    pub fn replace(&self, policy: Policy) {
        *self.0.write() = Arc::new(policy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call<'a>(
        method: &'a str,
        caller: &'a str,
        subject: &'a str,
        scopes: &'a [String],
    ) -> Call<'a> {
        Call {
            method,
            caller,
            subject,
            issuer: "jisu",
            audiences: &[],
            scopes,
        }
    }

    #[test]
    fn first_match_decides_and_nothing_matched_is_denied() {
        let metrics = Metrics::new();
        let policy = Policy::parse(
            r#"
            [[rule]]
            name = "no-partner-writes"
            effect = "deny"
            methods = ["jisucloud.v1.UserService/Create*", "jisucloud.v1.UserService/Delete*"]
            callers = ["spiffe://partner.example/*"]

            [[rule]]
            name = "readers"
            effect = "allow"
            methods = ["jisucloud.v1.UserService/Get*"]
            scopes = ["users:read"]

            [[rule]]
            name = "writers"
            effect = "allow"
            methods = ["jisucloud.v1.UserService/*"]
            subjects = ["svc-*"]
            scopes = ["users:write"]
            "#,
            "test",
            &metrics,
        )
        .unwrap();
        let read = ["users:read".to_owned()];
        let write = ["users:write".to_owned()];
        let get = "jisucloud.v1.UserService/GetUser";
        let create = "jisucloud.v1.UserService/CreateUser";
        let table: [(Call<'_>, bool, &str); 6] = [
            (call(get, "client", "alice", &read), true, "readers"),
            (call(get, "client", "alice", &write), false, "default"),
            (
                call(create, "client", "svc-billing", &write),
                true,
                "writers",
            ),
            (call(create, "client", "alice", &write), false, "default"),
            (
                call(create, "spiffe://partner.example/app", "svc-x", &write),
                false,
                "no-partner-writes",
            ),
            (
                call(
                    "jisucloud.v1.OrderService/GetOrder",
                    "client",
                    "alice",
                    &read,
                ),
                false,
                "default",
            ),
        ];
        for (c, allowed, rule) in table {
            let d = policy.decide(&c);
            assert_eq!((d.allowed, &*d.rule), (allowed, rule), "{c:?}");
        }
        let text = metrics.render();
        assert!(
            text.contains(r#"jisu_authz_decisions_total{decision="deny",rule="default"} 3"#),
            "{text}"
        );
    }

    /// The rules matched per method at load decide every call of the table exactly as
    /// testing every rule in order would.
    #[test]
    fn rules_matched_at_load_decide_like_the_full_scan() {
        let metrics = Metrics::new();
        let policy = Policy::parse(
            r#"
            [[rule]]
            name = "partners"
            effect = "deny"
            methods = ["*/Delete*", "jisucloud.v1.OrderService/*"]
            callers = ["spiffe://partner/*"]
            [[rule]]
            name = "getters"
            effect = "allow"
            methods = ["*/Get?ser", "*Service/GetOrder"]
            scopes = ["r"]
            [[rule]]
            name = "svc"
            effect = "allow"
            subjects = ["svc-*"]
            "#,
            "test",
            &metrics,
        )
        .unwrap();
        let scopes = [vec![], vec!["r".to_owned()]];
        let mut decided = std::collections::BTreeSet::new();
        for (index, m) in METHODS.iter().enumerate() {
            let method = format!("{}/{}", m.service, m.name);
            for caller in ["spiffe://partner/a", "c"] {
                for subject in ["svc-a", "alice"] {
                    for scopes in &scopes {
                        let c = call(&method, caller, subject, scopes);
                        let full = policy.rules.iter().find(|r| r.matches(&c));
                        let full = full.map_or("default", |r| &*r.name);
                        assert_eq!(&*policy.decide_at(Some(index), &c).rule, full, "{c:?}");
                        decided.insert(full.to_owned());
                    }
                }
            }
        }
        // Every rule and the default decided something: the table exercised them all.
        assert_eq!(decided.len(), 4, "{decided:?}");
    }

    #[test]
    fn builtin_policy_is_the_scope_table() {
        let policy = Policy::builtin(&Metrics::new());
        let read = ["users:read".to_owned()];
        for m in METHODS {
            let path = format!("{}/{}", m.service, m.name);
            let scopes = [m.scope.to_owned()];
            assert!(
                policy.decide(&call(&path, "c", "s", &scopes)).allowed,
                "{path}"
            );
            if m.scope != "users:read" {
                assert!(
                    !policy.decide(&call(&path, "c", "s", &read)).allowed,
                    "{path}"
                );
            }
        }
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        let metrics = Metrics::new();
        for (text, needle) in [
            (
                "[[rule]]\nname = \"x\"\neffect = \"maybe\"\n",
                "unknown variant",
            ),
            (
                "[[rule]]\nname = \"x\"\neffect = \"allow\"\nmethod = []\n",
                "unknown field",
            ),
            (
                "[[rule]]\nname = \"a b\"\neffect = \"allow\"\n",
                "rule name",
            ),
            (
                "[[rule]]\nname = \"a\"\neffect = \"allow\"\n[[rule]]\nname = \"a\"\neffect = \"deny\"\n",
                "twice",
            ),
            ("not toml at all [", "expected"),
        ] {
            let err = Policy::parse(text, "p.toml", &metrics)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
