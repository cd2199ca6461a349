//! The `dmls` command line: clap definitions and the commands, on top of [`crate::client`].
//!
//! Every command prints human text by default and exactly one JSON document with `--json`
//! (`sync --follow --json` prints one JSON object per line instead). Errors carry context and
//! say what to do next.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Read as _, Write as _};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

mod contacts;

pub use contacts::ContactsCommand;

use crate::client::{Client, ClientError, Delivery, Durability, dgroup_hex};
use crate::engine::{AddPolicy, DGroupStatus, DGroupSummary, Event, ReceivedMessage, WaitReason};

/// The long explanation of `--durability`, shown by `dmls --help` only (every subcommand's
/// help lists the option with its one-line summary).
const DURABILITY_HELP: &str = "\
Durability (--durability, DMLS_DURABILITY):
  full     (default) every change is on disk before the command goes on, so even a power
           loss never shows a message twice.
  relaxed  fsync only before something is sent; after a power loss (not a crash of dmls)
           recently received messages may be shown again. Slightly faster on slow disks.";

/// dmls: end-to-end encrypted group chat over Distributed MLS (draft-xue-distributed-mls).
///
/// Each identity lives in its own home directory (--home or DMLS_HOME). Start with
/// `dmls init --relay URL --name NAME`, then `dmls group create`, `dmls send`, `dmls sync`.
#[derive(Debug, Parser)]
#[command(name = "dmls", version, about, long_about, after_long_help = DURABILITY_HELP)]
pub struct Cli {
    /// Directory of this identity's state (state.db, config.json). Default: the platform's
    /// data directory (e.g. ~/.local/share/dmls).
    #[arg(long, env = "DMLS_HOME", global = true)]
    pub home: Option<PathBuf>,

    /// Print one JSON document per command (for scripts) instead of human text.
    #[arg(long, global = true)]
    pub json: bool,

    /// How state reaches the disk: full or relaxed (`dmls --help` explains).
    #[arg(
        long,
        env = "DMLS_DURABILITY",
        global = true,
        value_enum,
        default_value_t = Durability::Full,
        hide_possible_values = true
    )]
    pub durability: Durability,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands of `dmls`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an identity: register NAME on the relay and upload key packages.
    ///
    /// The token the relay hands out is kept in HOME/config.json (mode 0600).
    Init {
        /// Base URL of the relay, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        relay: String,
        /// Your client id on the relay: 1 to 64 characters of a-z 0-9 . _ -
        #[arg(long)]
        name: String,
    },
    /// Manage groups (DGroups).
    #[command(subcommand)]
    Group(GroupCommand),
    /// List your groups.
    Groups,
    /// Fetch and process everything new from the relay (messages, welcomes, commits).
    ///
    /// Without --follow it returns when the relay has nothing more. With --follow it keeps the
    /// relay's push stream open (long polls with a relay that has none) and prints messages as
    /// they arrive (Ctrl-C to stop).
    Sync(SyncArgs),
    /// Send a text message to GROUP.
    ///
    /// Reads the text from standard input when TEXT is absent or `-`. Run `dmls sync` first so
    /// that your commit imports what the others did.
    Send {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
        /// The message; absent or `-` reads standard input.
        text: Option<String>,
    },
    /// Show the messages of GROUP, oldest first (yours included).
    Log {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
        /// Show at most this many of the latest messages.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Make a DMLS Update in GROUP: a fresh key for you and an import of everyone's news.
    Update {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
    },
    /// Remove MEMBER from GROUP (every member then removes it from their Send Group).
    Remove {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
        /// Client id of the member to remove.
        member: String,
    },
    /// Show GROUP in detail: members, every Send Group's epoch, waiting messages and what
    /// they wait for.
    Status {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
    },
    /// Show who you are: your client id, your relay and your identity key's fingerprint.
    Whoami,
    /// Show the safety number you share with MEMBER, to compare out of band.
    ///
    /// Read it to each other in person or over a call you trust (not through the relay): it
    /// is the same on both sides only if each client uses the other's real identity key. A
    /// relay that slipped its own key in for one of you makes the numbers differ. Also fails
    /// when MEMBER's leaves carry different keys in different Send Groups.
    Verify {
        /// The member's client id (someone you share a group with).
        member: String,
        /// Record that you compared the safety number and it was equal: the member's key is
        /// then marked verified (in `dmls contacts` and `dmls status`).
        #[arg(long)]
        confirm: bool,
    },
    /// List your contacts and their identity keys, trust a contact's new key, or require
    /// verified contacts in groups.
    ///
    /// The first identity key your client accepts for a member is pinned. A key package,
    /// Welcome or leaf that later carries another key for that member is refused and reported
    /// as a key change; nothing is sent to the new key until you trust it with `dmls contacts
    /// trust NAME --fingerprint FP` after checking it with NAME out of band.
    Contacts {
        #[command(subcommand)]
        command: Option<ContactsCommand>,
    },
    /// Chat in GROUP on a full-screen terminal: messages arrive while you type.
    ///
    /// The scrollback shows each message with its sender and time (UTC); yours are marked
    /// "sending…" until the relay has them, and "queued" while the relay cannot be reached
    /// (they go out by themselves when it is back). The side panel (the header on narrow
    /// terminals) lists the members: * up to date, ? not joined yet, ! behind, x removed.
    /// Type /help for the commands (/update, /remove NAME, /status, /verify NAME,
    /// /rename NEW NAME, /quit).
    /// Enter sends, Alt-Enter starts a new line, PageUp/PageDown scroll, Ctrl-C quits.
    ///
    /// Needs a terminal: in scripts use `dmls sync --follow` and `dmls send`. Logs only
    /// when RUST_LOG is set (then redirect standard error, e.g. `2>chat.log`).
    Chat {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
    },
    /// Draw GROUP's dependencies as a Graphviz DOT graph on standard output.
    ///
    /// Each Send Group is a lane (a cluster) of the epochs you saw it reach, left to right.
    /// A blue "import" edge goes from an epoch of one Send Group to the commit of another that
    /// imported it (its PSK). Messages waiting to be processed are red, with a dashed edge from
    /// the epoch they wait for. Lanes of removed members are grey and dashed; a commit that
    /// removed members names them. For a picture, pipe it into Graphviz:
    /// `dmls graph GROUP | dot -Tsvg > group.svg`.
    Graph {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
        /// Output format. Only dot is produced by dmls itself; for SVG, pipe the DOT output
        /// into Graphviz (`dot -Tsvg`).
        #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
        format: GraphFormat,
        /// Show only the latest N commits of each Send Group.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
    },
    /// Print a shell completion script for dmls to standard output.
    ///
    /// bash: `dmls completions bash > ~/.local/share/bash-completion/completions/dmls`;
    /// zsh: `dmls completions zsh > ~/.zfunc/_dmls` (with ~/.zfunc in $fpath);
    /// fish: `dmls completions fish > ~/.config/fish/completions/dmls.fish`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page of dmls (roff) to standard output, or write one per command.
    ///
    /// Read it with `dmls man | man -l -`. `dmls man --dir ~/.local/share/man/man1` writes
    /// dmls.1 and a page for every subcommand (dmls-chat.1, ...), so that `man dmls-chat`
    /// works too.
    Man {
        /// Write dmls.1 and one page per subcommand into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Formats of `dmls graph`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GraphFormat {
    /// Graphviz DOT text.
    Dot,
    /// SVG: not drawn by dmls; the command says how to get it with Graphviz.
    Svg,
}

/// Who may add members to a group (`dmls group create --adds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AddsBy {
    /// Every member.
    Anyone,
    /// Only the group's admin: its creator.
    Admins,
}

/// `dmls group ...`
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group NAME with the MEMBERs (client ids; you are added yourself).
    ///
    /// The members join when they next run `dmls sync`.
    Create {
        /// A name for the group (shown to every member).
        name: String,
        /// Client ids of the other members.
        #[arg(required = true)]
        members: Vec<String>,
        /// Refuse unless every member is a verified contact (`dmls verify NAME --confirm`).
        /// `dmls contacts require-verified on` makes this the rule for every group.
        #[arg(long)]
        require_verified: bool,
        /// Who may add members later: `anyone` (every member) or `admins` (only you, the
        /// creator). Fixed for the group's life; every member's client enforces it.
        #[arg(long, value_enum, default_value_t = AddsBy::Anyone)]
        adds: AddsBy,
    },
    /// Add MEMBERs (client ids) to GROUP.
    ///
    /// Every other member adds them to its own Send Group when it syncs; the new members
    /// join when they sync (they need an identity and key packages on the relay: `dmls init`
    /// and one `dmls sync`). They read only what is said after they joined, nothing before.
    /// Someone removed from the group (or who left) cannot be added again: create a new group.
    Add {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
        /// Client ids of the new members.
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Rename GROUP to NEW_NAME for every member.
    ///
    /// The others see the new name when they sync. When two members rename at the same time,
    /// every member ends with the same one of the two names (the later rename by the order
    /// of renames each saw, then the greater client id).
    Rename {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
        /// The new name: 1 to 256 bytes, no control characters.
        new_name: String,
    },
    /// Leave GROUP: tell the others, then delete the group's keys here.
    ///
    /// The others remove you from their Send Groups when they sync, and you cannot read
    /// anything sent after you left. The messages you already received stay in `dmls log`.
    /// There is no way back: someone has to create a new group with you.
    Leave {
        /// Group name, or its id (hex; a unique prefix is enough).
        group: String,
    },
}

/// Options of `dmls sync`.
#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Keep going: follow the relay's push stream and print messages as they come. A stream
    /// that breaks is reopened from where it stopped, so nothing is missed or shown twice.
    #[arg(long)]
    pub follow: bool,
    /// With --follow on a relay without push streams: how long one long poll may wait for
    /// news, in milliseconds (at most 30000).
    #[arg(long, default_value_t = 25_000)]
    pub wait_ms: u64,
    /// Evict silent members: once caught up, remove from your Send Groups every member that
    /// has not acknowledged (imported in a commit) an update for this many days; they hold
    /// back the deletion of old keys. Every other member then removes them too. Members who
    /// are up to date are never evicted, however quiet. 0 never evicts.
    #[arg(
        long,
        env = "DMLS_EVICT_AFTER_DAYS",
        default_value_t = 30,
        value_name = "DAYS"
    )]
    pub evict_after_days: u64,
}

/// Runs the parsed command line: one function per command.
pub async fn run(cli: Cli) -> Result<()> {
    // These print text generated from the command line itself and need no identity.
    match &cli.command {
        Command::Completions { shell } => return print_completions(*shell),
        Command::Man { dir: None } => return print_man_page(),
        Command::Man { dir: Some(dir) } => return write_man_pages(dir),
        _ => {}
    }
    let home = match cli.home.clone() {
        Some(h) => h,
        None => default_home()?,
    };
    let ctx = Ctx {
        home,
        json: cli.json,
        durability: cli.durability,
    };
    match cli.command {
        Command::Init { relay, name } => cmd_init(&ctx, &relay, &name).await,
        Command::Group(GroupCommand::Create {
            name,
            members,
            require_verified,
            adds,
        }) => cmd_group_create(&ctx, &name, &members, require_verified, adds).await,
        Command::Group(GroupCommand::Add { group, members }) => {
            cmd_group_add(&ctx, &group, &members).await
        }
        Command::Group(GroupCommand::Leave { group }) => cmd_group_leave(&ctx, &group).await,
        Command::Group(GroupCommand::Rename { group, new_name }) => {
            cmd_group_rename(&ctx, &group, &new_name).await
        }
        Command::Groups => cmd_groups(&ctx).await,
        Command::Sync(args) => cmd_sync(&ctx, &args).await,
        Command::Send { group, text } => cmd_send(&ctx, &group, text.as_deref()).await,
        Command::Log { group, limit } => cmd_log(&ctx, &group, limit).await,
        Command::Update { group } => cmd_update(&ctx, &group).await,
        Command::Remove { group, member } => cmd_remove(&ctx, &group, &member).await,
        Command::Status { group } => cmd_status(&ctx, &group).await,
        Command::Whoami => cmd_whoami(&ctx).await,
        Command::Verify { member, confirm } => cmd_verify(&ctx, &member, confirm).await,
        Command::Contacts { command } => contacts::run(&ctx, command).await,
        Command::Graph {
            group,
            format,
            last,
        } => cmd_graph(&ctx, &group, format, last).await,
        Command::Chat { group } => cmd_chat(&ctx, &group).await,
        Command::Completions { .. } | Command::Man { .. } => Ok(()),
    }
}

/// `dmls chat`
async fn cmd_chat(ctx: &Ctx, group: &str) -> Result<()> {
    if ctx.json {
        bail!("dmls chat is interactive and has no --json output; use `dmls sync --follow --json`");
    }
    crate::chat::require_terminal()?;
    let client = ctx.open_and_flush().await?;
    crate::chat::run(client, group)
        .await
        .with_context(|| format!("chat in {group:?} ended"))
}

/// `dmls graph`
async fn cmd_graph(ctx: &Ctx, group: &str, format: GraphFormat, last: Option<usize>) -> Result<()> {
    if format == GraphFormat::Svg {
        bail!(
            "dmls does not lay out graphs itself: no maintained Rust crate lays out DOT clusters \
             well. Pipe the DOT output into Graphviz instead: `dmls graph {group} | dot -Tsvg > group.svg`"
        );
    }
    if last == Some(0) {
        bail!("--last must be at least 1");
    }
    let client = ctx.open_and_flush().await?;
    let graph = client
        .graph(group)
        .await
        .with_context(|| format!("cannot read {group:?}"))?;
    let dot = crate::graph::to_dot(&graph, &crate::graph::GraphOptions { last });
    if ctx.json {
        emit(&json!({ "group": group, "dot": dot }));
        return Ok(());
    }
    let mut stdout = std::io::stdout();
    stdout
        .write_all(dot.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write the graph to standard output")
}

/// `dmls completions SHELL`
fn print_completions(shell: clap_complete::Shell) -> Result<()> {
    let mut out = Vec::new();
    write_completions(shell, &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the completion script to standard output")
}

/// The completion script of `dmls` for `shell`.
pub fn write_completions(shell: clap_complete::Shell, out: &mut impl std::io::Write) {
    use clap::CommandFactory as _;
    clap_complete::generate(shell, &mut Cli::command(), "dmls", out);
}

/// `dmls man`
fn print_man_page() -> Result<()> {
    let mut out = Vec::new();
    write_man_page(&mut out)?;
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the manual page to standard output")
}

/// `dmls man --dir DIR`
fn write_man_pages(dir: &std::path::Path) -> Result<()> {
    use clap::CommandFactory as _;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write the manual pages into {}", dir.display()))?;
    println!("Wrote the manual pages of dmls into {}.", dir.display());
    Ok(())
}

/// The manual page of `dmls` (roff), with every subcommand and its options.
pub fn write_man_page(out: &mut impl std::io::Write) -> Result<()> {
    use clap::CommandFactory as _;
    clap_mangen::Man::new(Cli::command())
        .render(out)
        .context("cannot render the manual page")
}

/// What every command needs from the global options.
struct Ctx {
    home: PathBuf,
    json: bool,
    durability: Durability,
}

impl Ctx {
    /// Opens the identity in the home directory.
    fn open(&self) -> Result<Client> {
        match Client::open_with(&self.home, self.durability) {
            Ok(c) => Ok(c),
            Err(e @ ClientError::NoIdentity { .. }) => Err(e.into()),
            Err(e) => Err(anyhow::Error::new(e))
                .with_context(|| format!("cannot open the identity in {}", self.home.display())),
        }
    }

    /// Opens the identity and sends what is queued, keeping going offline (commands that
    /// only read local state).
    async fn open_and_flush(&self) -> Result<Client> {
        let mut client = self.open()?;
        flush_quietly(&mut client).await?;
        Ok(client)
    }
}

/// `dmls init`
async fn cmd_init(ctx: &Ctx, relay: &str, name: &str) -> Result<()> {
    let client = Client::init(&ctx.home, relay, name)
        .await
        .with_context(|| format!("cannot create the identity {name:?} at {relay}"))?;
    if ctx.json {
        emit(&json!({
            "client_id": client.client_id(),
            "relay": client.relay_url(),
            "home": ctx.home.display().to_string(),
        }));
    } else {
        println!(
            "Created identity {} on {} (state in {}).",
            client.client_id(),
            client.relay_url(),
            ctx.home.display()
        );
        println!(
            "Next: `dmls group create NAME MEMBER...` or wait to be invited and run `dmls sync`."
        );
    }
    Ok(())
}

/// `dmls group create`
async fn cmd_group_create(
    ctx: &Ctx,
    name: &str,
    members: &[String],
    require_verified: bool,
    adds: AddsBy,
) -> Result<()> {
    let mut client = ctx.open()?;
    if require_verified {
        contacts::check_all_verified(&client, members)
            .await
            .with_context(|| format!("cannot create the group {name:?}"))?;
    }
    let id = client
        .create_group_with_policy(name, members, add_policy(adds))
        .await
        .with_context(|| format!("cannot create the group {name:?}"))?;
    let names = vec![(dgroup_hex(&id), name.to_string())];
    let events = client.take_events();
    if ctx.json {
        emit(&json!({
            "dgroup": dgroup_hex(&id),
            "name": name,
            "members": members,
            "events": events.iter().map(|e| event_json(e, &names)).collect::<Vec<_>>(),
        }));
    } else {
        println!("Created group {name} ({}).", dgroup_hex(&id));
        print_event_lines(&events, &names);
        println!(
            "Members join when they run `dmls sync`; run `dmls sync` yourself to see them join."
        );
    }
    Ok(())
}

/// `dmls groups`
async fn cmd_groups(ctx: &Ctx) -> Result<()> {
    let client = ctx.open_and_flush().await?;
    let groups = client.groups().await.context("cannot list groups")?;
    if ctx.json {
        emit(&Value::Array(groups.iter().map(summary_json).collect()));
    } else if groups.is_empty() {
        println!(
            "No groups yet. Create one with `dmls group create NAME MEMBER...`, or run `dmls sync` to receive invitations."
        );
    } else {
        for g in &groups {
            println!("{}", summary_line(g));
        }
    }
    Ok(())
}

/// One line of `dmls groups`.
fn summary_line(g: &DGroupSummary) -> String {
    let mut line = format!(
        "{}  {}  ({})",
        short_id(&g.id),
        g.name,
        g.members.join(", ")
    );
    if g.left_ms.is_some() {
        line.push_str("  [you left]");
    } else if g.we_are_removed {
        line.push_str("  [you were removed]");
    } else if !g.removed.is_empty() {
        line.push_str(&format!("  [removed: {}]", g.removed.join(", ")));
    }
    if g.add_policy == AddPolicy::Admins {
        line.push_str("  [only admins add]");
    }
    line
}

/// `dmls sync`
async fn cmd_sync(ctx: &Ctx, args: &SyncArgs) -> Result<()> {
    let mut client = ctx.open()?;
    client
        .set_eviction_threshold(
            (args.evict_after_days > 0)
                .then(|| Duration::from_secs(args.evict_after_days.saturating_mul(86_400))),
        )
        .await?;
    if args.follow {
        follow(&mut client, args.wait_ms, ctx.json).await
    } else {
        sync_once(&mut client, ctx.json).await
    }
}

/// `dmls send`
async fn cmd_send(ctx: &Ctx, group: &str, text: Option<&str>) -> Result<()> {
    let text = match text {
        None | Some("-") => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the message from standard input")?;
            s.trim_end_matches('\n').to_string()
        }
        Some(t) => t.to_string(),
    };
    if text.is_empty() {
        bail!("the message is empty: give TEXT or pipe it to standard input");
    }
    let mut client = ctx.open()?;
    let delivery = client.send_text(group, &text).await.with_context(|| {
        format!("cannot send to {group:?} (try `dmls sync` and `dmls status {group}`)")
    })?;
    report_delivery(
        ctx.json,
        &delivery,
        json!({"group": group, "bytes": text.len()}),
        "Sent.",
    );
    Ok(())
}

/// `dmls log`
async fn cmd_log(ctx: &Ctx, group: &str, limit: usize) -> Result<()> {
    let client = ctx.open_and_flush().await?;
    let messages = client
        .log(group, limit)
        .await
        .with_context(|| format!("cannot read {group:?}"))?;
    if ctx.json {
        emit(&Value::Array(
            messages.iter().map(|m| message_json(m, None)).collect(),
        ));
    } else if messages.is_empty() {
        println!("No messages yet (run `dmls sync` to fetch new ones).");
    } else {
        for m in &messages {
            println!("{}", message_line(m, None));
        }
    }
    Ok(())
}

/// `dmls update`
async fn cmd_update(ctx: &Ctx, group: &str) -> Result<()> {
    let mut client = ctx.open()?;
    let delivery = client
        .update(group)
        .await
        .with_context(|| format!("cannot update in {group:?}"))?;
    report_delivery(
        ctx.json,
        &delivery,
        json!({"updated": true, "group": group}),
        &format!("Committed a DMLS Update in {group}."),
    );
    Ok(())
}

/// `dmls remove`
async fn cmd_remove(ctx: &Ctx, group: &str, member: &str) -> Result<()> {
    let mut client = ctx.open()?;
    let delivery = client
        .remove(group, member)
        .await
        .with_context(|| format!("cannot remove {member:?} from {group:?}"))?;
    report_delivery(
        ctx.json,
        &delivery,
        json!({"removed": member, "group": group}),
        &format!("Removed {member} from {group}; the others follow when they sync."),
    );
    Ok(())
}

fn add_policy(adds: AddsBy) -> AddPolicy {
    match adds {
        AddsBy::Anyone => AddPolicy::AnyMember,
        AddsBy::Admins => AddPolicy::Admins,
    }
}

fn add_policy_name(p: AddPolicy) -> &'static str {
    match p {
        AddPolicy::AnyMember => "anyone",
        AddPolicy::Admins => "admins",
    }
}

/// `dmls group add`
async fn cmd_group_add(ctx: &Ctx, group: &str, members: &[String]) -> Result<()> {
    let mut client = ctx.open()?;
    let delivery = client
        .add(group, members)
        .await
        .with_context(|| format!("cannot add to {group:?}"))?;
    report_delivery(
        ctx.json,
        &delivery,
        json!({"added": members, "group": group}),
        &format!(
            "Added {} to {group}; the others add them too when they sync, and they join when \
             they sync. They read what is said from now on.",
            members.join(", ")
        ),
    );
    Ok(())
}

/// `dmls group rename`
async fn cmd_group_rename(ctx: &Ctx, group: &str, new_name: &str) -> Result<()> {
    let mut client = ctx.open()?;
    let delivery = client
        .rename(group, new_name)
        .await
        .with_context(|| format!("cannot rename {group:?}"))?;
    report_delivery(
        ctx.json,
        &delivery,
        json!({"renamed": group, "name": new_name}),
        &format!("Renamed {group} to {new_name}; the others see it when they sync."),
    );
    Ok(())
}

/// `dmls group leave`
async fn cmd_group_leave(ctx: &Ctx, group: &str) -> Result<()> {
    let mut client = ctx.open()?;
    let (announced, delivery) = client
        .leave(group)
        .await
        .with_context(|| format!("cannot leave {group:?}"))?;
    let done = if announced {
        format!(
            "You left {group} and its keys are deleted here; the others remove you when they sync."
        )
    } else {
        format!(
            "You left {group} and its keys are deleted here. The others were not told (you were \
             removed already, or your Send Group was never set up): they remove you when their \
             eviction threshold passes."
        )
    };
    report_delivery(
        ctx.json,
        &delivery,
        json!({"left": group, "announced": announced}),
        &done,
    );
    Ok(())
}

/// `dmls status`
async fn cmd_status(ctx: &Ctx, group: &str) -> Result<()> {
    let client = ctx.open_and_flush().await?;
    let status = client
        .status(group)
        .await
        .with_context(|| format!("cannot read {group:?}"))?;
    if ctx.json {
        emit(&status_json(&status));
    } else {
        print_status(&status);
    }
    Ok(())
}

/// `dmls whoami`
async fn cmd_whoami(ctx: &Ctx) -> Result<()> {
    let client = ctx.open()?;
    let key = client
        .identity_key()
        .await
        .context("cannot read your identity key")?;
    let fingerprint = crate::engine::fingerprint(&key);
    if ctx.json {
        emit(&json!({
            "client_id": client.client_id(),
            "relay": client.relay_url(),
            "identity_key": hex::encode(&key),
            "fingerprint": fingerprint,
        }));
    } else {
        println!("You are {} on {}.", client.client_id(), client.relay_url());
        println!("Identity key fingerprint: {fingerprint}");
    }
    Ok(())
}

/// What `dmls verify` (and the chat's `/verify`) found for one member.
pub(crate) struct Verification {
    /// The member's client id.
    pub(crate) member: String,
    /// Our identity key.
    pub(crate) ours: Vec<u8>,
    /// The member's distinct keys, each with where it was seen (Send Group owner, DGroup name):
    /// the pinned one first; any other is a leaf that does not carry the pinned key.
    pub(crate) keys: Vec<(Vec<u8>, Vec<String>)>,
    /// Whether the member's pinned key is verified.
    pub(crate) verified: bool,
}

/// The keys `member` carries in the Send Groups `client` holds, for `dmls verify`.
pub(crate) async fn verification(client: &Client, member: &str) -> Result<Verification> {
    if member == client.client_id() {
        bail!("{member} is you; verifying compares your key with another member's");
    }
    let ours = client
        .identity_key()
        .await
        .context("cannot read your identity key")?;
    let seen = client
        .identity_keys_of(member)
        .await
        .with_context(|| format!("cannot read {member}'s keys"))?;
    let mut keys: Vec<(Vec<u8>, Vec<String>)> = Vec::new();
    let pinned = client
        .contacts()
        .await
        .context("cannot read your contacts")?
        .into_iter()
        .find(|c| c.client_id == member);
    if let Some(p) = &pinned {
        keys.push((p.key.clone(), vec!["your contacts (pinned)".to_string()]));
    }
    for s in seen {
        let place = format!("{}'s Send Group of {}", s.send_group_owner, s.dgroup_name);
        match keys.iter_mut().find(|(k, _)| *k == s.key) {
            Some((_, places)) => places.push(place),
            None => keys.push((s.key, vec![place])),
        }
    }
    let verified = pinned.as_ref().is_some_and(|p| p.verified_ms.is_some());
    match keys.len() {
        0 => bail!(
            "you hold no leaf of {member} yet: share a group with them (and run `dmls sync`) first"
        ),
        // With a pinned key the safety number is the pinned key's; leaves with other keys
        // are named (those groups are unsafe, see `dmls status`).
        1 => Ok(Verification {
            member: member.to_owned(),
            ours,
            keys,
            verified,
        }),
        _ if pinned.is_some() => Ok(Verification {
            member: member.to_owned(),
            ours,
            keys,
            verified,
        }),
        n => {
            let listed: Vec<String> = keys
                .iter()
                .map(|(k, places)| {
                    format!(
                        "{} (in {})",
                        crate::engine::fingerprint(k),
                        places.join(", ")
                    )
                })
                .collect();
            bail!(
                "{member} appears with {n} different identity keys: {}; a relay may have slipped its own key in, so there is no single safety number",
                listed.join("; ")
            )
        }
    }
}

impl Verification {
    fn theirs(&self) -> &[u8] {
        self.keys.first().map_or(&[], |(k, _)| k.as_slice())
    }

    /// The safety number of `me` and the member.
    pub(crate) fn safety_number(&self, me: &str) -> String {
        crate::engine::safety_number(me, &self.ours, &self.member, self.theirs())
    }

    /// What `dmls verify` prints.
    pub(crate) fn text(&self, me: &str) -> String {
        let member = &self.member;
        format!(
            "Safety number with {member}:\n\n    {}\n\n\
             Compare it with the one `dmls verify {me}` shows {member}, in person or on a call you trust.\n\
             Equal: your clients use each other's real keys. Different: do not trust this conversation.\n\
             {member}'s fingerprint: {}\nYour fingerprint: {}",
            self.safety_number(me),
            crate::engine::fingerprint(self.theirs()),
            crate::engine::fingerprint(&self.ours),
        ) + &self
            .keys
            .iter()
            .skip(1)
            .map(|(k, places)| {
                format!(
                    "\nWARNING: {member}'s leaves in {} carry another key, {}: those groups are \
                     unsafe (`dmls status`).",
                    places.join(", "),
                    crate::engine::fingerprint(k)
                )
            })
            .collect::<String>()
    }
}

/// `dmls verify MEMBER`
async fn cmd_verify(ctx: &Ctx, member: &str, confirm: bool) -> Result<()> {
    let client = ctx.open()?;
    let mut v = verification(&client, member).await?;
    if confirm {
        let key = client
            .confirm_verified(member)
            .await
            .with_context(|| format!("cannot record {member} as verified"))?;
        v.verified = key == v.theirs();
    }
    let me = client.client_id();
    if ctx.json {
        emit(&json!({
            "member": member,
            "verified": v.verified,
            "safety_number": v.safety_number(me),
            "their_fingerprint": crate::engine::fingerprint(v.theirs()),
            "your_fingerprint": crate::engine::fingerprint(&v.ours),
            "seen_in": v.keys.first().map(|(_, places)| places.clone()).unwrap_or_default(),
            "other_keys": v.keys.iter().skip(1).map(|(k, places)| json!({
                "fingerprint": crate::engine::fingerprint(k),
                "seen_in": places,
            })).collect::<Vec<_>>(),
        }));
    } else {
        println!("{}", v.text(me));
        if confirm {
            println!("Recorded: {member}'s key is verified.");
        } else if v.verified {
            println!("{member}'s key is verified.");
        } else {
            println!(
                "When the numbers are equal, record it with `dmls verify {member} --confirm`."
            );
        }
    }
    Ok(())
}

/// Prints the human line of every event that has one.
fn print_event_lines(events: &[Event], names: &[(String, String)]) {
    for e in events {
        if let Some(line) = event_line(e, names) {
            println!("{line}");
        }
    }
}

/// The error and its causes on one line, `outer: cause: root cause`, naming each cause once:
/// an error whose message already contains its cause's message (as many wrappers do, for
/// readers that print only the outer message) does not repeat it.
pub fn error_text(e: &anyhow::Error) -> String {
    chain_text(e.chain())
}

/// [`error_text`] of an error of the client facade.
pub(crate) fn client_error_text(e: &ClientError) -> String {
    chain_text(std::iter::successors(
        Some(e as &(dyn std::error::Error + 'static)),
        |e| e.source(),
    ))
}

fn chain_text<'a>(chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut text = String::new();
    for cause in chain {
        let msg = cause.to_string();
        if text.contains(&msg) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&msg);
    }
    text
}

/// Sends what is queued, but keeps going (with a warning) when the relay is unreachable, so
/// that reading local state works offline.
async fn flush_quietly(client: &mut Client) -> Result<()> {
    let delivery = client
        .try_flush_outbox()
        .await
        .context("cannot send what is queued for the relay")?;
    if let Delivery::Queued { reason } = delivery {
        eprintln!("warning: queued messages not sent yet ({reason})");
    }
    Ok(())
}

/// Prints the outcome of a command that produced something for the relay.
fn report_delivery(json: bool, delivery: &Delivery, mut doc: Value, done: &str) {
    if json {
        doc["sent"] = json!(*delivery == Delivery::Sent);
        if let Delivery::Queued { reason } = delivery {
            doc["queued"] = json!(reason);
        }
        emit(&doc);
    } else {
        match delivery {
            Delivery::Sent => println!("{done}"),
            Delivery::Queued { reason } => println!(
                "{done} Not on the relay yet ({reason}); it goes out with your next `dmls` command."
            ),
        }
    }
}

/// The home directory when neither --home nor DMLS_HOME is given.
fn default_home() -> Result<PathBuf> {
    let dirs = directories::ProjectDirs::from("", "", "dmls")
        .context("cannot find your data directory: pass --home DIR or set DMLS_HOME")?;
    Ok(dirs.data_dir().to_path_buf())
}

async fn sync_once(client: &mut Client, json: bool) -> Result<()> {
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message("syncing");
        bar
    });
    let report = client
        .sync_once_with(|r| {
            if let Some(bar) = &bar {
                bar.set_message(format!("{} messages, {} welcomes", r.messages, r.welcomes));
                bar.tick();
            }
        })
        .await
        .context("sync failed (your state is safe; run `dmls sync` again)")?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let names = group_names(client).await;
    if json {
        emit(&json!({
            "messages_fetched": report.messages,
            "welcomes_fetched": report.welcomes,
            "rounds": report.rounds,
            "events": report.events.iter().map(|e| event_json(e, &names)).collect::<Vec<_>>(),
        }));
    } else {
        print_event_lines(&report.events, &names);
        println!(
            "Synced: {} relay messages and {} welcomes processed.",
            report.messages, report.welcomes
        );
    }
    Ok(())
}

async fn follow(client: &mut Client, wait_ms: u64, json: bool) -> Result<()> {
    if !json {
        eprintln!("Following {} (Ctrl-C to stop)...", client.relay_url());
    }
    let mut names = group_names(client).await;
    let fut = async {
        let mut stdout = std::io::stdout();
        client
            .sync_follow(wait_ms, |e| {
                if let Event::JoinedDGroup { dgroup, name, .. } = e {
                    names.push((dgroup_hex(dgroup), name.clone()));
                }
                let out = if json {
                    Some(event_json(e, &names).to_string())
                } else {
                    event_line(e, &names)
                };
                if let Some(line) = out {
                    // A closed stdout (e.g. `| head`) ends following.
                    if writeln!(stdout, "{line}")
                        .and_then(|_| stdout.flush())
                        .is_err()
                    {
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })
            .await
    };
    tokio::select! {
        r = fut => r.context("following the relay failed (your state is safe; run `dmls sync --follow` again)")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}

fn emit(v: &Value) {
    println!("{v}");
}

/// `(dgroup hex, name)` of every DGroup, for labelling events.
async fn group_names(client: &Client) -> Vec<(String, String)> {
    client
        .groups()
        .await
        .map(|gs| {
            gs.into_iter()
                .map(|g| (dgroup_hex(&g.id), g.name))
                .collect()
        })
        .unwrap_or_default()
}

fn name_of<'a>(names: &'a [(String, String)], id: &str) -> Option<&'a str> {
    names.iter().find(|(i, _)| i == id).map(|(_, n)| n.as_str())
}

fn short_id(id: &crate::engine::DGroupId) -> String {
    dgroup_hex(id).chars().take(8).collect()
}

fn label(names: &[(String, String)], id: &crate::engine::DGroupId) -> String {
    let hex = dgroup_hex(id);
    match name_of(names, &hex) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => hex.chars().take(8).collect(),
    }
}

fn body_text(m: &ReceivedMessage) -> Option<String> {
    m.content_type
        .starts_with("text/")
        .then(|| String::from_utf8_lossy(&m.body).into_owned())
}

fn message_line(m: &ReceivedMessage, group: Option<&str>) -> String {
    let body =
        body_text(m).unwrap_or_else(|| format!("<{} bytes of {}>", m.body.len(), m.content_type));
    let when = format_time(m.sent_at_ms);
    match group {
        Some(g) => format!("[{g}] {when} {}: {body}", m.sender),
        None => format!("{when} {}: {body}", m.sender),
    }
}

fn message_json(m: &ReceivedMessage, group_name: Option<&str>) -> Value {
    use base64::Engine as _;
    let mut v = json!({
        "dgroup": dgroup_hex(&m.dgroup),
        "sender": m.sender,
        "sent_at_ms": m.sent_at_ms,
        "message_id": m.message_id.to_string(),
        "content_type": m.content_type,
        "epoch": m.epoch,
        "generation": m.generation,
    });
    if let Some(g) = group_name {
        v["group"] = json!(g);
    }
    match body_text(m) {
        Some(t) => v["text"] = json!(t),
        None => v["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&m.body)),
    }
    v
}

/// `YYYY-MM-DD HH:MM:SS` UTC.
fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{m:02}:{s:02}")
}

/// The line `dmls sync` prints for an event (none for some), for the chat screen too.
pub(crate) fn event_text(e: &Event, names: &[(String, String)]) -> Option<String> {
    event_line(e, names)
}

fn event_line(e: &Event, names: &[(String, String)]) -> Option<String> {
    Some(match e {
        Event::Message(m) => message_line(m, Some(&label(names, &m.dgroup))),
        Event::JoinedDGroup {
            dgroup,
            name,
            members,
        } => format!(
            "Joined group {name} ({}) with {}.",
            short_id(dgroup),
            members.join(", ")
        ),
        Event::JoinedSendGroup {
            dgroup,
            owner,
            epoch,
        } => {
            format!(
                "[{}] now reading {owner}'s messages (epoch {epoch}).",
                label(names, dgroup)
            )
        }
        Event::SendGroupAdvanced { .. } => return None,
        Event::MemberRemoved { dgroup, member, by } => {
            format!("[{}] {member} was removed by {by}.", label(names, dgroup))
        }
        Event::MemberLeft { dgroup, member } => {
            format!("[{}] {member} left the group.", label(names, dgroup))
        }
        Event::MemberAdded { dgroup, member, by } => {
            format!(
                "[{}] {member} was added by {by}; they read what is said from now on.",
                label(names, dgroup)
            )
        }
        Event::GroupRenamed { dgroup, name, by } => {
            format!(
                "[{}] {by} renamed the group to {name:?}.",
                label(names, dgroup)
            )
        }
        Event::WeWereRemoved { dgroup, by } => {
            format!(
                "[{}] you were removed from the group by {by}.",
                label(names, dgroup)
            )
        }
        Event::KeyPackagesMissing { dgroup, client_ids } => format!(
            "[{}] warning: no key packages for {}; they cannot read your messages until they are added (retried when you sync).",
            label(names, dgroup),
            client_ids.join(", ")
        ),
        Event::KeyPackageRejected {
            dgroup,
            client_id,
            reason,
        } => format!(
            "[{}] warning: the key package of {client_id} was rejected ({reason}); they cannot read your messages until they are added (retried when you sync).",
            label(names, dgroup)
        ),
        Event::MemberEvicted {
            dgroup,
            member,
            behind_since_ms,
        } => format!(
            "[{}] you evicted {member}: they have not acknowledged updates since {} UTC.",
            label(names, dgroup),
            format_time(*behind_since_ms)
        ),
        Event::KeyChanged { dgroup, change } => match dgroup {
            Some(d) => format!(
                "[{}] {}",
                label(names, d),
                contacts::key_change_text(change)
            ),
            None => contacts::key_change_text(change),
        },
        Event::Ignored { reason } => format!("note: {reason}"),
    })
}

fn event_json(e: &Event, names: &[(String, String)]) -> Value {
    let group = |d: &crate::engine::DGroupId| {
        let hex = dgroup_hex(d);
        let name = name_of(names, &hex).map(str::to_string);
        (hex, name)
    };
    match e {
        Event::Message(m) => {
            let (_, name) = group(&m.dgroup);
            let mut v = message_json(m, name.as_deref());
            v["event"] = json!("message");
            v
        }
        Event::JoinedDGroup {
            dgroup,
            name,
            members,
        } => json!({
            "event": "joined_dgroup", "dgroup": dgroup_hex(dgroup), "name": name, "members": members,
        }),
        Event::JoinedSendGroup {
            dgroup,
            owner,
            epoch,
        } => {
            let (hex, name) = group(dgroup);
            json!({"event": "joined_send_group", "dgroup": hex, "group": name, "owner": owner, "epoch": epoch})
        }
        Event::SendGroupAdvanced {
            dgroup,
            owner,
            epoch,
        } => {
            let (hex, name) = group(dgroup);
            json!({"event": "send_group_advanced", "dgroup": hex, "group": name, "owner": owner, "epoch": epoch})
        }
        Event::MemberRemoved { dgroup, member, by } => {
            let (hex, name) = group(dgroup);
            json!({"event": "member_removed", "dgroup": hex, "group": name, "member": member, "by": by})
        }
        Event::MemberLeft { dgroup, member } => {
            let (hex, name) = group(dgroup);
            json!({"event": "member_left", "dgroup": hex, "group": name, "member": member})
        }
        Event::MemberAdded { dgroup, member, by } => {
            let (hex, name) = group(dgroup);
            json!({"event": "member_added", "dgroup": hex, "group": name, "member": member, "by": by})
        }
        Event::GroupRenamed { dgroup, name, by } => {
            json!({"event": "group_renamed", "dgroup": dgroup_hex(dgroup), "name": name, "by": by})
        }
        Event::WeWereRemoved { dgroup, by } => {
            let (hex, name) = group(dgroup);
            json!({"event": "we_were_removed", "dgroup": hex, "group": name, "by": by})
        }
        Event::KeyPackagesMissing { dgroup, client_ids } => {
            let (hex, name) = group(dgroup);
            json!({"event": "key_packages_missing", "dgroup": hex, "group": name, "client_ids": client_ids})
        }
        Event::KeyPackageRejected {
            dgroup,
            client_id,
            reason,
        } => {
            let (hex, name) = group(dgroup);
            json!({"event": "key_package_rejected", "dgroup": hex, "group": name, "client_id": client_id, "reason": reason})
        }
        Event::MemberEvicted {
            dgroup,
            member,
            behind_since_ms,
        } => {
            let (hex, name) = group(dgroup);
            json!({"event": "member_evicted", "dgroup": hex, "group": name, "member": member, "behind_since_ms": behind_since_ms})
        }
        Event::KeyChanged { dgroup, change } => {
            let mut v = contacts::key_change_json(change);
            v["event"] = json!("key_changed");
            if let Some(d) = dgroup {
                let (hex, name) = group(d);
                v["dgroup"] = json!(hex);
                v["group"] = json!(name);
            }
            v
        }
        Event::Ignored { reason } => json!({"event": "ignored", "reason": reason}),
    }
}

fn summary_json(g: &DGroupSummary) -> Value {
    json!({
        "dgroup": dgroup_hex(&g.id),
        "name": g.name,
        "members": g.members,
        "removed": g.removed,
        "we_are_removed": g.we_are_removed,
        "left_ms": g.left_ms,
        "renamed_by": g.renamed_by,
        "adds": add_policy_name(g.add_policy),
    })
}

fn wait_reason(w: &WaitReason) -> (String, String) {
    match w {
        WaitReason::Epoch(e) => ("epoch".into(), format!("epoch {e} of its Send Group")),
        WaitReason::Psk(p) => ("psk".into(), format!("PSK {p}")),
        WaitReason::Welcome => ("welcome".into(), "the Welcome of its Send Group".into()),
        WaitReason::Proposal(e) => (
            "proposal".into(),
            format!("an Update proposal of epoch {e} it commits"),
        ),
        WaitReason::Commit(e) => (
            "commit".into(),
            format!("a commit of epoch {e} that uses this leaf refresh"),
        ),
        WaitReason::Stopped => (
            "stopped".into(),
            "a commit importing a later epoch of this removed member's Send Group".into(),
        ),
    }
}

fn status_json(s: &DGroupStatus) -> Value {
    let mut v = summary_json(&s.summary);
    v["send_groups"] = s
        .send_groups
        .iter()
        .map(|g| {
            json!({
                "owner": g.owner,
                "group_id": g.group_id,
                "joined": g.joined,
                "epoch": g.epoch,
                "members": g.members,
                "epoch_authenticator": g.epoch_authenticator,
                "after_seq": g.after_seq,
                "waiting": g.waiting.iter().map(|w| {
                    let (kind, what) = wait_reason(&w.waits_for);
                    json!({"epoch": w.epoch, "is_commit": w.is_commit, "waits_for": kind, "detail": what})
                }).collect::<Vec<_>>(),
                "psk_deletion_holders": g.psk_deletion_holders,
                "behind_since_ms": g.behind_since_ms,
                "last_resort_leaf": g.last_resort_leaf,
            })
        })
        .collect();
    v["pending_removals"] = json!(s.pending_removals);
    v["pending_adds"] = json!(s.pending_adds);
    v["held_welcomes"] = json!(s.held_welcomes);
    v["unimported"] = s.unimported.iter().map(|p| json!(p.to_string())).collect();
    v["key_mismatches"] = contacts::mismatches_json(&s.key_mismatches);
    v["unverified"] = json!(s.unverified);
    v["key_changes"] = s
        .key_changes
        .iter()
        .map(contacts::key_change_json)
        .collect();
    v["safe"] = json!(s.key_mismatches.is_empty() && s.key_changes.is_empty());
    v
}

fn print_status(s: &DGroupStatus) {
    print!("{}", status_text(s));
}

/// What `dmls status` prints (also shown by the chat's /status).
pub(crate) fn status_text(s: &DGroupStatus) -> String {
    let mut out = String::new();
    let g = &s.summary;
    let _ = writeln!(out, "Group {} ({})", g.name, dgroup_hex(&g.id));
    if let Some(by) = &g.renamed_by {
        let _ = writeln!(out, "  renamed by {by}");
    }
    let _ = writeln!(out, "  members: {}", g.members.join(", "));
    let _ = writeln!(
        out,
        "  who may add members: {}",
        match g.add_policy {
            AddPolicy::AnyMember => "every member".to_string(),
            AddPolicy::Admins => format!("its admin, {}", g.members.first().map_or("", |c| c)),
        }
    );
    if let Some(t) = g.left_ms {
        let _ = writeln!(
            out,
            "  you left this group on {} UTC; its keys are deleted",
            format_time(t)
        );
    } else if g.we_are_removed {
        let _ = writeln!(out, "  you were removed from this group");
    }
    for line in contacts::status_lines(&s.key_mismatches, &s.unverified) {
        let _ = writeln!(out, "{line}");
    }
    for k in &s.key_changes {
        let _ = writeln!(
            out,
            "  {}",
            contacts::key_change_text(k).replace('\n', "\n  ")
        );
    }
    if !g.removed.is_empty() {
        let _ = writeln!(out, "  removed: {}", g.removed.join(", "));
    }
    let _ = writeln!(out, "  Send Groups:");
    for sg in &s.send_groups {
        let epoch = match (sg.joined, sg.epoch) {
            (true, Some(e)) => format!("epoch {e}"),
            _ => "not joined yet (waiting for its Welcome)".into(),
        };
        let _ = writeln!(
            out,
            "    {:<16} {epoch}, read up to seq {}",
            sg.owner, sg.after_seq
        );
        if sg.joined && !sg.members.is_empty() {
            let _ = writeln!(out, "      members: {}", sg.members.join(", "));
        }
        if let Some(t) = sg.behind_since_ms {
            let _ = writeln!(
                out,
                "      has not acknowledged updates since {} UTC",
                format_time(t)
            );
        }
        if sg.last_resort_leaf {
            let _ = writeln!(
                out,
                "      your leaf here is still your last-resort key package's (refresh proposed, not committed yet)"
            );
        }
        for w in &sg.waiting {
            let (_, what) = wait_reason(&w.waits_for);
            let kind = if w.is_commit { "commit" } else { "message" };
            let _ = writeln!(
                out,
                "      waiting: {kind} of epoch {} needs {what}",
                w.epoch
            );
        }
        if !sg.psk_deletion_holders.is_empty() {
            let _ = writeln!(
                out,
                "      old keys kept for: {}",
                sg.psk_deletion_holders.join(", ")
            );
        }
    }
    if !s.pending_removals.is_empty() {
        let _ = writeln!(
            out,
            "  to remove in your next commit: {}",
            s.pending_removals.join(", ")
        );
    }
    if !s.pending_adds.is_empty() {
        let _ = writeln!(
            out,
            "  to add to your Send Group (claiming their key packages): {}",
            s.pending_adds.join(", ")
        );
    }
    if s.held_welcomes > 0 {
        let _ = writeln!(
            out,
            "  invitations held until you learn who added their senders: {}",
            s.held_welcomes
        );
    }
    if !s.unimported.is_empty() {
        let _ = writeln!(
            out,
            "  updates of others to import in your next commit: {}",
            s.unimported
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_700_000_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn an_error_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot reach the relay: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let root = std::io::Error::other("connection refused");
        let e = anyhow::Error::new(Outer { source: root }).context("sync failed");
        assert_eq!(
            error_text(&e),
            "sync failed: cannot reach the relay: connection refused"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_text(&plain), "outer: inner");
    }

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }
}
