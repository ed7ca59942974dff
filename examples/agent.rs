//! A prompt agent for slicewall's tests: registers with slicewalld on the system bus as the
//! agent of the caller's uid, prints `registered`, then prints `added ID` and `closed ID
//! OUTCOME` for each PromptAdded and PromptClosed signal it receives. It never answers, and
//! exits at the end of its standard input.

use futures_util::StreamExt;
use tokio::io::AsyncBufReadExt;

type PromptRow = (
    u64,
    u32,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    u16,
    String,
    String,
    u64,
);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let connection = zbus::Connection::system().await?;
        let mut messages = zbus::MessageStream::from(&connection);
        connection
            .call_method(
                Some("org.slicewall.Firewall1"),
                "/org/slicewall/Firewall1",
                Some("org.slicewall.Firewall1"),
                "RegisterAgent",
                &(),
            )
            .await?;
        println!("registered");
        let mut input = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        loop {
            tokio::select! {
                line = input.next_line() => {
                    if !matches!(line, Ok(Some(_))) {
                        return Ok(());
                    }
                }
                Some(Ok(message)) = messages.next() => {
                    let header = message.header();
                    if header.message_type() != zbus::message::Type::Signal {
                        continue;
                    }
                    match header.member().map(|member| member.as_str()) {
                        Some("PromptAdded") => {
                            if let Ok(row) = message.body().deserialize::<PromptRow>() {
                                println!("added {}", row.0);
                            }
                        }
                        Some("PromptClosed") => {
                            if let Ok((id, outcome)) = message.body().deserialize::<(u64, String)>() {
                                println!("closed {id} {outcome}");
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    })
}
