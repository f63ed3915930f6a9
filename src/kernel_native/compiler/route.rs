//! RouteConfiguration → [`CompiledRouteConfig`]: the flattened HTTP routes,
//! shown in the dump today and read by the enhanced kernel's L7 stage later.
//! Matchers and actions that have no flattened form are listed as ignored
//! (a route whose match or destination cannot be expressed is skipped).

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher::HeaderMatchSpecifier, route, route_action::ClusterSpecifier,
    route_match::PathSpecifier, HeaderMatcher, Route, RouteConfiguration, VirtualHost,
};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;

use super::field::{check_name, ignored, ignored_within, join, FieldError, FieldResult};
use crate::kernel_native::plan::{
    CompiledRoute, CompiledRouteConfig, CompiledVirtualHost, Ignored, PathMatch, RouteAction,
};
use crate::kernel_native::resources::{ResourceError, ResourceKind};

/// Compiles an RDS route configuration.
pub fn compile_route_config(r: &RouteConfiguration) -> Result<CompiledRouteConfig, ResourceError> {
    let reject = |e: FieldError| e.into_resource_error(ResourceKind::RouteConfiguration, &r.name);
    check_name("name", &r.name).map_err(reject)?;
    compile_route_config_body(r).map_err(reject)
}

/// Everything but the name, which an inline configuration may lack.
/// Paths relative to the RouteConfiguration.
pub(crate) fn compile_route_config_body(
    r: &RouteConfiguration,
) -> FieldResult<CompiledRouteConfig> {
    let mut ignored_list = Vec::new();
    if r.vhds.is_some() {
        ignored_list.push(ignored(
            "vhds",
            "virtual host discovery is not done: only the listed virtual hosts are used",
        ));
    }
    let mut virtual_hosts = Vec::new();
    for (v, vh) in r.virtual_hosts.iter().enumerate() {
        let field = format!("virtual_hosts[{v}]");
        let (compiled, notes) = virtual_host(vh).map_err(|e| e.within(&field))?;
        virtual_hosts.push(compiled);
        ignored_list.extend(ignored_within(&field, notes));
    }
    Ok(CompiledRouteConfig {
        virtual_hosts,
        ignored: ignored_list,
    })
}

/// Paths relative to the VirtualHost.
fn virtual_host(vh: &VirtualHost) -> FieldResult<(CompiledVirtualHost, Vec<Ignored>)> {
    if vh.domains.is_empty() {
        return Err(FieldError::new(
            "domains",
            "at least one domain is required",
        ));
    }
    let mut notes = Vec::new();
    if vh.matcher.is_some() {
        notes.push(ignored(
            "matcher",
            "the generic matcher tree is not compiled; only `routes` are used",
        ));
    }
    let mut routes = Vec::new();
    for (i, r) in vh.routes.iter().enumerate() {
        let field = format!("routes[{i}]");
        let (compiled, route_notes) = compile_route(r).map_err(|e| e.within(&field))?;
        routes.extend(compiled);
        notes.extend(ignored_within(&field, route_notes));
    }
    Ok((
        CompiledVirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.clone(),
            routes,
        },
        notes,
    ))
}

/// `None`: the route cannot be expressed and is skipped (with a note).
/// Paths relative to the Route.
fn compile_route(r: &Route) -> FieldResult<(Option<CompiledRoute>, Vec<Ignored>)> {
    let mut notes = Vec::new();
    let m = r
        .r#match
        .as_ref()
        .ok_or_else(|| FieldError::new("match", "required"))?;
    let path_match = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => Some(PathMatch::Prefix(p.clone())),
        Some(PathSpecifier::Path(p)) => Some(PathMatch::Exact(p.clone())),
        Some(PathSpecifier::SafeRegex(re)) => Some(PathMatch::Regex(re.regex.clone())),
        Some(PathSpecifier::PathSeparatedPrefix(_)) => {
            skipped(&mut notes, "match.path_separated_prefix")
        }
        Some(PathSpecifier::ConnectMatcher(_)) => skipped(&mut notes, "match.connect_matcher"),
        Some(PathSpecifier::PathMatchPolicy(_)) => skipped(&mut notes, "match.path_match_policy"),
        None => return Err(FieldError::new("match", "a path matcher is required")),
    };
    if m.case_sensitive.as_ref().is_some_and(|c| !c.value) {
        notes.push(ignored(
            "match.case_sensitive",
            "paths are compared case-sensitively",
        ));
    }
    let unevaluated = [
        ("match.runtime_fraction", m.runtime_fraction.is_some()),
        ("match.query_parameters", !m.query_parameters.is_empty()),
        ("match.cookies", !m.cookies.is_empty()),
        ("match.grpc", m.grpc.is_some()),
        ("match.tls_context", m.tls_context.is_some()),
        ("match.dynamic_metadata", !m.dynamic_metadata.is_empty()),
        ("match.filter_state", !m.filter_state.is_empty()),
    ];
    for (field, set) in unevaluated {
        if set {
            notes.push(ignored(
                field,
                "not evaluated: the route matches without it",
            ));
        }
    }
    let mut headers = Vec::new();
    for (h, hm) in m.headers.iter().enumerate() {
        match exact_header(hm) {
            Some(value) => headers.push((hm.name.clone(), value)),
            None => notes.push(ignored(
                format!("match.headers[{h}]"),
                "only exact, case-sensitive header matches are compiled",
            )),
        }
    }
    let action = action(r, &mut notes)?;
    let compiled = match (path_match, action) {
        (Some(path_match), Some(action)) => Some(CompiledRoute {
            name: r.name.clone(),
            path_match,
            headers,
            action,
        }),
        _ => None,
    };
    Ok((compiled, notes))
}

fn skipped(notes: &mut Vec<Ignored>, field: &str) -> Option<PathMatch> {
    notes.push(ignored(
        field,
        "this matcher is not compiled: route skipped",
    ));
    None
}

/// The value of an exact, case-sensitive, non-inverted header match.
// `exact_match` is deprecated in favour of `string_match` but control planes
// still send it.
#[allow(deprecated)]
fn exact_header(hm: &HeaderMatcher) -> Option<String> {
    if hm.invert_match {
        return None;
    }
    match &hm.header_match_specifier {
        Some(HeaderMatchSpecifier::ExactMatch(v)) => Some(v.clone()),
        Some(HeaderMatchSpecifier::StringMatch(sm)) if !sm.ignore_case => match &sm.match_pattern {
            Some(MatchPattern::Exact(v)) => Some(v.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// `None`: the destination cannot be expressed (route skipped, noted).
fn action(r: &Route, notes: &mut Vec<Ignored>) -> FieldResult<Option<RouteAction>> {
    let non_forwarding = |what: &str| Ok(Some(RouteAction::NonForwarding(what.to_string())));
    let ra = match &r.action {
        Some(route::Action::Route(ra)) => ra,
        Some(route::Action::Redirect(_)) => return non_forwarding("redirect"),
        Some(route::Action::DirectResponse(_)) => return non_forwarding("direct_response"),
        Some(route::Action::NonForwardingAction(_)) => {
            return non_forwarding("non_forwarding_action")
        }
        Some(route::Action::FilterAction(_)) => return non_forwarding("filter_action"),
        None => {
            return Err(FieldError::new(
                "action",
                "one of route, redirect, direct_response is required",
            ))
        }
    };
    let mut skip = |field: &str| {
        notes.push(ignored(
            field,
            "the cluster is chosen per request from data the kernel does not have: route skipped",
        ));
        Ok(None)
    };
    match &ra.cluster_specifier {
        Some(ClusterSpecifier::Cluster(name)) => {
            check_name("route.cluster", name)?;
            Ok(Some(RouteAction::Cluster(name.clone())))
        }
        Some(ClusterSpecifier::WeightedClusters(wc)) => {
            let mut clusters = Vec::new();
            let mut total: u32 = 0;
            for (i, cw) in wc.clusters.iter().enumerate() {
                let field = format!("route.weighted_clusters.clusters[{i}]");
                if cw.name.is_empty() && !cw.cluster_header.is_empty() {
                    return skip(&join(&field, "cluster_header"));
                }
                check_name(&join(&field, "name"), &cw.name)?;
                let weight = cw.weight.as_ref().map_or(0, |w| w.value);
                if weight == 0 {
                    continue;
                }
                total = total.checked_add(weight).ok_or_else(|| {
                    FieldError::new(
                        join(&field, "weight"),
                        format!("the weights add up to more than {}", u32::MAX),
                    )
                })?;
                clusters.push((cw.name.clone(), weight));
            }
            if clusters.is_empty() {
                return Err(FieldError::new(
                    "route.weighted_clusters.clusters",
                    "no cluster with a weight above 0",
                ));
            }
            Ok(Some(RouteAction::WeightedClusters(clusters)))
        }
        Some(ClusterSpecifier::ClusterHeader(_)) => skip("route.cluster_header"),
        Some(ClusterSpecifier::ClusterSpecifierPlugin(_)) => skip("route.cluster_specifier_plugin"),
        Some(ClusterSpecifier::InlineClusterSpecifierPlugin(_)) => {
            skip("route.inline_cluster_specifier_plugin")
        }
        None => Err(FieldError::new(
            "route",
            "one of cluster, weighted_clusters, cluster_header is required",
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::kernel_native::compiler::testutil::{fields, from_yaml};

    fn compile(yaml: &str) -> CompiledRouteConfig {
        compile_route_config(&from_yaml(yaml)).unwrap_or_else(|e| panic!("{e}"))
    }

    fn rejected(yaml: &str) -> ResourceError {
        compile_route_config(&from_yaml(yaml)).expect_err("route config must be rejected")
    }

    #[test]
    fn routes_are_flattened() {
        let rc = compile(
            r#"
name: "9080"
virtual_hosts:
- name: reviews
  domains: [reviews, "reviews.default.svc.cluster.local"]
  routes:
  - name: v2-for-jason
    match:
      prefix: /
      headers:
      - { name: end-user, string_match: { exact: jason } }
      - { name: x-legacy, exact_match: "1" }
    route: { cluster: "outbound|9080|v2|reviews" }
  - match: { path: /health }
    direct_response: { status: 200 }
  - match: { safe_regex: { regex: "^/api/v[0-9]+" } }
    route:
      weighted_clusters:
        clusters:
        - { name: a, weight: 75 }
        - { name: b, weight: 25 }
        - { name: c, weight: 0 }
  - match: { prefix: /old }
    redirect: { path_redirect: /new }
"#,
        );
        let vh = &rc.virtual_hosts[0];
        assert_eq!(vh.name, "reviews");
        assert_eq!(vh.domains.len(), 2);
        let r = &vh.routes;
        assert_eq!(r[0].name, "v2-for-jason");
        assert_eq!(r[0].path_match, PathMatch::Prefix("/".into()));
        assert_eq!(
            r[0].headers,
            [
                ("end-user".to_string(), "jason".to_string()),
                ("x-legacy".to_string(), "1".to_string())
            ]
        );
        assert_eq!(
            r[0].action,
            RouteAction::Cluster("outbound|9080|v2|reviews".into())
        );
        assert_eq!(r[1].path_match, PathMatch::Exact("/health".into()));
        assert_eq!(
            r[1].action,
            RouteAction::NonForwarding("direct_response".into())
        );
        assert_eq!(r[2].path_match, PathMatch::Regex("^/api/v[0-9]+".into()));
        assert_eq!(
            r[2].action,
            RouteAction::WeightedClusters(vec![("a".into(), 75), ("b".into(), 25)])
        );
        assert_eq!(r[3].action, RouteAction::NonForwarding("redirect".into()));
        assert!(rc.ignored.is_empty(), "{:?}", rc.ignored);
    }

    #[test]
    fn what_has_no_flat_form_is_ignored() {
        let rc = compile(
            r#"
name: r
virtual_hosts:
- name: vh
  domains: ["*"]
  routes:
  - match: { path_separated_prefix: /api }
    route: { cluster: a }
  - match: { prefix: /, headers: [{ name: x, prefix_match: a }], case_sensitive: false }
    route: { cluster: b }
  - match: { prefix: / }
    route: { cluster_header: x-cluster }
"#,
        );
        let routes = &rc.virtual_hosts[0].routes;
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].action, RouteAction::Cluster("b".into()));
        assert!(routes[0].headers.is_empty());
        assert_eq!(
            fields(&rc.ignored),
            [
                "virtual_hosts[0].routes[0].match.path_separated_prefix",
                "virtual_hosts[0].routes[1].match.case_sensitive",
                "virtual_hosts[0].routes[1].match.headers[0]",
                "virtual_hosts[0].routes[2].route.cluster_header",
            ]
        );
    }

    #[test]
    fn bad_route_configs_are_rejected() {
        let long = "c".repeat(128);
        let cases = [
            (format!("name: {long}"), "name".to_string()),
            (
                "name: r\nvirtual_hosts: [{ name: vh, domains: ['*'], routes: [{ route: { cluster: a } }] }]"
                    .to_string(),
                "virtual_hosts[0].routes[0].match".to_string(),
            ),
            (
                format!("name: r\nvirtual_hosts: [{{ name: vh, domains: ['*'], routes: [{{ match: {{ prefix: / }}, route: {{ cluster: {long} }} }}] }}]"),
                "virtual_hosts[0].routes[0].route.cluster".to_string(),
            ),
            (
                "name: r\nvirtual_hosts: [{ name: vh, domains: ['*'], routes: [{ match: { prefix: / }, route: { weighted_clusters: { clusters: [{ name: a, weight: 0 }] } } }] }]"
                    .to_string(),
                "virtual_hosts[0].routes[0].route.weighted_clusters.clusters".to_string(),
            ),
            (
                "name: r\nvirtual_hosts: [{ name: vh, domains: ['*'], routes: [{ match: { prefix: / } }] }]"
                    .to_string(),
                "virtual_hosts[0].routes[0].action".to_string(),
            ),
        ];
        for (yaml, field) in cases {
            let e = rejected(&yaml);
            assert_eq!(e.kind, ResourceKind::RouteConfiguration);
            assert_eq!(e.field, field, "{yaml}: {e}");
        }
    }
}
