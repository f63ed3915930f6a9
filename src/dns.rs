//! DNS resolution with a shared refresh queue (being built: the timing rules
//! come first).

mod timing;

pub use timing::{
    FailureRefresh, RefreshPolicy, RefreshSchedule, DEFAULT_REFRESH_RATE, MIN_REFRESH_INTERVAL,
};
