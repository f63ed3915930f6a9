//! Logging setup with a level that can be changed while the daemon runs
//! (admin `POST /debug/loggers`, `kmeshctl log --set`).

use std::io::IsTerminal;
use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log level {level:?}: {message} (a level like `debug`, or directives like `kmesh=debug,info`)")]
    Invalid { level: String, message: String },
    #[error("the logger is gone")]
    Gone,
}

/// Changes the log filter at run time.
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// A bare word must be a level: `EnvFilter` would take `loud` as "enable the
/// target `loud`", silently turning everything else off.
fn parse(level: &str) -> Result<EnvFilter, LogError> {
    let invalid = |message: String| LogError::Invalid {
        level: level.to_string(),
        message,
    };
    for directive in level.split(',') {
        let bare = !directive.contains('=') && !directive.contains('[');
        if bare && !LEVELS.contains(&directive.trim().to_ascii_lowercase().as_str()) {
            return Err(invalid(format!("{directive:?} is not one of {LEVELS:?}")));
        }
    }
    EnvFilter::try_new(level).map_err(|e| invalid(e.to_string()))
}

/// Install the global subscriber. Colours only for a terminal: logs in files
/// and pipes stay plain text.
pub fn init(level: &str) -> Result<LogControl, LogError> {
    let (filter, handle) = reload::Layer::new(parse(level)?);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            fmt::layer()
                .with_target(false)
                .with_ansi(std::io::stdout().is_terminal()),
        )
        .init();
    Ok(LogControl {
        handle,
        current: Mutex::new(level.to_string()),
    })
}

impl LogControl {
    pub fn level(&self) -> String {
        self.current
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn set(&self, level: &str) -> Result<(), LogError> {
        let filter = parse(level)?;
        self.handle.reload(filter).map_err(|_| LogError::Gone)?;
        match self.current.lock() {
            Ok(mut l) => *l = level.to_string(),
            Err(p) => *p.into_inner() = level.to_string(),
        }
        tracing::info!(level, "log level changed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives_parse_and_bare_words_do_not() {
        for ok in ["info", "DEBUG", "kmesh=debug,warn", "off"] {
            assert!(parse(ok).is_ok(), "{ok}");
        }
        for bad in ["loud", "info,verbose", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
