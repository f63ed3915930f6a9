//! xDS transport: where resources come from — a watched file, or an ADS
//! stream to a control plane.

pub mod ads;
pub mod file;
pub mod file_watch;
pub mod identity;
