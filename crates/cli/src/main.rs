//! `seal`: the Sealgate client command line, a thin shell over `sealgate-client`.
//!
//! It parses flags, calls the SDK and prints one JSON object per line on stdout. Errors go to
//! stderr as one line (with the server's problem code when there is one) and a non-zero exit.
//! It must never print or log message plaintext anywhere except the `recv` events on stdout.

mod attach;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sealgate_client::{ClientOptions, Content, Event, SealClient};
use sealgate_proto::send::MessageClass;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(
    name = "seal",
    version,
    about = "Sealgate end-to-end encrypted messaging client"
)]
struct Cli {
    /// Device home folder (sealed state, key file, lock).
    #[arg(long, env = "SEAL_HOME", global = true)]
    home: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Register this device with a gateway and publish its KeyPackages.
    Init {
        /// Gateway base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        server: String,
        /// One-time enrollment token issued by the tenant.
        #[arg(long)]
        token: String,
        /// Device label shown in the directory.
        #[arg(long)]
        name: Option<String>,
    },
    /// Send a text message or a file to a user (1:1) or to a conversation; with `--class`, a
    /// business message to a user or an E.164 number routed by the tenant's policy (E2EE,
    /// else its fallback chain), printing the route taken.
    Send {
        /// Recipient user (uses or creates the 1:1 conversation), or with `--class` an E.164
        /// phone number (+15551234567).
        #[arg(
            long,
            conflicts_with = "conversation",
            required_unless_present = "conversation"
        )]
        to: Option<String>,
        /// Conversation id (hex).
        #[arg(long)]
        conversation: Option<String>,
        /// A file to send (encrypted, uploaded resumably); the text becomes its caption.
        #[arg(long)]
        attach: Option<PathBuf>,
        /// File name shown to recipients (default: the file's own name).
        #[arg(long, requires = "attach")]
        name: Option<String>,
        /// Media type (default: guessed from the extension).
        #[arg(long, requires = "attach")]
        media_type: Option<String>,
        /// Message class (transactional, sensitive, marketing): send by the tenant's policy
        /// with the tenant API key (`--api-key` or `SEAL_API_KEY`).
        #[arg(long, requires = "to", conflicts_with_all = ["attach", "conversation"])]
        class: Option<String>,
        /// With `--class`: the text with sensitive fields removed, for `redacted_text` steps.
        #[arg(long, requires = "class")]
        redacted: Option<String>,
        /// Tenant API key for `--class` sends and `queued`.
        #[arg(long, env = "SEAL_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
        /// The text to send (optional with --attach).
        #[arg(required_unless_present = "attach")]
        text: Option<String>,
    },
    /// Handle messages held until their recipient has an E2EE device (`queue_until_e2ee`):
    /// send the ready ones, run the next step for the expired ones; one JSON line each.
    Queued {
        /// Tenant API key (`SEAL_API_KEY`).
        #[arg(long, env = "SEAL_API_KEY", hide_env_values = true)]
        api_key: Option<String>,
    },
    /// Manage groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Fetch and print new events, one JSON object per line.
    Recv {
        /// Long-poll up to this many seconds when nothing is waiting.
        #[arg(long)]
        wait: Option<u64>,
        /// Download received attachments into this folder (without it they are listed only).
        #[arg(long)]
        save_dir: Option<PathBuf>,
    },
    /// List conversations, one JSON object per line.
    Conversations,
    /// Show this device's identity.
    Whoami,
}

#[derive(Subcommand, Debug)]
enum GroupCommand {
    /// Create a group with all devices of the given users.
    Create {
        /// Comma-separated user ids.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
    },
    /// Add all devices of a user.
    Add {
        #[arg(long)]
        conversation: String,
        #[arg(long)]
        member: String,
    },
    /// Remove all devices of a user.
    Remove {
        #[arg(long)]
        conversation: String,
        #[arg(long)]
        member: String,
    },
}

fn print(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let home = cli
        .home
        .ok_or_else(|| anyhow::anyhow!("no device home: pass --home DIR or set SEAL_HOME"))?;
    let options = ClientOptions::from_env();
    match cli.command {
        Command::Init {
            server,
            token,
            name,
        } => {
            let client = SealClient::init(
                &home,
                &server,
                &token,
                ClientOptions {
                    device_name: name,
                    ..options
                },
            )
            .await?;
            let d = client.device();
            print(&json!({"tenant_id": d.tenant_id, "user": d.user, "device_id": d.device_id}))
        }
        Command::Send {
            to,
            conversation,
            attach: Some(file),
            name,
            media_type,
            text,
            ..
        } => {
            let mut client = SealClient::open_with(&home, options).await?;
            let line =
                attach::send(&mut client, to, conversation, &file, name, media_type, text).await?;
            print(&line)
        }
        Command::Send {
            to: Some(to),
            class: Some(class),
            redacted,
            api_key,
            text,
            ..
        } => {
            let class = MessageClass::parse(&class).ok_or_else(|| {
                anyhow::anyhow!("--class must be transactional, sensitive or marketing")
            })?;
            let api_key = api_key
                .ok_or_else(|| anyhow::anyhow!("--class needs --api-key or SEAL_API_KEY"))?;
            let content = Content {
                text: text.unwrap_or_default(),
                redacted,
            };
            let mut client = SealClient::open_with(&home, options).await?;
            let outcome = client
                .sender(&api_key)?
                .send_to(&to, &content, class)
                .await?;
            print(&outcome)
        }
        Command::Queued { api_key } => {
            let api_key =
                api_key.ok_or_else(|| anyhow::anyhow!("queued needs --api-key or SEAL_API_KEY"))?;
            let mut client = SealClient::open_with(&home, options).await?;
            let mut sender = client.sender(&api_key)?;
            for (hold_id, outcome) in sender.process_queued().await? {
                print(&json!({"hold_id": hold_id, "outcome": outcome}))?;
            }
            print(&json!({"waiting": sender.queued()?}))
        }
        Command::Send {
            to,
            conversation,
            text,
            ..
        } => {
            let text = text.unwrap_or_default();
            let mut client = SealClient::open_with(&home, options).await?;
            let receipt = match (to, conversation) {
                (Some(user), _) => client.send_to_user(&user, &text).await?,
                (None, Some(conversation)) => client.send(&conversation, &text).await?,
                (None, None) => anyhow::bail!("give --to USER or --conversation ID"),
            };
            print(&json!({"conversation": receipt.conversation, "message_id": receipt.message_id}))
        }
        Command::Group { command } => {
            let mut client = SealClient::open_with(&home, options).await?;
            match command {
                GroupCommand::Create { members } => {
                    let conversation = client.create_group(&members).await?;
                    print(&json!({ "conversation": conversation }))
                }
                GroupCommand::Add {
                    conversation,
                    member,
                } => {
                    let epoch = client.add_member(&conversation, &member).await?;
                    print(&json!({"conversation": conversation, "epoch": epoch}))
                }
                GroupCommand::Remove {
                    conversation,
                    member,
                } => {
                    let epoch = client.remove_member(&conversation, &member).await?;
                    print(&json!({"conversation": conversation, "epoch": epoch}))
                }
            }
        }
        Command::Recv { wait, save_dir } => {
            let mut client = SealClient::open_with(&home, options).await?;
            let events = client.receive(wait.map(Duration::from_secs)).await?;
            let mut unsaved = 0;
            for event in &events {
                match (event, &save_dir) {
                    (Event::Attachment(a), Some(dir)) => {
                        let (line, saved) = attach::save(&client, dir, a).await;
                        unsaved += usize::from(!saved);
                        print(&line)?;
                    }
                    (Event::Attachment(a), None) => print(&attach::listed(a))?,
                    _ => print(event)?,
                }
            }
            if unsaved > 0 {
                anyhow::bail!("{unsaved} attachment(s) could not be saved (see attachment.error)");
            }
            Ok(())
        }
        Command::Conversations => {
            let client = SealClient::open_with(&home, options).await?;
            for conversation in client.conversations()? {
                print(&conversation)?;
            }
            Ok(())
        }
        Command::Whoami => {
            let client = SealClient::open_with(&home, options).await?;
            print(&client.device())
        }
    }
}

fn error_line(e: &anyhow::Error) -> String {
    match e.downcast_ref::<sealgate_client::Error>() {
        Some(sdk) => match sdk.problem() {
            Some(p) => format!("seal: error [{}]: {sdk}", p.code),
            None => format!("seal: error: {sdk}"),
        },
        None => format!("seal: error: {e:#}"),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_the_documented_forms() {
        let cli = Cli::parse_from([
            "seal",
            "--home",
            "/h",
            "group",
            "create",
            "--members",
            "bob,carol",
        ]);
        match cli.command {
            Command::Group {
                command: GroupCommand::Create { members },
            } => assert_eq!(members, ["bob", "carol"]),
            other => panic!("{other:?}"),
        }
        let cli = Cli::parse_from(["seal", "--home", "/h", "send", "--to", "bob", "hi there"]);
        assert!(
            matches!(cli.command, Command::Send { to: Some(ref t), ref text, .. } if t == "bob" && text.as_deref() == Some("hi there"))
        );
        assert!(Cli::try_parse_from(["seal", "send", "hi"]).is_err());
        assert!(
            Cli::try_parse_from(["seal", "send", "--to", "b", "--conversation", "c", "x"]).is_err()
        );
        let cli = Cli::parse_from(["seal", "recv", "--wait", "5"]);
        assert!(matches!(
            cli.command,
            Command::Recv {
                wait: Some(5),
                save_dir: None
            }
        ));
        let cli = Cli::parse_from(["seal", "send", "--to", "bob", "--attach", "/tmp/f.pdf"]);
        assert!(matches!(
            cli.command,
            Command::Send {
                attach: Some(_),
                text: None,
                ..
            }
        ));
        let cli = Cli::parse_from([
            "seal",
            "send",
            "--conversation",
            "ab",
            "--attach",
            "f",
            "caption",
        ]);
        assert!(matches!(
            cli.command,
            Command::Send {
                text: Some(_),
                attach: Some(_),
                ..
            }
        ));
        assert!(Cli::try_parse_from(["seal", "send", "--to", "bob"]).is_err());
        assert!(Cli::try_parse_from(["seal", "send", "--to", "bob", "--name", "x", "t"]).is_err());
        let cli = Cli::parse_from(["seal", "recv", "--save-dir", "/tmp/in"]);
        assert!(matches!(
            cli.command,
            Command::Recv {
                save_dir: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn error_lines_carry_the_problem_code() {
        let problem = sealgate_proto::Problem::new(sealgate_proto::ErrorCode::UnknownUser, None);
        let e = anyhow::Error::from(sealgate_client::Error::Server(Box::new(problem)));
        let line = error_line(&e);
        assert!(line.contains("[unknown_user]"), "{line}");
        assert!(!line.contains('\n'));
    }
}
