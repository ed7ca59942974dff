//! slicewall-agent: shows slicewalld's prompts as desktop notifications and sends the chosen
//! answer back. See slicewall-agent(1).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use notify_rust::{Notification, NotificationHandle, NotificationResponse, Timeout, Urgency};
use slicewall::agent::{describe_error, AgentEvent};
use slicewall::control::Firewall1Proxy;
use slicewall::prompt::{self, AgentConfig, Prompt};
use tokio::sync::mpsc;
use tracing_subscriber::prelude::*;

#[derive(Parser)]
#[command(
    name = "slicewall-agent",
    version,
    about = "Show slicewall's prompts as desktop notifications"
)]
struct Cli {
    /// Settings file (default: $XDG_CONFIG_HOME/slicewall/agent.toml, which may be missing).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Show a notification for a sample prompt without contacting slicewalld, wait for an
    /// action, print the answer it stands for and exit.
    #[arg(long)]
    preview: bool,
}

/// Wait between attempts to reach the system bus.
const BUS_RETRY: Duration = Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let config = match load_config(cli.config) {
        Ok(config) => config,
        Err(message) => {
            eprintln!("slicewall-agent: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("slicewall-agent: failed to start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if cli.preview {
        runtime.block_on(preview(config))
    } else {
        runtime.block_on(run(config))
    }
}

/// Sends the log to the journal when one listens, to standard error otherwise.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLICEWALL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::path::Path::new("/run/systemd/journal/socket")
        .exists()
        .then(tracing_journald::layer)
        .and_then(Result::ok);
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
    }
}

/// Reads the settings file. A missing default file gives the defaults; a missing file named
/// with `--config` is an error.
fn load_config(path: Option<PathBuf>) -> Result<AgentConfig, String> {
    let explicit = path.is_some();
    let Some(path) = path.or_else(prompt::default_config_path) else {
        return Ok(AgentConfig::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => AgentConfig::parse(&text, &path.display().to_string())
            .map_err(|error| error.to_string()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => {
            Ok(AgentConfig::default())
        }
        Err(error) => Err(format!("failed to read {}: {error}", path.display())),
    }
}

/// Reads the capabilities of the session's notification server.
async fn server_capabilities(
    session: &zbus::Connection,
) -> zbus::Result<prompt::ServerCapabilities> {
    let reply = session
        .call_method(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            Some("org.freedesktop.Notifications"),
            "GetCapabilities",
            &(),
        )
        .await?;
    let capabilities: Vec<String> = reply.body().deserialize()?;
    Ok(prompt::ServerCapabilities::from_list(&capabilities))
}

/// Builds the notification for a prompt, asking the server for its capabilities first. A server
/// that cannot be asked is treated as one without actions or markup, so the text still says how
/// to answer.
async fn build_notification(
    session: Option<&zbus::Connection>,
    prompt: &Prompt,
    config: &AgentConfig,
) -> Notification {
    let server = match session {
        Some(session) => match server_capabilities(session).await {
            Ok(server) => server,
            Err(error) => {
                tracing::warn!(
                    prompt = prompt.id,
                    "failed to read the notification server's capabilities: {}",
                    describe_error(&error)
                );
                prompt::ServerCapabilities::default()
            }
        },
        None => prompt::ServerCapabilities::default(),
    };
    let icon = prompt::icon_for(&prompt.app_id, &prompt::data_dirs());
    let text = prompt::notification_text(prompt, config, server, icon);
    let mut notification = Notification::new();
    notification
        .appname("slicewall")
        .summary(&text.summary)
        .body(&text.body)
        .icon(&text.icon)
        .urgency(Urgency::Critical);
    let left = prompt.seconds_left(prompt::now_usec());
    // The daemon sends PromptClosed at the deadline; the timeout only covers a lost signal.
    notification.timeout(Timeout::Milliseconds(
        u32::try_from(left.saturating_add(1).saturating_mul(1000)).unwrap_or(u32::MAX),
    ));
    for (key, label) in &text.actions {
        notification.action(key, label);
    }
    notification
}

/// Shows the sample prompt and prints the answer of the action the user picks.
async fn preview(config: AgentConfig) -> ExitCode {
    let session = match zbus::Connection::session().await {
        Ok(session) => session,
        Err(error) => {
            eprintln!("slicewall-agent: cannot reach the session bus: {error}");
            return ExitCode::FAILURE;
        }
    };
    let sample = prompt::sample_prompt(prompt::now_usec());
    let notification = build_notification(Some(&session), &sample, &config).await;
    let handle = match notification.show_async().await {
        Ok(handle) => handle,
        Err(error) => {
            eprintln!("slicewall-agent: failed to show the notification: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("shown notification {}", handle.id());
    let mut outcome = String::new();
    handle
        .wait_for_action_async(|response| outcome = describe_response(response, &config))
        .await;
    println!("{outcome}");
    ExitCode::SUCCESS
}

fn describe_response(response: &NotificationResponse, config: &AgentConfig) -> String {
    match response {
        NotificationResponse::Action(key) => match config.answer_for_key(key) {
            Some(answer) => format!("answer: {answer}"),
            None => format!("ignored action {key:?}"),
        },
        NotificationResponse::Default => "ignored the default action".to_owned(),
        NotificationResponse::Closed(reason) => format!("closed: {reason:?}"),
        other => format!("ignored {other:?}"),
    }
}

/// A notification on screen for one prompt.
struct Shown {
    handle: Arc<NotificationHandle>,
    waiter: tokio::task::JoinHandle<()>,
}

/// User response to a notification.
struct Response {
    prompt_id: u64,
    response: NotificationResponse,
}

/// Follows the daemon for as long as the agent runs, connecting to the system bus again when it
/// restarts.
async fn run(config: AgentConfig) -> ExitCode {
    let mut last_error = String::new();
    loop {
        match zbus::Connection::system().await {
            Ok(connection) => {
                last_error.clear();
                serve(&connection, &config).await;
                tracing::warn!("lost the system bus; reconnecting");
            }
            Err(error) => {
                let text = error.to_string();
                if text != last_error {
                    tracing::warn!("cannot reach the system bus: {text}; retrying");
                    last_error = text;
                }
            }
        }
        tokio::time::sleep(BUS_RETRY).await;
    }
}

/// Serves prompts on one system bus connection until it closes.
async fn serve(connection: &zbus::Connection, config: &AgentConfig) {
    let proxy = match Firewall1Proxy::new(connection).await {
        Ok(proxy) => proxy,
        Err(error) => {
            tracing::error!("failed to create the slicewalld proxy: {error}");
            return;
        }
    };
    let (event_sender, mut events) = mpsc::unbounded_channel();
    let follower_connection = connection.clone();
    let mut follower = tokio::spawn(async move {
        if let Err(error) = slicewall::agent::follow(&follower_connection, &event_sender).await {
            tracing::error!("stopped following slicewalld: {}", describe_error(&error));
        }
    });
    let (response_sender, mut responses) = mpsc::unbounded_channel::<Response>();
    let mut shown: HashMap<u64, Shown> = HashMap::new();
    let mut session: Option<zbus::Connection> = None;

    loop {
        tokio::select! {
            _ = &mut follower => break,
            event = events.recv() => {
                let Some(event) = event else { break };
                match event {
                    AgentEvent::Registered => {
                        tracing::info!("registered as the prompt agent");
                        close_all(&mut shown).await;
                    }
                    AgentEvent::RegisterFailed(message) => {
                        tracing::error!("failed to register as the prompt agent: {message}; retrying when slicewalld restarts");
                    }
                    AgentEvent::DaemonGone => {
                        tracing::info!("slicewalld stopped; closing its prompts");
                        close_all(&mut shown).await;
                    }
                    AgentEvent::Added(prompt) => {
                        if shown.contains_key(&prompt.id) {
                            continue;
                        }
                        if session.is_none() {
                            session = connect_session(prompt.id).await;
                        }
                        let notification = build_notification(session.as_ref(), &prompt, config).await;
                        match notification.show_async().await {
                            Ok(handle) => {
                                tracing::info!(prompt = prompt.id, "showing prompt {} for {} to {}", prompt.id, prompt.display_name(), prompt.destination());
                                let handle = Arc::new(handle);
                                let waiter = spawn_waiter(prompt.id, Arc::clone(&handle), response_sender.clone());
                                shown.insert(prompt.id, Shown { handle, waiter });
                            }
                            Err(error) => {
                                tracing::error!(prompt = prompt.id, "failed to show prompt {}: {error}", prompt.id);
                                // The session bus may have restarted; connect again next time.
                                session = None;
                            }
                        }
                    }
                    AgentEvent::Closed(id, outcome) => {
                        if let Some(entry) = shown.remove(&id) {
                            tracing::info!(prompt = id, "prompt {id} closed: {outcome}");
                            entry.waiter.abort();
                            entry.handle.close_async().await;
                        }
                    }
                }
            }
            response = responses.recv() => {
                let Some(Response { prompt_id, response }) = response else { continue };
                if shown.remove(&prompt_id).is_none() {
                    continue;
                }
                answer(&proxy, config, prompt_id, &response).await;
            }
        }
    }
    follower.abort();
    close_all(&mut shown).await;
}

async fn connect_session(prompt_id: u64) -> Option<zbus::Connection> {
    match zbus::Connection::session().await {
        Ok(session) => Some(session),
        Err(error) => {
            tracing::error!(
                prompt = prompt_id,
                "cannot reach the session bus for prompt {prompt_id}: {error}"
            );
            None
        }
    }
}

fn spawn_waiter(
    prompt_id: u64,
    handle: Arc<NotificationHandle>,
    responses: mpsc::UnboundedSender<Response>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut picked = None;
        handle
            .wait_for_action_async(|response| picked = Some(response.clone()))
            .await;
        if let Some(response) = picked {
            let _ = responses.send(Response {
                prompt_id,
                response,
            });
        }
    })
}

/// Sends the answer that a notification response stands for. A dismissed notification answers
/// nothing: the daemon applies its timeout answer at the deadline.
async fn answer(
    proxy: &Firewall1Proxy<'_>,
    config: &AgentConfig,
    prompt_id: u64,
    response: &NotificationResponse,
) {
    let NotificationResponse::Action(key) = response else {
        tracing::info!(
            prompt = prompt_id,
            "prompt {prompt_id}: notification closed without an answer ({response:?})"
        );
        return;
    };
    let Some(answer) = config.answer_for_key(key) else {
        tracing::warn!(
            prompt = prompt_id,
            "prompt {prompt_id}: ignored unknown action {key:?}"
        );
        return;
    };
    match proxy
        .answer_prompt(
            prompt_id,
            answer.verdict.as_str(),
            answer.lifetime.as_str(),
            answer.scope.as_str(),
        )
        .await
    {
        Ok(()) => tracing::info!(prompt = prompt_id, "answered prompt {prompt_id}: {answer}"),
        Err(error) => tracing::error!(
            prompt = prompt_id,
            "failed to answer prompt {prompt_id} with {answer}: {}",
            describe_error(&error)
        ),
    }
}

async fn close_all(shown: &mut HashMap<u64, Shown>) {
    for (_, entry) in shown.drain() {
        entry.waiter.abort();
        entry.handle.close_async().await;
    }
}
