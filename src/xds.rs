//! xDS transport: where resources come from — a watched file, or an ADS
//! stream to a control plane (State of the World or delta).

pub mod ads;
pub mod delta;
pub mod file;
pub mod file_watch;
pub mod grpc_stream;
pub mod identity;
pub mod transport;
