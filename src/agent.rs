//! The bus side of a prompt agent, shared by `slicewall-agent` and `slicewallctl agent`: it
//! registers with the daemon, turns the daemon's unicast signals into [`AgentEvent`]s, and
//! registers again whenever the daemon's bus name gets a new owner (a daemon restart).

use futures_util::StreamExt;
use tokio::sync::mpsc::UnboundedSender;

use crate::control::{Firewall1Proxy, BUS_NAME};
use crate::prompt::Prompt;

/// Event that an agent receives from the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// The agent is registered, the first time or again after a daemon restart. Prompts that the
    /// agent shows from before are stale: the daemon offers the open ones again.
    Registered,
    /// Registration failed; the agent retries when the daemon's name gets a new owner.
    RegisterFailed(String),
    /// The daemon's bus name lost its owner, so every shown prompt is void.
    DaemonGone,
    Added(Box<Prompt>),
    /// A prompt closed, with its outcome (`allow`, `deny`, `timeout`, `no-agent`, `gone`).
    Closed(u64, String),
}

/// Registers as the agent of the caller's UID on `connection` and sends events to `events`
/// until the connection closes or `events` is dropped. Returns the error that ended it, if any.
pub async fn follow(
    connection: &zbus::Connection,
    events: &UnboundedSender<AgentEvent>,
) -> zbus::Result<()> {
    let proxy = Firewall1Proxy::new(connection).await?;
    let bus = zbus::fdo::DBusProxy::new(connection).await?;
    // Subscribe before registering: the daemon offers open prompts right after RegisterAgent.
    let mut added = proxy.receive_prompt_added().await?;
    let mut closed = proxy.receive_prompt_closed().await?;
    let mut owners = bus
        .receive_name_owner_changed_with_args(&[(0, BUS_NAME)])
        .await?;

    register(&proxy, events).await;
    loop {
        let sent = tokio::select! {
            signal = added.next() => {
                let Some(signal) = signal else { return Ok(()) };
                match signal.args() {
                    Ok(args) => events.send(AgentEvent::Added(Box::new(Prompt {
                        id: args.id,
                        uid: args.uid,
                        unit: args.unit.to_owned(),
                        app_id: args.app_id.to_owned(),
                        app_name: args.app_name.to_owned(),
                        exe: args.exe.to_owned(),
                        sha256: args.sha256.to_owned(),
                        host: args.host.to_owned(),
                        address: args.address.to_owned(),
                        port: args.port,
                        protocol: args.protocol.to_owned(),
                        cgroup: args.cgroup.to_owned(),
                        deadline_usec: args.deadline_usec,
                    }))),
                    Err(error) => {
                        tracing::warn!("ignored a PromptAdded signal with invalid arguments: {error}");
                        Ok(())
                    }
                }
            }
            signal = closed.next() => {
                let Some(signal) = signal else { return Ok(()) };
                match signal.args() {
                    Ok(args) => events.send(AgentEvent::Closed(args.id, args.outcome.to_owned())),
                    Err(error) => {
                        tracing::warn!("ignored a PromptClosed signal with invalid arguments: {error}");
                        Ok(())
                    }
                }
            }
            change = owners.next() => {
                let Some(change) = change else { return Ok(()) };
                let has_owner = change.args().is_ok_and(|args| args.new_owner().is_some());
                if has_owner {
                    register(&proxy, events).await;
                    Ok(())
                } else {
                    events.send(AgentEvent::DaemonGone)
                }
            }
        };
        if sent.is_err() {
            // The receiver is gone, so nobody listens any more.
            return Ok(());
        }
    }
}

async fn register(proxy: &Firewall1Proxy<'_>, events: &UnboundedSender<AgentEvent>) {
    let event = match proxy.register_agent().await {
        Ok(()) => AgentEvent::Registered,
        Err(error) => AgentEvent::RegisterFailed(describe_error(&error)),
    };
    let _ = events.send(event);
}

/// Formats a D-Bus error as `NAME: message`, the form the manual pages document.
pub fn describe_error(error: &zbus::Error) -> String {
    match error {
        zbus::Error::MethodError(name, Some(message), _) => format!("{name}: {message}"),
        zbus::Error::MethodError(name, None, _) => name.to_string(),
        zbus::Error::FDO(fdo) => {
            use zbus::DBusError;
            let fdo: &zbus::fdo::Error = fdo;
            format!("{}: {}", fdo.name(), fdo.description().unwrap_or_default())
        }
        other => other.to_string(),
    }
}
