//! `istio.security.Authorization` resources: decoded, validated and held for
//! the config dump. Enforcement (L4, in XDP) is a later stage; holding them
//! now means a push that carries them is ACKed only when they are sound.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use serde::Serialize;

use super::proto::security::{string_match::MatchType, Action, Authorization, Match, Scope};
use super::proto::AUTHORIZATION_TYPE_URL;
use super::resource::ResourceError;

/// A validated policy, in the dump's shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicySummary {
    pub name: String,
    pub namespace: String,
    pub scope: &'static str,
    pub action: &'static str,
    pub rules: usize,
    /// Every match clause rendered as text, for humans.
    pub matches: Vec<String>,
}

/// Decodes and checks one Authorization. `name` is the xDS name, if any.
pub fn decode_authorization(
    any: &prost_types::Any,
    name: Option<&str>,
) -> Result<PolicySummary, ResourceError> {
    let label = name.unwrap_or("authorization").to_string();
    let err = |field: String, message: String| ResourceError {
        resource: label.clone(),
        field,
        message,
    };
    if any.type_url != AUTHORIZATION_TYPE_URL {
        return Err(err(
            "@type".into(),
            format!("{:?} is not {AUTHORIZATION_TYPE_URL}", any.type_url),
        ));
    }
    let policy = Authorization::decode(any.value.as_slice()).map_err(|e| {
        err(
            "(bytes)".into(),
            format!("not an istio.security.Authorization: {e}"),
        )
    })?;
    let label = format!("authorization {}/{}", policy.namespace, policy.name);
    let err = |field: String, message: String| ResourceError {
        resource: label.clone(),
        field,
        message,
    };
    if policy.name.is_empty() {
        return Err(err("name".into(), "empty".into()));
    }
    let scope = match Scope::try_from(policy.scope) {
        Ok(Scope::Global) => "GLOBAL",
        Ok(Scope::Namespace) => "NAMESPACE",
        Ok(Scope::WorkloadSelector) => "WORKLOAD_SELECTOR",
        Err(_) => {
            return Err(err(
                "scope".into(),
                format!("{} is not a scope", policy.scope),
            ))
        }
    };
    let action = match Action::try_from(policy.action) {
        Ok(Action::Allow) => "ALLOW",
        Ok(Action::Deny) => "DENY",
        Err(_) => {
            return Err(err(
                "action".into(),
                format!("{} is not an action", policy.action),
            ))
        }
    };
    let mut matches = Vec::new();
    for (r, rule) in policy.rules.iter().enumerate() {
        for (c, clause) in rule.clauses.iter().enumerate() {
            for (m, one) in clause.matches.iter().enumerate() {
                let at = format!("rules[{r}].clauses[{c}].matches[{m}]");
                matches.push(
                    describe_match(one)
                        .map_err(|(field, message)| err(format!("{at}.{field}"), message))?,
                );
            }
        }
    }
    Ok(PolicySummary {
        name: policy.name,
        namespace: policy.namespace,
        scope,
        action,
        rules: policy.rules.len(),
        matches,
    })
}

/// One match as text; an invalid CIDR or port is `(field, message)`.
fn describe_match(m: &Match) -> Result<String, (String, String)> {
    let mut parts = Vec::new();
    let strings = |label: &str, list: &[super::proto::security::StringMatch]| {
        list.iter()
            .map(|s| match &s.match_type {
                Some(MatchType::Exact(v)) => format!("{label}={v}"),
                Some(MatchType::Prefix(v)) => format!("{label}={v}*"),
                Some(MatchType::Suffix(v)) => format!("{label}=*{v}"),
                Some(MatchType::Presence(_)) | None => format!("{label} present"),
            })
            .collect::<Vec<_>>()
    };
    parts.extend(strings("namespace", &m.namespaces));
    parts.extend(strings("!namespace", &m.not_namespaces));
    parts.extend(strings("principal", &m.principals));
    parts.extend(strings("!principal", &m.not_principals));
    for (field, label, list) in [
        ("source_ips", "source", &m.source_ips),
        ("not_source_ips", "!source", &m.not_source_ips),
        ("destination_ips", "destination", &m.destination_ips),
        (
            "not_destination_ips",
            "!destination",
            &m.not_destination_ips,
        ),
    ] {
        for (i, cidr) in list.iter().enumerate() {
            let (text, max) = match cidr.address.len() {
                4 => {
                    let b: [u8; 4] = cidr.address.as_slice().try_into().unwrap_or_default();
                    (std::net::Ipv4Addr::from(b).to_string(), 32)
                }
                16 => {
                    let b: [u8; 16] = cidr.address.as_slice().try_into().unwrap_or_default();
                    (std::net::Ipv6Addr::from(b).to_string(), 128)
                }
                n => {
                    return Err((
                        format!("{field}[{i}].address"),
                        format!("{n} bytes; an address has 4 or 16"),
                    ))
                }
            };
            if cidr.length > max {
                return Err((
                    format!("{field}[{i}].length"),
                    format!("/{} is longer than /{max}", cidr.length),
                ));
            }
            parts.push(format!("{label}={text}/{}", cidr.length));
        }
    }
    for (field, label, list) in [
        ("destination_ports", "port", &m.destination_ports),
        ("not_destination_ports", "!port", &m.not_destination_ports),
    ] {
        for (i, port) in list.iter().enumerate() {
            if *port > u32::from(u16::MAX) {
                return Err((format!("{field}[{i}]"), format!("{port} is not a port")));
            }
            parts.push(format!("{label}={port}"));
        }
    }
    Ok(parts.join(" "))
}

/// The policies held, by xDS name (`namespace/name` when there is none).
#[derive(Debug, Default)]
pub struct AuthorizationStore {
    policies: BTreeMap<String, PolicySummary>,
}

impl AuthorizationStore {
    pub fn upsert(&mut self, name: Option<String>, policy: PolicySummary) {
        let key = name.unwrap_or_else(|| format!("{}/{}", policy.namespace, policy.name));
        self.policies.insert(key, policy);
    }

    pub fn remove(&mut self, name: &str) -> bool {
        self.policies.remove(name).is_some()
    }

    /// Makes the store `policies` (a file reload), plus the held policies
    /// named in `keep` (refused in the file: their previous version stays).
    pub fn replace_keeping(&mut self, policies: Vec<PolicySummary>, keep: &BTreeSet<String>) {
        self.policies.retain(|name, _| keep.contains(name));
        for p in policies {
            self.upsert(None, p);
        }
    }

    pub fn len(&self) -> usize {
        self.policies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.policies.contains_key(name)
    }

    pub fn dump_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.policies).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::proto::security::{Address, Clause, Rule, StringMatch};

    fn any(policy: &Authorization) -> prost_types::Any {
        prost_types::Any {
            type_url: AUTHORIZATION_TYPE_URL.into(),
            value: policy.encode_to_vec(),
        }
    }

    fn policy(cidr_len: u32, port: u32) -> Authorization {
        Authorization {
            name: "deny-db".into(),
            namespace: "prod".into(),
            scope: 1,
            action: 1,
            rules: vec![Rule {
                clauses: vec![Clause {
                    matches: vec![Match {
                        namespaces: vec![StringMatch {
                            match_type: Some(MatchType::Exact("test".into())),
                        }],
                        source_ips: vec![Address {
                            address: vec![10, 1, 0, 0],
                            length: cidr_len,
                        }],
                        destination_ports: vec![port],
                        ..Default::default()
                    }],
                }],
            }],
        }
    }

    #[test]
    fn a_policy_is_summarised_for_the_dump() {
        let summary = decode_authorization(&any(&policy(16, 5432)), Some("prod/deny-db")).unwrap();
        assert_eq!((summary.scope, summary.action), ("NAMESPACE", "DENY"));
        assert_eq!(
            summary.matches,
            vec!["namespace=test source=10.1.0.0/16 port=5432"]
        );
        let mut store = AuthorizationStore::default();
        store.upsert(Some("prod/deny-db".into()), summary);
        assert!(store.contains("prod/deny-db"));
        assert!(store.remove("prod/deny-db") && store.is_empty());
    }

    #[test]
    fn invalid_cidrs_and_ports_name_the_field() {
        let e = decode_authorization(&any(&policy(33, 80)), None).unwrap_err();
        assert_eq!(e.resource, "authorization prod/deny-db");
        assert_eq!(
            e.field,
            "rules[0].clauses[0].matches[0].source_ips[0].length"
        );
        let e = decode_authorization(&any(&policy(8, 70000)), None).unwrap_err();
        assert_eq!(
            e.field,
            "rules[0].clauses[0].matches[0].destination_ports[0]"
        );
        let mut bad = policy(8, 80);
        bad.action = 7;
        let e = decode_authorization(&any(&bad), None).unwrap_err();
        assert_eq!(e.field, "action");
    }
}
