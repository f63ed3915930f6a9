//! Builders for Envoy resources in the xDS file format (proto3 JSON as YAML,
//! as users write it), shared by the end-to-end tests.

pub fn listener(name: &str, addr: &str, port: u16, cluster: &str) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: "{name}"
  address: {{ socket_address: {{ address: "{addr}", port_value: {port} }} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: "{name}"
        cluster: "{cluster}""#
    )
}

pub fn weighted_listener(name: &str, addr: &str, port: u16, clusters: &[(&str, u32)]) -> String {
    let entries: String = clusters
        .iter()
        .map(|(c, w)| format!("\n          - {{ name: \"{c}\", weight: {w} }}"))
        .collect();
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.listener.v3.Listener
  name: "{name}"
  address: {{ socket_address: {{ address: "{addr}", port_value: {port} }} }}
  filter_chains:
  - filters:
    - name: envoy.filters.network.tcp_proxy
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
        stat_prefix: "{name}"
        weighted_clusters:
          clusters:{entries}"#
    )
}

/// `(address, port, weight, priority)`; weight 0 means "not given".
pub type Ep<'a> = (&'a str, u16, u32, u32);

pub fn lb_endpoints(endpoints: &[Ep]) -> String {
    let mut out = String::new();
    let mut priorities: Vec<u32> = endpoints.iter().map(|e| e.3).collect();
    priorities.sort();
    priorities.dedup();
    for p in priorities {
        out.push_str(&format!("\n  - priority: {p}\n    lb_endpoints:"));
        for (addr, port, weight, _) in endpoints.iter().filter(|e| e.3 == p) {
            out.push_str(&format!(
                "\n    - endpoint: {{ address: {{ socket_address: {{ address: \"{addr}\", port_value: {port} }} }} }}"
            ));
            if *weight > 0 {
                out.push_str(&format!("\n      load_balancing_weight: {weight}"));
            }
        }
    }
    out
}

pub fn eds_cluster(name: &str, lb: &str, endpoints: &[Ep]) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: "{name}"
  type: EDS
  eds_cluster_config: {{ eds_config: {{ ads: {{}} }} }}
  lb_policy: {lb}
- "@type": type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment
  cluster_name: "{name}"
  endpoints:{}"#,
        lb_endpoints(endpoints)
    )
}

pub fn static_cluster(name: &str, endpoints: &[Ep]) -> String {
    format!(
        r#"
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: "{name}"
  type: STATIC
  lb_policy: ROUND_ROBIN
  load_assignment:
    cluster_name: "{name}"
    endpoints:{}"#,
        lb_endpoints(endpoints).replace("\n", "\n  ")
    )
}

pub fn config(parts: &[String]) -> String {
    format!("resources:{}\n", parts.concat())
}
