//! Dual-engine mode (wired once its loader and delta client land).

use std::sync::Arc;

use super::{DaemonError, Shutdown, Source};
use crate::admin::AdminState;
use crate::config::Config;

pub(super) async fn run(
    _config: &Config,
    _source: Source,
    _admin_state: Arc<AdminState>,
    _shutdown: &mut Shutdown,
) -> Result<(), DaemonError> {
    Err(DaemonError::NoSource)
}
