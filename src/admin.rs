//! The admin HTTP endpoint (default 127.0.0.1:15200): readiness, version,
//! config dumps, log levels, and the connection telemetry switches
//! (`POST /accesslog?enable=`, `POST /monitoring?enable=`). It reads caches
//! and maps, never the wire.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::dns::DnsResolver;
use crate::kernel_native::bpf_dump;
use crate::kernel_native::dump::dns_hosts;
use crate::logging::LogControl;
use crate::memory::release_freed_memory;
use crate::telemetry::Telemetry;

/// Builds a config dump on request.
pub type DumpSource = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;
/// Reads a mode's maps back on request.
pub type BpfDumpSource = Arc<dyn Fn() -> Result<serde_json::Value, String> + Send + Sync>;

/// What the admin endpoint shows; written by the mode's runner.
pub struct AdminState {
    ready: AtomicBool,
    kernel_native_dump: RwLock<Option<DumpSource>>,
    dual_engine_dump: RwLock<Option<DumpSource>>,
    dual_engine_summary: RwLock<Option<DumpSource>>,
    dual_engine_bpf_dump: RwLock<Option<BpfDumpSource>>,
    /// ADS transport state, shown inside the kernel-native dump as `xds`.
    xds_status: RwLock<Option<serde_json::Value>>,
    /// Read at request time: lookups and failures move between applies.
    dns: RwLock<Option<DnsResolver>>,
    bpf_fs_path: PathBuf,
    logs: Arc<LogControl>,
    /// The connection telemetry switches, once the programs are loaded.
    telemetry: RwLock<Option<Arc<Telemetry>>>,
}

impl AdminState {
    pub fn new(bpf_fs_path: PathBuf, logs: Arc<LogControl>) -> Arc<Self> {
        Arc::new(Self {
            ready: AtomicBool::new(false),
            kernel_native_dump: RwLock::new(None),
            dual_engine_dump: RwLock::new(None),
            dual_engine_summary: RwLock::new(None),
            dual_engine_bpf_dump: RwLock::new(None),
            xds_status: RwLock::new(None),
            dns: RwLock::new(None),
            bpf_fs_path,
            logs,
            telemetry: RwLock::new(None),
        })
    }

    /// Ready once the programs are attached and a first configuration is in the maps.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Where `/debug/config_dump/kernel-native` comes from (called per request).
    pub fn set_kernel_native_dump(&self, source: DumpSource) {
        replace(&self.kernel_native_dump, Some(source));
    }

    /// Where `/debug/config_dump/dual-engine` comes from, in full and as a
    /// summary (`?summary`: counts only, cheap at any scale).
    pub fn set_dual_engine_dump(&self, full: DumpSource, summary: DumpSource) {
        replace(&self.dual_engine_dump, Some(full));
        replace(&self.dual_engine_summary, Some(summary));
    }

    /// Where `/debug/config_dump/bpf/dual-engine` comes from.
    pub fn set_dual_engine_bpf_dump(&self, source: BpfDumpSource) {
        replace(&self.dual_engine_bpf_dump, Some(source));
    }

    pub fn set_dns(&self, resolver: DnsResolver) {
        replace(&self.dns, Some(resolver));
    }

    pub fn set_telemetry(&self, telemetry: Arc<Telemetry>) {
        replace(&self.telemetry, Some(telemetry));
    }

    pub fn set_xds_status(&self, status: serde_json::Value) {
        replace(&self.xds_status, Some(status));
    }
}

/// A poisoned lock only means a writer panicked mid-replace of a whole value:
/// the value is still usable, so keep serving it.
fn replace<T>(lock: &RwLock<T>, value: T) {
    match lock.write() {
        Ok(mut d) => *d = value,
        Err(poisoned) => *poisoned.into_inner() = value,
    }
}

fn read<T: Clone>(lock: &RwLock<T>) -> T {
    match lock.read() {
        Ok(d) => d.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin endpoint cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub fn version_info() -> serde_json::Value {
    serde_json::json!({
        "name": "kmesh",
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
    })
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/debug/ready", get(ready))
        .route("/debug/loggers", get(get_loggers).post(set_logger))
        .route("/version", get(|| async { Json(version_info()) }))
        .route("/debug/config_dump/kernel-native", get(kernel_native_dump))
        .route(
            "/debug/config_dump/bpf/kernel-native",
            get(kernel_native_bpf_dump),
        )
        .route("/debug/config_dump/dual-engine", get(dual_engine_dump))
        .route(
            "/debug/config_dump/bpf/dual-engine",
            get(dual_engine_bpf_dump),
        )
        .route("/accesslog", post(set_access_log))
        .route("/monitoring", post(set_monitoring))
        .with_state(state)
}

/// Bind now (so a bad address fails the start), serve in the background.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
) -> Result<tokio::task::JoinHandle<()>, AdminError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })?;
    tracing::info!(%addr, "admin endpoint listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router(state)).await {
            tracing::error!(error = %e, "admin endpoint stopped");
        }
    }))
}

async fn ready(State(state): State<Arc<AdminState>>) -> Response {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no configuration applied yet\n",
        )
            .into_response()
    }
}

async fn kernel_native_dump(State(state): State<Arc<AdminState>>) -> Response {
    let source = read(&state.kernel_native_dump);
    config_dump(&state, source).await
}

/// `?summary` of `GET /debug/config_dump/dual-engine`.
#[derive(Debug, serde::Deserialize)]
struct DumpQuery {
    summary: Option<String>,
}

async fn dual_engine_dump(
    State(state): State<Arc<AdminState>>,
    Query(query): Query<DumpQuery>,
) -> Response {
    let source = if query.summary.is_some() {
        read(&state.dual_engine_summary)
    } else {
        read(&state.dual_engine_dump)
    };
    config_dump(&state, source).await
}

/// A mode's dump plus the transport (`xds`) and resolver (`dns`) state.
async fn config_dump(state: &AdminState, source: Option<DumpSource>) -> Response {
    let mut dump = match source {
        // The source waits for an update in progress: off the async workers.
        Some(source) => tokio::task::spawn_blocking(move || source())
            .await
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
        None => serde_json::json!({"status": "no configuration applied yet"}),
    };
    if let Some(obj) = dump.as_object_mut() {
        if let Some(xds) = read(&state.xds_status) {
            obj.insert("xds".to_string(), xds);
        }
        if let Some(resolver) = read(&state.dns) {
            obj.insert("dns".to_string(), dns_hosts(&resolver.snapshot()));
        }
    }
    let response = Json(dump).into_response();
    // A dump of a large mesh is tens of MB of short-lived JSON.
    release_freed_memory();
    response
}

async fn kernel_native_bpf_dump(State(state): State<Arc<AdminState>>) -> Response {
    let path = state.bpf_fs_path.clone();
    bpf_dump_response(move || {
        bpf_dump::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|dump| serde_json::to_value(dump).map_err(|e| e.to_string()))
    })
    .await
}

async fn dual_engine_bpf_dump(State(state): State<Arc<AdminState>>) -> Response {
    match read(&state.dual_engine_bpf_dump) {
        Some(source) => bpf_dump_response(move || source()).await,
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the dual-engine maps are not loaded (is the daemon in --mode dual-engine?)\n",
        )
            .into_response(),
    }
}

async fn bpf_dump_response(
    read_maps: impl FnOnce() -> Result<serde_json::Value, String> + Send + 'static,
) -> Response {
    match tokio::task::spawn_blocking(read_maps).await {
        Ok(Ok(dump)) => {
            let response = Json(dump).into_response();
            release_freed_memory();
            response
        }
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("reading the maps: {e}\n"),
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// `POST /debug/loggers` body, as `kmeshctl log --set name:level` sends it.
#[derive(Debug, serde::Deserialize)]
struct LoggerChange {
    /// `default` (the daemon's log filter); the eBPF programs have no logger yet.
    #[serde(default = "default_logger")]
    name: String,
    level: String,
}

fn default_logger() -> String {
    "default".to_string()
}

async fn get_loggers(State(state): State<Arc<AdminState>>) -> Response {
    Json(serde_json::json!({ "loggers": [{ "name": "default", "level": state.logs.level() }] }))
        .into_response()
}

async fn set_logger(State(state): State<Arc<AdminState>>, body: axum::body::Bytes) -> Response {
    let change: LoggerChange = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected JSON {{\"name\": \"default\", \"level\": \"debug\"}}: {e}\n"),
            )
                .into_response()
        }
    };
    if change.name != "default" {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "unknown logger {:?}: this daemon has the logger \"default\"\n",
                change.name
            ),
        )
            .into_response();
    }
    match state.logs.set(&change.level) {
        Ok(()) => {
            Json(serde_json::json!({ "name": "default", "level": change.level })).into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

/// `?enable=true|false` of `POST /accesslog` and `POST /monitoring`.
#[derive(Debug, serde::Deserialize)]
struct Toggle {
    enable: Option<String>,
}

#[derive(Clone, Copy)]
enum Switch {
    AccessLog,
    Monitoring,
}

async fn set_access_log(
    State(state): State<Arc<AdminState>>,
    Query(toggle): Query<Toggle>,
) -> Response {
    set_switch(&state, Switch::AccessLog, toggle)
}

async fn set_monitoring(
    State(state): State<Arc<AdminState>>,
    Query(toggle): Query<Toggle>,
) -> Response {
    set_switch(&state, Switch::Monitoring, toggle)
}

fn set_switch(state: &AdminState, switch: Switch, toggle: Toggle) -> Response {
    let name = match switch {
        Switch::AccessLog => "access log",
        Switch::Monitoring => "monitoring",
    };
    let enable = match toggle.enable.as_deref() {
        Some("true") => true,
        Some("false") => false,
        other => {
            return (
                StatusCode::BAD_REQUEST,
                format!("expected ?enable=true or ?enable=false, got {other:?}\n"),
            )
                .into_response()
        }
    };
    let Some(telemetry) = read(&state.telemetry) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the eBPF programs are not loaded yet; retry in a moment\n",
        )
            .into_response();
    };
    let result = match switch {
        Switch::AccessLog => telemetry.set_access_log(enable),
        Switch::Monitoring => telemetry.set_monitoring(enable),
    };
    match result {
        Ok(()) => {
            let word = if enable { "enabled" } else { "disabled" };
            (StatusCode::OK, format!("{name} {word}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}
