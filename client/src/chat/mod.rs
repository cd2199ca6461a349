//! `dmls chat GROUP`: a full-screen terminal chat in one group.
//!
//! Three parts run at once: a thread reading the terminal's keys, a task that owns the
//! [`Client`] (it long-polls the relay with [`Client::sync_step`] and carries out what the user
//! asks: send, update, remove, status), and the screen loop in between, which draws [`ui::App`]
//! after every key and every report of the task. A command from the user cancels a long poll
//! in progress, so a message goes out at once; the scrollback is read from the engine's history
//! after every sync, so no message is missed when a poll is cancelled.
//!
//! The terminal is put back (raw mode off, main screen, cursor shown) when the chat ends for
//! any reason: `/quit`, Ctrl-C, an error, or a panic (a panic hook restores it before the
//! panic message is printed).

pub mod input;
pub mod ui;

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use crossterm::event::{self, DisableBracketedPaste, EnableBracketedPaste, Event};
use crossterm::execute;
use crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use tokio::sync::mpsc;

use crate::client::{Client, ClientError, Delivery, dgroup_hex, now_ms};
use crate::engine::{DGroupStatus, Event as EngineEvent, MessageId, ReceivedMessage};
use crate::relay::RelayError;
use ui::{Action, App, Connection};

/// How many of the latest messages the scrollback starts with and re-reads.
const HISTORY: usize = 500;
/// How long one long poll waits for news.
const WAIT_MS: u64 = 25_000;
/// The pause before trying an unreachable relay again.
const RETRY: Duration = Duration::from_secs(2);

/// What the screen asks the client task to do.
#[derive(Debug)]
enum Command {
    Send { local: u64, text: String },
    Update,
    Remove(String),
    Add(Vec<String>),
    Status,
    Verify(String),
    Rename(String),
}

/// What the client task reports to the screen.
#[derive(Debug)]
enum Report {
    History(Vec<ReceivedMessage>),
    Status(Box<DGroupStatus>),
    Accepted {
        local: u64,
        id: Option<MessageId>,
        queued: bool,
    },
    SendFailed {
        local: u64,
        error: String,
    },
    Online,
    Offline(String),
    Note(String),
    Error(String),
}

/// Runs the chat in `group` until the user quits.
pub async fn run(client: Client, group: &str) -> Result<()> {
    require_terminal()?;
    let id = client.resolve_group(group).await?;
    let hex = dgroup_hex(&id);
    let status = client.status(&hex).await?;
    let history = client.log(&hex, HISTORY).await?;
    let mut app = App::new(&status.summary.name, client.client_id());
    app.set_status(&status);
    app.add_history(&history);
    app.note(
        &format!(
            "Chatting in {} as {}. /help lists the commands.",
            status.summary.name,
            client.client_id()
        ),
        false,
    );

    let (commands, command_rx) = mpsc::unbounded_channel();
    let (report_tx, mut reports) = mpsc::unbounded_channel();
    let worker = tokio::spawn(client_task(client, hex, command_rx, report_tx));

    let guard = TerminalGuard::enter()?;
    let (mut keys, stop_keys) = spawn_key_reader();
    let result = screen_loop(&mut app, &commands, &mut keys, &mut reports).await;
    stop_keys.store(true, Ordering::Relaxed);
    drop(guard);
    // Let a command in progress finish (what it stored goes out later in any case).
    drop(commands);
    let _ = tokio::time::timeout(Duration::from_secs(3), worker).await;
    if app.has_queued() {
        eprintln!(
            "Some messages are not on the relay yet; they go out with your next dmls command."
        );
    }
    result
}

/// Fails with what to do instead when standard input or output is not a terminal.
pub fn require_terminal() -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!(
            "dmls chat needs a terminal, and standard input or output is not one; \
             in scripts use `dmls sync --follow` to read and `dmls send` to write"
        );
    }
    Ok(())
}

/// Draws and reacts until the user quits.
async fn screen_loop(
    app: &mut App,
    commands: &mpsc::UnboundedSender<Command>,
    keys: &mut mpsc::UnboundedReceiver<std::io::Result<Event>>,
    reports: &mut mpsc::UnboundedReceiver<Report>,
) -> Result<()> {
    let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))
        .context("cannot use the terminal")?;
    terminal.clear().context("cannot clear the terminal")?;
    let mut tick = tokio::time::interval(Duration::from_secs(30));
    let mut reports_open = true;
    loop {
        terminal
            .draw(|f| ui::draw(f, app))
            .context("cannot draw on the terminal")?;
        tokio::select! {
            key = keys.recv() => {
                let event = match key {
                    Some(Ok(e)) => e,
                    Some(Err(e)) => return Err(e).context("cannot read the terminal"),
                    None => bail!("the terminal's input ended"),
                };
                let command = match app.on_event(&event, now_ms()) {
                    Action::None => continue,
                    Action::Quit => return Ok(()),
                    Action::Send { local, text } => Command::Send { local, text },
                    Action::Update => Command::Update,
                    Action::Remove(m) => Command::Remove(m),
                    Action::Add(m) => Command::Add(m),
                    Action::Status => Command::Status,
                    Action::Verify(m) => Command::Verify(m),
                    Action::Rename(n) => Command::Rename(n),
                };
                if commands.send(command).is_err() {
                    app.note("the connection to the relay stopped; /quit and start again", true);
                }
            }
            report = reports.recv(), if reports_open => match report {
                Some(r) => apply(app, r),
                // The task ended (it reported why); the screen stays for reading.
                None => reports_open = false,
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tick.tick() => {}
        }
    }
}

fn apply(app: &mut App, report: Report) {
    match report {
        Report::History(h) => app.add_history(&h),
        Report::Status(s) => app.set_status(&s),
        Report::Accepted { local, id, queued } => app.accepted(local, id, queued),
        Report::SendFailed { local, error } => {
            app.failed(local, &error);
        }
        Report::Online => {
            app.connection = Connection::Online;
            app.flushed();
        }
        Report::Offline(why) => app.connection = Connection::Offline(why),
        Report::Note(n) => app.note(&n, false),
        Report::Error(e) => app.note(&e, true),
    }
}

/// What ended one wait of the client task.
enum Next {
    Command(Option<Command>),
    Synced(Result<crate::client::SyncStep, ClientError>),
}

/// Owns the client: long-polls the relay and carries out the user's commands, reporting to
/// the screen. Ends when the screen drops its command sender.
async fn client_task(
    mut client: Client,
    group: String,
    mut commands: mpsc::UnboundedReceiver<Command>,
    reports: mpsc::UnboundedSender<Report>,
) {
    let report = |r: Report| {
        let _ = reports.send(r);
    };
    if let Err(e) = client.upkeep_key_packages().await {
        report(connection_report(&e));
    }
    let mut wait_ms = 0;
    let mut offline = false;
    loop {
        let next = match commands.try_recv() {
            Ok(c) => Next::Command(Some(c)),
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) => {
                tokio::select! {
                    biased;
                    c = commands.recv() => Next::Command(c),
                    r = async {
                        if offline {
                            tokio::time::sleep(RETRY).await;
                        }
                        client.sync_step(wait_ms).await
                    } => Next::Synced(r),
                }
            }
        };
        match next {
            Next::Command(None) => return,
            Next::Command(Some(c)) => {
                if let Some(down) = command(&mut client, &group, c, &report).await {
                    offline = down;
                }
            }
            Next::Synced(Ok(step)) => {
                offline = false;
                report(Report::Online);
                wait_ms = if step.more { 0 } else { WAIT_MS };
                let ours = client.resolve_group(&group).await.ok();
                for e in &step.events {
                    if let Some(line) = event_note(e, ours.as_ref(), &[]) {
                        report(Report::Note(line));
                    }
                }
                refresh(&client, &group, &report).await;
            }
            Next::Synced(Err(e)) => {
                offline = is_unreachable(&e);
                wait_ms = 0;
                report(connection_report(&e));
            }
        }
    }
}

/// Carries out one command; returns whether the relay is unreachable, when it found out.
async fn command(
    client: &mut Client,
    group: &str,
    c: Command,
    report: &impl Fn(Report),
) -> Option<bool> {
    let delivered = match c {
        Command::Send { local, text } => {
            let me = client.client_id().to_string();
            match client.send_text(group, &text).await {
                Ok(delivery) => {
                    // The engine put it in the history: its latest message of ours.
                    let id = client
                        .log(group, 1)
                        .await
                        .ok()
                        .and_then(|h| h.into_iter().rev().find(|m| m.sender == me))
                        .map(|m| m.message_id);
                    let queued = matches!(delivery, Delivery::Queued { .. });
                    report(Report::Accepted { local, id, queued });
                    Ok(delivery)
                }
                Err(e) => {
                    report(Report::SendFailed {
                        local,
                        error: crate::cli::client_error_text(&e),
                    });
                    Err(e)
                }
            }
        }
        Command::Update => client.update(group).await.inspect(|_| {
            report(Report::Note("You made a DMLS Update (a fresh key).".into()));
        }),
        Command::Remove(member) => client.remove(group, &member).await.inspect(|_| {
            report(Report::Note(format!(
                "You removed {member}; the others follow when they sync."
            )));
        }),
        Command::Add(members) => client.add(group, &members).await.inspect(|_| {
            report(Report::Note(format!(
                "You added {}; the others add them too when they sync. They read what is said from now on.",
                members.join(", ")
            )));
        }),
        Command::Rename(name) => client.rename(group, &name).await.inspect(|_| {
            report(Report::Note(format!(
                "You renamed the group to {name:?}; the others see it when they sync."
            )));
        }),
        Command::Verify(member) => {
            match crate::cli::verification(client, &member).await {
                Ok(v) => report(Report::Note(v.text(client.client_id()))),
                Err(e) => report(Report::Error(crate::cli::error_text(&e))),
            }
            return None;
        }
        Command::Status => {
            match client.status(group).await {
                Ok(s) => {
                    report(Report::Note(crate::cli::status_text(&s)));
                    report(Report::Status(Box::new(s)));
                }
                Err(e) => report(Report::Error(crate::cli::client_error_text(&e))),
            }
            return None;
        }
    };
    let down = match delivered {
        Ok(Delivery::Sent) => {
            report(Report::Online);
            Some(false)
        }
        Ok(Delivery::Queued { reason }) => {
            report(Report::Offline(reason));
            Some(true)
        }
        Err(e) => {
            report(Report::Error(crate::cli::client_error_text(&e)));
            None
        }
    };
    refresh(client, group, report).await;
    down
}

/// Sends the latest history and status to the screen.
async fn refresh(client: &Client, group: &str, report: &impl Fn(Report)) {
    match client.log(group, HISTORY).await {
        Ok(h) => report(Report::History(h)),
        Err(e) => report(Report::Error(crate::cli::client_error_text(&e))),
    }
    if let Ok(s) = client.status(group).await {
        report(Report::Status(Box::new(s)));
    }
}

fn is_unreachable(e: &ClientError) -> bool {
    match e {
        ClientError::Relay(RelayError::Network { .. }) => true,
        ClientError::Relay(r) => r.status().is_some_and(|s| s >= 500 || s == 429),
        _ => false,
    }
}

fn connection_report(e: &ClientError) -> Report {
    let text = crate::cli::client_error_text(e);
    if is_unreachable(e) {
        Report::Offline(text)
    } else {
        Report::Error(text)
    }
}

/// A note for the events of a sync that concern this group (messages come from the history).
fn event_note(
    e: &EngineEvent,
    ours: Option<&crate::engine::DGroupId>,
    names: &[(String, String)],
) -> Option<String> {
    let dgroup = match e {
        // A key change is a warning for every open chat: it may concern a member of this one.
        EngineEvent::KeyChanged { .. } => return crate::cli::event_text(e, names),
        EngineEvent::Message(_) | EngineEvent::SendGroupAdvanced { .. } => return None,
        EngineEvent::JoinedDGroup { .. } | EngineEvent::Ignored { .. } => return None,
        EngineEvent::JoinedSendGroup { dgroup, .. }
        | EngineEvent::MemberRemoved { dgroup, .. }
        | EngineEvent::MemberLeft { dgroup, .. }
        | EngineEvent::MemberAdded { dgroup, .. }
        | EngineEvent::GroupRenamed { dgroup, .. }
        | EngineEvent::WeWereRemoved { dgroup, .. }
        | EngineEvent::KeyPackagesMissing { dgroup, .. }
        | EngineEvent::KeyPackageRejected { dgroup, .. }
        | EngineEvent::MemberEvicted { dgroup, .. } => dgroup,
    };
    if Some(dgroup) != ours {
        return None;
    }
    crate::cli::event_text(e, names).map(|line| match line.split_once("] ") {
        Some((_, rest)) if line.starts_with('[') => rest.to_string(),
        _ => line,
    })
}

/// Reads terminal events on a thread of its own until `stop` is set or the receiver is gone.
fn spawn_key_reader() -> (
    mpsc::UnboundedReceiver<std::io::Result<Event>>,
    Arc<AtomicBool>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !flag.load(Ordering::Relaxed) {
            match event::poll(Duration::from_millis(100)) {
                Ok(false) => continue,
                Ok(true) => {
                    let e = event::read();
                    let failed = e.is_err();
                    if tx.send(e).is_err() || failed {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
    });
    (rx, stop)
}

/// The terminal in chat mode: raw, alternate screen, bracketed paste. Dropping it (or a
/// panic) puts the terminal back.
struct TerminalGuard;

impl TerminalGuard {
    fn enter() -> Result<TerminalGuard> {
        enable_raw_mode().context("cannot switch the terminal to raw mode")?;
        // From here on, every way out restores the terminal.
        let guard = TerminalGuard;
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            previous(info);
        }));
        execute!(
            std::io::stdout(),
            EnterAlternateScreen,
            EnableBracketedPaste
        )
        .context("cannot set up the terminal")?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
        // The default hook again (ours only restores the terminal); not while panicking,
        // when the hook cannot be changed.
        if !std::thread::panicking() {
            let _ = std::panic::take_hook();
        }
    }
}

/// Puts the terminal back: main screen, no bracketed paste, cursor shown, raw mode off.
/// Safe to call more than once.
fn restore_terminal() {
    let mut out = std::io::stdout();
    let _ = execute!(
        out,
        DisableBracketedPaste,
        LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = out.flush();
    let _ = disable_raw_mode();
}
