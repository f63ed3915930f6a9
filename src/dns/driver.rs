//! The running resolver: a tokio task that takes due hostnames off the
//! refresh queue, looks them up concurrently and sends change notifications.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::{mpsc, Notify};
use tokio::task::{Id, JoinHandle, JoinSet};

use super::answer::{Answer, LookupError, LookupFamily};
use super::lookup::{NameLookup, ResolverSettings};
use super::queue::{HostChanged, HostKey, HostState, RefreshQueue, Subscription, Ticket};
use super::timing::RefreshPolicy;
use super::DnsError;

/// Handle on the DNS refresh queue. Clones share one queue; the background
/// task stops when the last clone is dropped.
#[derive(Clone)]
pub struct DnsResolver {
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

struct Shared {
    queue: Mutex<RefreshQueue>,
    /// Wakes the task when the queue changed under it (a new hostname is due
    /// now, or a faster owner moved a due time earlier).
    wake: Notify,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, RefreshQueue> {
        crate::sync::lock(&self.queue)
    }
}

/// Aborts the task once no handle is left.
struct TaskGuard(JoinHandle<()>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DnsResolver {
    /// Starts the resolver on the current tokio runtime. Returns the handle and
    /// the receiver of [`HostChanged`] notifications (one receiver: the mode's
    /// writer).
    pub fn start(
        settings: &ResolverSettings,
    ) -> Result<(Self, mpsc::UnboundedReceiver<HostChanged>), DnsError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| DnsError::NoRuntime)?;
        let lookup = NameLookup::new(settings)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(RefreshQueue::default()),
            wake: Notify::new(),
        });
        // Unbounded: at most one notification per hostname per refresh, and a
        // bounded channel would stall every lookup behind a slow writer.
        let (changes, receiver) = mpsc::unbounded_channel();
        let task = runtime.spawn(run(shared.clone(), lookup, changes));
        let resolver = Self {
            shared,
            _task: Arc::new(TaskGuard(task)),
        };
        Ok((resolver, receiver))
    }

    /// Keeps `host` resolved for `owner`. Returns the addresses already known
    /// (empty until the first answer, which then arrives as a [`HostChanged`]).
    /// Subscribing again updates the owner's policy.
    pub fn subscribe(
        &self,
        owner: &str,
        host: &str,
        family: LookupFamily,
        policy: RefreshPolicy,
    ) -> Result<Vec<IpAddr>, DnsError> {
        let key = host_key(host, family)?;
        let known = self
            .shared
            .queue()
            .subscribe(owner, key, policy, Instant::now());
        self.shared.wake.notify_one();
        Ok(known)
    }

    /// Makes `subscriptions` the whole interest of `owner` (the call for a
    /// config push): new hostnames are added, missing ones removed, kept ones
    /// stay resolved throughout. Returns the known addresses per subscription.
    /// Nothing changes if any hostname is invalid.
    pub fn set_owner(
        &self,
        owner: &str,
        subscriptions: &[Subscription],
    ) -> Result<Vec<Vec<IpAddr>>, DnsError> {
        for s in subscriptions {
            validate_host(&s.host)?;
        }
        let known = self
            .shared
            .queue()
            .set_owner(owner, subscriptions, Instant::now());
        self.shared.wake.notify_one();
        Ok(known)
    }

    /// Drops every interest of `owner`; hostnames nobody else wants leave the
    /// queue (a lookup in flight for them is discarded).
    pub fn unsubscribe_owner(&self, owner: &str) {
        self.shared.queue().unsubscribe_owner(owner);
        self.shared.wake.notify_one();
    }

    /// Last good addresses of a subscribed hostname.
    pub fn addresses(&self, host: &str, family: LookupFamily) -> Option<Vec<IpAddr>> {
        let key = HostKey {
            host: host.to_owned(),
            family,
        };
        self.shared.queue().addresses(&key)
    }

    /// Every hostname in the queue, sorted by host then family.
    pub fn snapshot(&self) -> Vec<HostState> {
        self.shared.queue().snapshot(Instant::now())
    }
}

fn host_key(host: &str, family: LookupFamily) -> Result<HostKey, DnsError> {
    validate_host(host)?;
    Ok(HostKey {
        host: host.to_owned(),
        family,
    })
}

/// Rejects what can never resolve, at subscribe time, so a typo in a config
/// is reported to whoever pushed it instead of failing forever in the queue.
fn validate_host(host: &str) -> Result<(), DnsError> {
    if host.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let invalid = |reason: String| DnsError::InvalidHostname {
        host: host.to_owned(),
        reason,
    };
    if host.is_empty() {
        return Err(invalid("empty".into()));
    }
    hickory_resolver::proto::rr::Name::from_utf8(host)
        .map(|_| ())
        .map_err(|err| invalid(err.to_string()))
}

async fn run(shared: Arc<Shared>, lookup: NameLookup, changes: mpsc::UnboundedSender<HostChanged>) {
    let mut lookups: JoinSet<Result<Answer, LookupError>> = JoinSet::new();
    // The ticket each task works on, found again by task id even if the task
    // panicked, so that its hostname is never left in flight forever.
    let mut tickets: HashMap<Id, Ticket> = HashMap::new();
    loop {
        let (due, next) = {
            let mut queue = shared.queue();
            (queue.take_due(Instant::now()), queue.next_due())
        };
        for ticket in due {
            let lookup = lookup.clone();
            let HostKey { host, family } = ticket.key.clone();
            let known = ticket.known.clone();
            let handle = lookups.spawn(async move { lookup.resolve(&host, family, &known).await });
            tickets.insert(handle.id(), ticket);
        }
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = sleep => {}
            Some(joined) = lookups.join_next_with_id(), if !lookups.is_empty() => {
                let (id, outcome) = match joined {
                    Ok((id, result)) => (id, Ok(result)),
                    Err(err) => (err.id(), Err(err)),
                };
                let Some(ticket) = tickets.remove(&id) else { continue };
                // A panicked lookup counts as a failed one: retried later.
                let result = outcome.unwrap_or_else(|err| {
                    Err(LookupError::Failed {
                        host: ticket.key.host.clone(),
                        reason: format!("lookup task failed: {err}"),
                    })
                });
                let change = shared.queue().complete(&ticket, result, Instant::now());
                if let Some(change) = change {
                    if changes.send(change).is_err() {
                        tracing::debug!("DNS change receiver dropped; notification discarded");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames_are_validated_at_subscribe_time() {
        assert!(validate_host("web.example.com").is_ok());
        assert!(validate_host("10.0.0.1").is_ok());
        assert!(validate_host("fd00::1").is_ok());
        assert!(matches!(
            validate_host(""),
            Err(DnsError::InvalidHostname { .. })
        ));
        let long_label = "a".repeat(64);
        assert!(validate_host(&format!("{long_label}.example")).is_err());
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let settings = ResolverSettings {
            servers: vec!["127.0.0.1:53".parse().unwrap()],
            ..Default::default()
        };
        assert!(matches!(
            DnsResolver::start(&settings),
            Err(DnsError::NoRuntime)
        ));
    }
}
