//! xDS transport: where resources come from (a watched file today, ADS later).

pub mod file;
