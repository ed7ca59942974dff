//! `slicewallctl prompts` and `slicewallctl agent`.

use std::collections::VecDeque;
use std::process::ExitCode;

use slicewall::agent::{describe_error, AgentEvent};
use slicewall::control::Firewall1Proxy;
use slicewall::prompt::{now_usec, parse_terminal_answer, printable, Answer, Prompt};
use tokio::io::AsyncBufReadExt;

/// Prints the open prompts as a table.
pub async fn list(proxy: Firewall1Proxy<'static>) -> Result<ExitCode, zbus::Error> {
    let prompts: Vec<Prompt> = proxy
        .list_prompts()
        .await?
        .into_iter()
        .map(Prompt::from)
        .collect();
    let now = now_usec();
    let header = ["ID", "APP", "EXE", "DESTINATION", "UNIT", "LEFT"];
    let mut table: Vec<[String; 6]> = vec![header.map(str::to_owned)];
    for prompt in &prompts {
        // Root sees every user's prompts, whose names those users chose: control characters
        // are escaped so that none reaches the terminal.
        let or_dash = |text: &str| {
            if text.is_empty() {
                "-".to_owned()
            } else {
                printable(text)
            }
        };
        table.push([
            prompt.id.to_string(),
            printable(prompt.display_name()),
            or_dash(&prompt.exe),
            printable(&prompt.destination()),
            or_dash(&prompt.unit),
            format!("{}s", prompt.seconds_left(now)),
        ]);
    }
    print_table(&table);
    println!("\n{} open prompts", prompts.len());
    Ok(ExitCode::SUCCESS)
}

fn print_table(table: &[[String; 6]]) {
    let mut widths = [0usize; 6];
    for row in table {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in table {
        let mut line = String::new();
        for (index, (cell, width)) in row.iter().zip(widths).enumerate() {
            // The ID and the seconds left are right-aligned.
            if index == 0 || index == 5 {
                line.push_str(&format!("{cell:>width$}  "));
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        println!("{}", line.trim_end());
    }
}

/// Answers one prompt.
pub async fn answer(
    proxy: Firewall1Proxy<'static>,
    id: u64,
    answer: Answer,
) -> Result<ExitCode, zbus::Error> {
    proxy
        .answer_prompt(
            id,
            answer.verdict.as_str(),
            answer.lifetime.as_str(),
            answer.scope.as_str(),
        )
        .await?;
    println!("answered prompt {id}: {answer}");
    Ok(ExitCode::SUCCESS)
}

const QUESTION: &str =
    "Answer: a (allow once), A (allow always), d (deny once), D (deny always), [LIFETIME] [SCOPE]";

/// Runs the terminal agent until Ctrl-C, SIGTERM or the end of standard input, then
/// unregisters.
pub async fn terminal_agent(proxy: Firewall1Proxy<'static>) -> Result<ExitCode, zbus::Error> {
    use tokio::signal::unix::{signal, SignalKind};

    let connection = proxy.inner().connection().clone();
    let (sender, mut events) = tokio::sync::mpsc::unbounded_channel();
    let follower = tokio::spawn(async move {
        if let Err(error) = slicewall::agent::follow(&connection, &sender).await {
            eprintln!("slicewallctl: lost the daemon: {}", describe_error(&error));
        }
    });
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|error| zbus::Error::InputOutput(error.into()))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|error| zbus::Error::InputOutput(error.into()))?;
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut queue: VecDeque<Prompt> = VecDeque::new();
    // Input that arrives right after the shown prompt closed and another took its place was
    // typed for the closed one, so it is not applied to the new one.
    let mut replaced_at: Option<std::time::Instant> = None;
    let code = loop {
        tokio::select! {
            _ = interrupt.recv() => break ExitCode::from(130),
            _ = terminate.recv() => break ExitCode::from(143),
            event = events.recv() => {
                let Some(event) = event else {
                    break ExitCode::FAILURE;
                };
                if handle_event(event, &mut queue) {
                    replaced_at = Some(std::time::Instant::now());
                }
            }
            line = lines.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => break ExitCode::SUCCESS,
                    Err(error) => {
                        eprintln!("slicewallctl: failed to read standard input: {error}");
                        break ExitCode::FAILURE;
                    }
                };
                let Some(prompt) = queue.front() else {
                    if !line.trim().is_empty() {
                        println!("no open prompt to answer");
                    }
                    continue;
                };
                let id = prompt.id;
                if replaced_at.is_some_and(|at| at.elapsed() < STALE_INPUT) {
                    replaced_at = None;
                    println!("the prompt you answered closed before the answer; answer prompt {id} again");
                    continue;
                }
                match parse_terminal_answer(&line) {
                    Ok(answer) => match self::answer_quietly(&proxy, id, answer).await {
                        Ok(()) => {
                            println!("answered prompt {id}: {answer}");
                            queue.pop_front();
                            show_next(&queue);
                        }
                        Err(error) => println!("prompt {id}: {}", describe_error(&error)),
                    },
                    Err(message) => println!("{message}"),
                }
            }
        }
    };
    follower.abort();
    if let Err(error) = proxy.unregister_agent().await {
        eprintln!(
            "slicewallctl: failed to unregister: {}",
            describe_error(&error)
        );
    }
    Ok(code)
}

async fn answer_quietly(
    proxy: &Firewall1Proxy<'static>,
    id: u64,
    answer: Answer,
) -> Result<(), zbus::Error> {
    proxy
        .answer_prompt(
            id,
            answer.verdict.as_str(),
            answer.lifetime.as_str(),
            answer.scope.as_str(),
        )
        .await
}

/// Time after another prompt takes the place of the shown one during which input is taken as
/// meant for the closed prompt.
const STALE_INPUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Handles an event of the daemon. Returns true when the shown prompt closed and another one is
/// shown in its place.
fn handle_event(event: AgentEvent, queue: &mut VecDeque<Prompt>) -> bool {
    match event {
        AgentEvent::Registered => {
            // The daemon offers its open prompts again right after this.
            queue.clear();
            println!("registered as the prompt agent; waiting for prompts (Ctrl-C to stop)");
            false
        }
        AgentEvent::RegisterFailed(message) => {
            println!("failed to register as the prompt agent: {message}; retrying when slicewalld restarts");
            false
        }
        AgentEvent::DaemonGone => {
            queue.clear();
            println!("slicewalld stopped; waiting for it to come back");
            false
        }
        AgentEvent::Added(prompt) => {
            if queue.iter().any(|queued| queued.id == prompt.id) {
                return false;
            }
            queue.push_back(*prompt);
            if queue.len() == 1 {
                show_next(queue);
            } else {
                println!("({} prompts waiting)", queue.len());
            }
            false
        }
        AgentEvent::Closed(id, outcome) => {
            let Some(index) = queue.iter().position(|prompt| prompt.id == id) else {
                return false;
            };
            queue.remove(index);
            println!("prompt {id} closed: {outcome}");
            if index != 0 {
                return false;
            }
            show_next(queue);
            !queue.is_empty()
        }
    }
}

fn show_next(queue: &VecDeque<Prompt>) {
    let Some(prompt) = queue.front() else {
        return;
    };
    println!();
    println!(
        "prompt {}: {} wants to connect",
        prompt.id,
        printable(prompt.display_name())
    );
    if !prompt.exe.is_empty() {
        println!("  program: {}", printable(&prompt.exe));
    }
    println!("  to: {}", printable(&prompt.destination()));
    if !prompt.unit.is_empty() {
        println!("  unit: {}", printable(&prompt.unit));
    }
    println!(
        "  uid {}, {} s left",
        prompt.uid,
        prompt.seconds_left(now_usec())
    );
    println!("{QUESTION}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(id: u64) -> Box<Prompt> {
        Box::new(Prompt {
            id,
            ..slicewall::prompt::sample_prompt(0)
        })
    }

    #[test]
    fn closing_the_shown_prompt_marks_input_stale() {
        let mut queue = VecDeque::new();
        assert!(!handle_event(AgentEvent::Added(prompt(1)), &mut queue));
        assert!(!handle_event(AgentEvent::Added(prompt(2)), &mut queue));
        assert!(!handle_event(AgentEvent::Added(prompt(3)), &mut queue));

        // A prompt behind the shown one closes: the shown one stays.
        assert!(!handle_event(
            AgentEvent::Closed(2, "timeout".into()),
            &mut queue
        ));
        // The shown one closes and prompt 3 takes its place.
        assert!(handle_event(
            AgentEvent::Closed(1, "timeout".into()),
            &mut queue
        ));
        assert_eq!(queue.front().map(|prompt| prompt.id), Some(3));
        // The last one closes and nothing is shown.
        assert!(!handle_event(
            AgentEvent::Closed(3, "timeout".into()),
            &mut queue
        ));
    }
}
