//! Helpers shared by the resource compilers: field paths, errors that carry
//! them, and the checks every resource kind makes (names, IP addresses).

use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address, SocketAddress};

use crate::kernel_native::limits::MAX_NAME_BYTES;
use crate::kernel_native::plan::Ignored;
use crate::kernel_native::resources::{ResourceError, ResourceKind};

/// A rejection before it is attributed to a resource: compilers of nested
/// messages return these and their callers prefix the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: String,
    pub message: String,
}

pub(crate) type FieldResult<T> = Result<T, FieldError>;

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error seen from the message that contains `prefix`.
    pub fn within(self, prefix: &str) -> Self {
        FieldError {
            field: join(prefix, &self.field),
            message: self.message,
        }
    }

    pub fn into_resource_error(self, kind: ResourceKind, name: &str) -> ResourceError {
        ResourceError {
            kind,
            name: name.to_string(),
            field: self.field,
            message: self.message,
        }
    }
}

/// `prefix` + `field` as one path: `a` + `b` = `a.b`, `a` + `[0]` = `a[0]`.
pub(crate) fn join(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_string()
    } else if field.is_empty() {
        prefix.to_string()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

pub(crate) fn ignored(field: impl Into<String>, reason: impl Into<String>) -> Ignored {
    Ignored {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Moves nested `Ignored` entries under `prefix`.
pub(crate) fn ignored_within(
    prefix: &str,
    entries: Vec<Ignored>,
) -> impl Iterator<Item = Ignored> + '_ {
    entries.into_iter().map(move |i| Ignored {
        field: join(prefix, &i.field),
        reason: i.reason,
    })
}

/// A cluster or route configuration name as the kernel stores it: a
/// NUL-padded `struct kn_name`. A name that does not fit would be truncated
/// into a different name, so it is rejected instead.
pub(crate) fn check_name(field: &str, name: &str) -> FieldResult<()> {
    if name.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(FieldError::new(
            field,
            format!(
                "name is {} bytes, longer than the kernel's {MAX_NAME_BYTES} (KMESH_NAME_LEN - 1)",
                name.len()
            ),
        ));
    }
    if name.contains('\0') {
        return Err(FieldError::new(field, "name contains a NUL byte"));
    }
    Ok(())
}

/// The socket address inside an `Address`, or why there is none usable.
/// Paths are relative to the `Address`.
pub(crate) fn socket_address(addr: &Address) -> FieldResult<&SocketAddress> {
    match &addr.address {
        Some(address::Address::SocketAddress(sa)) => Ok(sa),
        Some(address::Address::Pipe(_)) => Err(FieldError::new(
            "pipe",
            "pipe (Unix socket) addresses cannot be matched at connect()",
        )),
        Some(address::Address::EnvoyInternalAddress(_)) => Err(FieldError::new(
            "envoy_internal_address",
            "Envoy internal addresses do not exist in the kernel",
        )),
        None => Err(FieldError::new("socket_address", "missing")),
    }
}

/// The IP literal and port of a socket address (paths relative to it).
/// Port 0 and named ports are errors: the kernel compares real ports.
pub(crate) fn ip_and_port(sa: &SocketAddress) -> FieldResult<(IpAddr, u16)> {
    let ip: IpAddr = sa.address.parse().map_err(|_| {
        FieldError::new(
            "address",
            format!("{:?} is not an IPv4 or IPv6 address", sa.address),
        )
    })?;
    let port = match &sa.port_specifier {
        Some(socket_address::PortSpecifier::PortValue(p)) => *p,
        Some(socket_address::PortSpecifier::NamedPort(n)) => {
            return Err(FieldError::new(
                "named_port",
                format!("named port {n:?}: only numeric ports can be matched"),
            ))
        }
        None => 0,
    };
    match u16::try_from(port) {
        Ok(0) => Err(FieldError::new(
            "port_value",
            "port 0 cannot be matched at connect()",
        )),
        Ok(p) => Ok((ip, p)),
        Err(_) => Err(FieldError::new(
            "port_value",
            format!("{port} is not a port (1..=65535)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn joins_paths() {
        assert_eq!(join("", "a"), "a");
        assert_eq!(join("a", ""), "a");
        assert_eq!(join("a", "b"), "a.b");
        assert_eq!(join("a", "[0].b"), "a[0].b");
    }

    #[test]
    fn names_must_fit_kn_name() {
        assert!(check_name("cluster", "outbound|80||svc").is_ok());
        assert!(check_name("cluster", &"x".repeat(127)).is_ok());
        let e = check_name("cluster", &"x".repeat(128)).unwrap_err();
        assert_eq!(e.field, "cluster");
        assert!(e.message.contains("128 bytes"), "{}", e.message);
        assert!(check_name("cluster", "a\0b").is_err());
        assert!(check_name("cluster", "").is_err());
    }
}
