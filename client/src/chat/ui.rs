//! The state of the `dmls chat` screen and how it is drawn: pure functions of [`App`], so that
//! tests draw it on ratatui's test backend.

use std::collections::HashSet;

use crossterm::event::{Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph};
use unicode_segmentation::UnicodeSegmentation as _;
use unicode_width::UnicodeWidthStr as _;

use super::input::InputLine;
use crate::engine::{DGroupStatus, MessageId, ReceivedMessage};

/// Narrower terminals get the members in the header instead of a side panel.
const SIDE_PANEL_MIN_WIDTH: u16 = 60;
/// Width of the side panel.
const SIDE_PANEL_WIDTH: u16 = 22;

/// Where one of our messages is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendState {
    /// On the relay (or not ours).
    Delivered,
    /// Typed, not accepted by the engine yet.
    Pending,
    /// Stored in the outbox; the relay could not be reached. It goes out by itself.
    Queued,
    /// Refused (e.g. we were removed); not sent.
    Failed(String),
}

/// One entry of the scrollback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A message of the group.
    Message {
        /// Its id once the engine has it (ours: after it accepted it).
        id: Option<MessageId>,
        /// Client id of the sender.
        sender: String,
        /// Sender's clock, ms since the Unix epoch.
        sent_at_ms: u64,
        /// The text (or a description of a non-text body).
        text: String,
        /// Ours only: where it is.
        state: SendState,
        /// The local number of a message we typed.
        local: Option<u64>,
    },
    /// A line of dmls itself (events, command results, help).
    Note {
        /// The text.
        text: String,
        /// Whether it reports a failure.
        error: bool,
    },
}

/// One member as the panel shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Client id.
    pub name: String,
    /// We hold their Send Group (so we read their messages).
    pub joined: bool,
    /// Removed from the group.
    pub removed: bool,
    /// Has not acknowledged others' updates for a while.
    pub behind: bool,
    /// Messages of theirs we hold but cannot process yet.
    pub waiting: usize,
}

/// The connection to the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Not known yet.
    Connecting,
    /// The last request reached the relay.
    Online,
    /// The relay cannot be reached; why.
    Offline(String),
}

/// What the caller should do after an input event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing (the screen may have changed).
    None,
    /// Leave the chat.
    Quit,
    /// Send this text; it is on screen as the pending message with this local number.
    Send {
        /// Local number of the pending entry.
        local: u64,
        /// The text.
        text: String,
    },
    /// Make a DMLS Update.
    Update,
    /// Remove this member.
    Remove(String),
    /// Add these members.
    Add(Vec<String>),
    /// Show the group's status.
    Status,
    /// Show the safety number with this member.
    Verify(String),
    /// Rename the group to this name.
    Rename(String),
}

/// The help of the slash commands.
pub const HELP: &[&str] = &[
    "Commands:",
    "  /update        make a DMLS Update (a fresh key; imports the others' updates)",
    "  /add NAME...   add members to the group (they read what is said from then on)",
    "  /remove NAME   remove NAME from the group",
    "  /status        show members, epochs and waiting messages",
    "  /verify NAME   show the safety number with NAME, to compare out of band",
    "  /rename NAME   rename the group for everyone (the rest of the line is the name)",
    "  /help          this help",
    "  /quit          leave (Ctrl-C too); queued messages go out with your next dmls command",
    "Keys: Enter sends, PageUp/PageDown scroll, Ctrl-U clears the line, Ctrl-W deletes a word.",
];

/// Everything on the screen.
#[derive(Debug, Clone)]
pub struct App {
    /// Group name.
    pub group: String,
    /// Our client id.
    pub me: String,
    /// The scrollback, oldest first.
    pub entries: Vec<Entry>,
    /// Ids of the messages in `entries`.
    shown: HashSet<MessageId>,
    /// The input line.
    pub input: InputLine,
    /// Members (from the group's status).
    pub members: Vec<Member>,
    /// Whether we were removed from the group.
    pub we_are_removed: bool,
    /// Whether we left the group (`dmls group leave`).
    pub we_left: bool,
    /// The relay connection.
    pub connection: Connection,
    /// Lines scrolled up from the bottom.
    pub scroll: usize,
    next_local: u64,
}

impl App {
    /// An empty screen for `group`, as `me`.
    pub fn new(group: &str, me: &str) -> App {
        App {
            group: group.to_string(),
            me: me.to_string(),
            entries: Vec::new(),
            shown: HashSet::new(),
            input: InputLine::default(),
            members: Vec::new(),
            we_are_removed: false,
            we_left: false,
            connection: Connection::Connecting,
            scroll: 0,
            next_local: 1,
        }
    }

    /// Adds the messages of `history` (oldest first) not shown yet.
    pub fn add_history(&mut self, history: &[ReceivedMessage]) {
        for m in history {
            if !self.shown.insert(m.message_id) {
                continue;
            }
            let text = if m.content_type.starts_with("text/") {
                String::from_utf8_lossy(&m.body).into_owned()
            } else {
                format!("<{} bytes of {}>", m.body.len(), m.content_type)
            };
            self.entries.push(Entry::Message {
                id: Some(m.message_id),
                sender: m.sender.clone(),
                sent_at_ms: m.sent_at_ms,
                text,
                state: SendState::Delivered,
                local: None,
            });
        }
    }

    /// Shows a typed message at once, pending; returns its local number.
    pub fn push_pending(&mut self, text: &str, now_ms: u64) -> u64 {
        let local = self.next_local;
        self.next_local += 1;
        self.entries.push(Entry::Message {
            id: None,
            sender: self.me.clone(),
            sent_at_ms: now_ms,
            text: text.to_string(),
            state: SendState::Pending,
            local: Some(local),
        });
        self.scroll = 0;
        local
    }

    /// The engine accepted our message `local` as `id`; `queued` when the relay does not
    /// have it yet.
    pub fn accepted(&mut self, local: u64, id: Option<MessageId>, queued: bool) {
        if let Some(id) = id {
            self.shown.insert(id);
        }
        for e in &mut self.entries {
            if let Entry::Message {
                local: Some(l),
                id: eid,
                state,
                ..
            } = e
                && *l == local
            {
                *eid = id;
                *state = if queued {
                    SendState::Queued
                } else {
                    SendState::Delivered
                };
            }
        }
    }

    /// Our message `local` was refused.
    pub fn failed(&mut self, local: u64, error: &str) {
        for e in &mut self.entries {
            if let Entry::Message {
                local: Some(l),
                state,
                ..
            } = e
                && *l == local
            {
                *state = SendState::Failed(error.to_string());
            }
        }
    }

    /// Everything queued reached the relay.
    pub fn flushed(&mut self) {
        for e in &mut self.entries {
            if let Entry::Message { state, .. } = e
                && *state == SendState::Queued
            {
                *state = SendState::Delivered;
            }
        }
    }

    /// Whether a message of ours waits for the relay.
    pub fn has_queued(&self) -> bool {
        self.entries.iter().any(|e| {
            matches!(
                e,
                Entry::Message {
                    state: SendState::Queued,
                    ..
                }
            )
        })
    }

    /// Adds a line of dmls itself.
    pub fn note(&mut self, text: &str, error: bool) {
        for line in text.lines() {
            self.entries.push(Entry::Note {
                text: line.to_string(),
                error,
            });
        }
    }

    /// Takes the name, the members and our removal from the group's status.
    pub fn set_status(&mut self, status: &DGroupStatus) {
        let s = &status.summary;
        self.we_are_removed = s.we_are_removed;
        self.we_left = s.left_ms.is_some();
        // A member may have renamed the group.
        self.group = s.name.clone();
        self.members = s
            .members
            .iter()
            .map(|m| {
                let sg = status.send_groups.iter().find(|g| &g.owner == m);
                Member {
                    name: m.clone(),
                    joined: sg.is_some_and(|g| g.joined),
                    removed: s.removed.contains(m),
                    behind: sg.is_some_and(|g| g.behind_since_ms.is_some()),
                    waiting: sg.map_or(0, |g| g.waiting.len()),
                }
            })
            .collect();
    }

    /// Handles one terminal event.
    pub fn on_event(&mut self, event: &Event, now_ms: u64) -> Action {
        match event {
            Event::Key(key) if key.kind != KeyEventKind::Release => self.on_key(key, now_ms),
            Event::Paste(text) => {
                self.input.insert_str(text);
                Action::None
            }
            _ => Action::None,
        }
    }

    fn on_key(&mut self, key: &KeyEvent, now_ms: u64) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') | KeyCode::Char('d') if ctrl => return Action::Quit,
            KeyCode::Char('u') if ctrl => self.input.clear(),
            KeyCode::Char('w') if ctrl => self.input.delete_word(),
            KeyCode::Char('a') if ctrl => self.input.home(),
            KeyCode::Char('e') if ctrl => self.input.end(),
            KeyCode::Char(c) if !ctrl => self.input.insert_char(c),
            KeyCode::Backspace => self.input.backspace(),
            KeyCode::Delete => self.input.delete(),
            KeyCode::Left => self.input.left(),
            KeyCode::Right => self.input.right(),
            KeyCode::Home => self.input.home(),
            KeyCode::End => self.input.end(),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_add(10),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::Enter if key.modifiers.contains(KeyModifiers::ALT) => {
                self.input.insert_char('\n')
            }
            KeyCode::Enter => return self.submit(now_ms),
            _ => {}
        }
        Action::None
    }

    /// Enter: a slash command, or a message to send.
    fn submit(&mut self, now_ms: u64) -> Action {
        let text = self.input.take();
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Action::None;
        }
        if let Some(command) = trimmed.strip_prefix('/')
            && !command.starts_with('/')
        {
            let mut words = command.split_whitespace();
            let name = words.next().unwrap_or_default();
            let args: Vec<&str> = words.collect();
            return match (name, args.as_slice()) {
                ("quit" | "q" | "exit", []) => Action::Quit,
                ("help" | "h" | "?", []) => {
                    self.note(&HELP.join("\n"), false);
                    self.scroll = 0;
                    Action::None
                }
                ("update", []) => Action::Update,
                ("status", []) => Action::Status,
                ("remove", [member]) => Action::Remove((*member).to_string()),
                ("remove", _) => {
                    self.note("usage: /remove NAME", true);
                    Action::None
                }
                ("add", [_, ..]) => Action::Add(args.iter().map(|a| (*a).to_string()).collect()),
                ("add", []) => {
                    self.note("usage: /add NAME...", true);
                    Action::None
                }
                ("verify", [member]) => Action::Verify((*member).to_string()),
                ("verify", _) => {
                    self.note("usage: /verify NAME", true);
                    Action::None
                }
                ("rename", [_, ..]) => Action::Rename(args.join(" ")),
                ("rename", []) => {
                    self.note("usage: /rename NEW NAME", true);
                    Action::None
                }
                _ => {
                    self.note(
                        &format!("unknown command /{command} (/help lists them; start with // to send a line beginning with /)"),
                        true,
                    );
                    Action::None
                }
            };
        }
        // `//text` sends `/text`.
        let text = match text.strip_prefix("//") {
            Some(rest) => format!("/{rest}"),
            None => text,
        };
        let local = self.push_pending(&text, now_ms);
        Action::Send { local, text }
    }
}

/// `HH:MM` (UTC) of a time in ms since the Unix epoch.
fn clock(ms: u64) -> String {
    let secs = (ms / 1000) % 86_400;
    format!("{:02}:{:02}", secs / 3600, secs % 3600 / 60)
}

/// Splits `text` into lines of at most `width` columns (by grapheme; breaks at the last
/// space when there is one on the line).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut out = Vec::new();
    for para in text.split('\n') {
        let mut line = String::new();
        let mut cols = 0;
        for g in para.graphemes(true) {
            let w = g.width();
            if cols + w > width && !line.is_empty() {
                // Break at the last space if that leaves something on both sides.
                match line.rfind(' ').filter(|i| *i > 0) {
                    Some(i) => {
                        let rest = line[i + 1..].to_string();
                        line.truncate(i);
                        out.push(std::mem::take(&mut line));
                        cols = rest.width();
                        line = rest;
                    }
                    None => {
                        out.push(std::mem::take(&mut line));
                        cols = 0;
                    }
                }
            }
            line.push_str(g);
            cols += w;
        }
        out.push(line);
    }
    out
}

fn sender_color(name: &str) -> Color {
    const COLORS: [Color; 6] = [
        Color::Cyan,
        Color::Green,
        Color::Magenta,
        Color::Yellow,
        Color::Blue,
        Color::LightRed,
    ];
    let h = name
        .bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
    COLORS[h % COLORS.len()]
}

/// The scrollback as screen lines of at most `width` columns.
fn scrollback_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let mut lines = Vec::new();
    for e in &app.entries {
        match e {
            Entry::Message {
                sender,
                sent_at_ms,
                text,
                state,
                ..
            } => {
                let (mark, mark_style) = match state {
                    SendState::Delivered => (String::new(), Style::default()),
                    SendState::Pending => (
                        " (sending…)".to_string(),
                        Style::default().add_modifier(Modifier::DIM),
                    ),
                    SendState::Queued => (
                        " (queued: relay unreachable)".to_string(),
                        Style::default().fg(Color::Yellow),
                    ),
                    SendState::Failed(why) => (
                        format!(" (not sent: {why})"),
                        Style::default().fg(Color::Red),
                    ),
                };
                let prefix = format!("{} {sender}: ", clock(*sent_at_ms));
                let indent = prefix.width().min(width / 2);
                let body_width = width.saturating_sub(indent).max(1);
                let mut body = wrap(text, body_width);
                // The mark goes on the last line when it fits, else on a line of its own.
                let mark_on_own_line = body
                    .last()
                    .is_some_and(|l| l.width() + mark.width() > body_width);
                let body_style = match state {
                    SendState::Delivered => Style::default(),
                    _ => Style::default().add_modifier(Modifier::DIM),
                };
                let count = body.len();
                for (i, chunk) in body.drain(..).enumerate() {
                    let mut spans = Vec::new();
                    if i == 0 {
                        spans.push(Span::styled(
                            format!("{} ", clock(*sent_at_ms)),
                            Style::default().fg(Color::DarkGray),
                        ));
                        spans.push(Span::styled(
                            format!("{sender}: "),
                            Style::default()
                                .fg(sender_color(sender))
                                .add_modifier(Modifier::BOLD),
                        ));
                    } else {
                        spans.push(Span::raw(" ".repeat(indent)));
                    }
                    spans.push(Span::styled(chunk, body_style));
                    if i + 1 == count && !mark.is_empty() && !mark_on_own_line {
                        spans.push(Span::styled(mark.clone(), mark_style));
                    }
                    lines.push(Line::from(spans));
                }
                if !mark.is_empty() && mark_on_own_line {
                    for chunk in wrap(mark.trim_start(), body_width) {
                        lines.push(Line::from(vec![
                            Span::raw(" ".repeat(indent)),
                            Span::styled(chunk, mark_style),
                        ]));
                    }
                }
            }
            Entry::Note { text, error } => {
                let style = if *error {
                    Style::default().fg(Color::Red)
                } else {
                    Style::default().fg(Color::DarkGray)
                };
                for chunk in wrap(&format!("* {text}"), width) {
                    lines.push(Line::from(Span::styled(chunk, style)));
                }
            }
        }
    }
    lines
}

/// One member's line: a mark and what is special about them, in words (not only colour).
fn member_text(app: &App, m: &Member) -> (String, Style) {
    let mut text = m.name.clone();
    if m.name == app.me {
        text.push_str(" (you)");
    }
    let (mark, style) = if m.removed {
        ("x", Style::default().fg(Color::DarkGray))
    } else if !m.joined {
        ("?", Style::default().fg(Color::Yellow))
    } else if m.behind {
        ("!", Style::default().fg(Color::Yellow))
    } else {
        ("*", Style::default().fg(Color::Green))
    };
    let mut notes = Vec::new();
    if m.removed {
        notes.push("removed".to_string());
    } else if !m.joined {
        notes.push("not joined".to_string());
    } else if m.behind {
        notes.push("behind".to_string());
    }
    if m.waiting > 0 {
        notes.push(format!("{} waiting", m.waiting));
    }
    if !notes.is_empty() {
        text.push_str(&format!(" [{}]", notes.join(", ")));
    }
    (format!("{mark} {text}"), style)
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame<'_>, app: &App) {
    let area = frame.area();
    let [header, middle, input] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(2),
    ])
    .areas(area);
    draw_header(frame, app, header, area.width < SIDE_PANEL_MIN_WIDTH);
    if area.width >= SIDE_PANEL_MIN_WIDTH {
        let [messages, side] =
            Layout::horizontal([Constraint::Min(1), Constraint::Length(SIDE_PANEL_WIDTH)])
                .areas(middle);
        draw_messages(frame, app, messages);
        draw_members(frame, app, side);
    } else {
        draw_messages(frame, app, middle);
    }
    draw_input(frame, app, input);
}

fn draw_header(frame: &mut Frame<'_>, app: &App, area: Rect, with_members: bool) {
    let (conn, conn_style) = match &app.connection {
        Connection::Connecting => ("connecting".to_string(), Style::default().fg(Color::Yellow)),
        Connection::Online => ("online".to_string(), Style::default().fg(Color::Green)),
        Connection::Offline(_) => (
            "offline, messages queued".to_string(),
            Style::default().fg(Color::Red),
        ),
    };
    let mut spans = vec![
        Span::styled(
            format!(" {} ", app.group),
            Style::default().add_modifier(Modifier::BOLD | Modifier::REVERSED),
        ),
        Span::raw(format!(" as {} · ", app.me)),
        Span::styled(conn, conn_style),
    ];
    if app.we_are_removed {
        spans.push(Span::styled(
            if app.we_left {
                " · you left"
            } else {
                " · you were removed"
            },
            Style::default().fg(Color::Red),
        ));
    }
    if with_members {
        for m in app.members.iter().filter(|m| m.name != app.me) {
            let (text, style) = member_text(app, m);
            spans.push(Span::raw(" · "));
            spans.push(Span::styled(text, style));
        }
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_messages(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let lines = scrollback_lines(app, usize::from(area.width));
    let height = usize::from(area.height);
    let max_scroll = lines.len().saturating_sub(height);
    let scroll = app.scroll.min(max_scroll);
    let end = lines.len() - scroll;
    let start = end.saturating_sub(height);
    let mut visible: Vec<Line<'static>> = lines[start..end].to_vec();
    if scroll > 0
        && let Some(last) = visible.last_mut()
    {
        *last = Line::from(Span::styled(
            format!("-- {scroll} more lines below (PageDown) --"),
            Style::default().add_modifier(Modifier::REVERSED),
        ));
    }
    // Bottom-aligned, like a chat.
    let pad = height.saturating_sub(visible.len());
    let mut all = vec![Line::default(); pad];
    all.extend(visible);
    frame.render_widget(Paragraph::new(all), area);
}

fn draw_members(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let width = usize::from(area.width.saturating_sub(1));
    let mut lines = Vec::new();
    for m in &app.members {
        let (text, style) = member_text(app, m);
        for chunk in wrap(&text, width) {
            lines.push(Line::from(Span::styled(chunk, style)));
        }
    }
    let block = Block::default().borders(Borders::LEFT).title(Span::styled(
        "Members",
        Style::default().add_modifier(Modifier::BOLD),
    ));
    frame.render_widget(Paragraph::new(lines).block(block), area);
}

fn draw_input(frame: &mut Frame<'_>, app: &App, area: Rect) {
    let [rule, line] = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
    let hint = if app.has_queued() {
        " messages queued; they go out when the relay is back · /help · Ctrl-C quits"
    } else {
        " Enter sends · /help for commands · Ctrl-C quits"
    };
    // The hint is the title of the rule above the input line.
    frame.render_widget(
        Block::default()
            .borders(Borders::TOP)
            .title(Span::styled(hint, Style::default().fg(Color::DarkGray))),
        rule,
    );
    let prompt = "> ";
    let width = usize::from(line.width).saturating_sub(prompt.len());
    let (shown, col) = app.input.view(width);
    frame.render_widget(
        Paragraph::new(Line::from(vec![Span::raw(prompt), Span::raw(shown)])),
        line,
    );
    let x = line
        .x
        .saturating_add(prompt.len() as u16)
        .saturating_add(u16::try_from(col).unwrap_or(u16::MAX));
    frame.set_cursor_position((x.min(line.right().saturating_sub(1)), line.y));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::engine::{DGroupId, DGroupSummary, SendGroupStatus};

    fn message(sender: &str, n: u8, at_ms: u64, text: &str) -> ReceivedMessage {
        ReceivedMessage {
            dgroup: DGroupId([1; 16]),
            sender: sender.into(),
            sent_at_ms: at_ms,
            message_id: MessageId([n; 16]),
            content_type: crate::engine::TEXT_PLAIN.into(),
            body: text.as_bytes().to_vec(),
            epoch: 1,
            generation: None,
        }
    }

    fn status(members: &[&str], removed: &[&str], not_joined: &[&str]) -> DGroupStatus {
        DGroupStatus {
            summary: DGroupSummary {
                id: DGroupId([1; 16]),
                name: "friends".into(),
                renamed_by: None,
                members: members.iter().map(|m| m.to_string()).collect(),
                removed: removed.iter().map(|m| m.to_string()).collect(),
                we_are_removed: false,
                left_ms: None,
                add_policy: Default::default(),
            },
            send_groups: members
                .iter()
                .map(|m| SendGroupStatus {
                    owner: m.to_string(),
                    group_id: String::new(),
                    joined: !not_joined.contains(m),
                    epoch: Some(1),
                    members: vec![],
                    epoch_authenticator: None,
                    after_seq: 0,
                    waiting: vec![],
                    psk_deletion_holders: vec![],
                    behind_since_ms: None,
                    last_resort_leaf: false,
                })
                .collect(),
            pending_removals: vec![],
            pending_adds: vec![],
            held_welcomes: 0,
            key_mismatches: vec![],
            unverified: vec![],
            key_changes: vec![],
            unimported: vec![],
        }
    }

    fn screen(app: &App, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                let mut row = String::new();
                let mut skip = 0;
                for x in 0..width {
                    if skip > 0 {
                        skip -= 1;
                        continue;
                    }
                    let sym = buffer[(x, y)].symbol();
                    skip = sym.width().saturating_sub(1);
                    row.push_str(sym);
                }
                row.trim_end().to_string()
            })
            .collect()
    }

    fn conversation() -> App {
        let mut app = App::new("friends", "alice");
        app.connection = Connection::Online;
        app.set_status(&status(
            &["alice", "bob", "carol", "dave"],
            &["dave"],
            &["carol"],
        ));
        app.add_history(&[
            message("bob", 1, 1_700_000_000_000, "hi alice 👋"),
            message("alice", 2, 1_700_000_060_000, "hello bob"),
        ]);
        app
    }

    #[test]
    fn draws_a_conversation_with_members_at_80x24() {
        let mut app = conversation();
        for c in "typing…".chars() {
            app.on_event(
                &Event::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)),
                0,
            );
        }
        let rows = screen(&app, 80, 24);
        let all = rows.join("\n");
        assert!(
            rows[0].contains("friends") && rows[0].contains("online"),
            "{all}"
        );
        assert!(all.contains("22:13 bob: hi alice 👋"), "{all}");
        assert!(all.contains("22:14 alice: hello bob"), "{all}");
        // The member panel says who is what, in words.
        assert!(all.contains("Members"), "{all}");
        assert!(all.contains("* alice (you)"), "{all}");
        assert!(all.contains("* bob"), "{all}");
        assert!(all.contains("? carol [not joined]"), "{all}");
        assert!(all.contains("x dave [removed]"), "{all}");
        assert_eq!(rows[23], "> typing…", "{all}");
        // Newest message right above the input area.
        assert!(rows[21].contains("hello bob"), "{all}");
        assert!(rows[22].contains("Enter sends"), "{all}");
    }

    #[test]
    fn a_sent_message_shows_at_once_pending_then_queued_then_delivered() {
        let mut app = conversation();
        app.input.insert_str("see you at 5");
        let action = app.on_event(
            &Event::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
            1_700_000_120_000,
        );
        let Action::Send { local, text } = action else {
            panic!("{action:?}");
        };
        assert_eq!(text, "see you at 5");
        assert!(app.input.is_empty());
        let all = screen(&app, 80, 24).join("\n");
        assert!(
            all.contains("22:15 alice: see you at 5 (sending…)"),
            "{all}"
        );

        app.accepted(local, Some(MessageId([3; 16])), true);
        app.connection = Connection::Offline("connection refused".into());
        let all = screen(&app, 80, 24).join("\n");
        assert!(
            all.contains("see you at 5 (queued: relay unreachable)"),
            "{all}"
        );
        assert!(all.contains("offline, messages queued"), "{all}");
        assert!(all.contains("they go out when the relay is back"), "{all}");

        // The history refresh does not show it twice; once flushed it is plain.
        app.add_history(&[message("alice", 3, 1_700_000_120_000, "see you at 5")]);
        app.connection = Connection::Online;
        app.flushed();
        let all = screen(&app, 80, 24).join("\n");
        assert_eq!(all.matches("see you at 5").count(), 1, "{all}");
        assert!(!all.contains("queued"), "{all}");
    }

    #[test]
    fn a_narrow_terminal_wraps_and_puts_members_in_the_header() {
        let mut app = conversation();
        app.add_history(&[message(
            "bob",
            4,
            1_700_000_180_000,
            "a rather long message that cannot fit on one line of a narrow terminal",
        )]);
        let rows = screen(&app, 40, 12);
        let all = rows.join("\n");
        assert!(!all.contains("Members"), "{all}");
        assert!(rows[0].contains("friends"), "{all}");
        assert!(rows.iter().all(|r| r.width() <= 40), "{all}");
        // Continuation lines are indented under the text.
        let first = rows
            .iter()
            .position(|r| r.contains("bob: a rather long"))
            .unwrap();
        assert!(rows[first + 1].starts_with("           "), "{all}");
        assert!(all.contains("narrow"), "{all}");
        // Tiny terminals do not panic.
        screen(&app, 10, 4);
        screen(&app, 1, 1);
    }

    #[test]
    fn slash_commands() {
        let mut app = conversation();
        let enter = Event::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        for (typed, want) in [
            ("/update", Action::Update),
            ("/status", Action::Status),
            ("/remove bob", Action::Remove("bob".into())),
            (
                "/add dave  erin",
                Action::Add(vec!["dave".into(), "erin".into()]),
            ),
            ("/add", Action::None),
            ("/verify bob", Action::Verify("bob".into())),
            ("/verify", Action::None),
            ("/rename book  club", Action::Rename("book club".into())),
            ("/rename", Action::None),
            ("/quit", Action::Quit),
            ("/remove", Action::None),
            ("/nonsense", Action::None),
            ("/help", Action::None),
        ] {
            app.input.insert_str(typed);
            assert_eq!(app.on_event(&enter, 0), want, "{typed}");
        }
        assert!(
            app.entries
                .iter()
                .any(|e| matches!(e, Entry::Note { text, error: true } if text.contains("unknown command /nonsense")))
        );
        assert!(app.entries.iter().any(
            |e| matches!(e, Entry::Note { text, .. } if text.contains("/remove NAME   remove"))
        ));
        app.input.insert_str("//not a command");
        assert!(
            matches!(app.on_event(&enter, 0), Action::Send { text, .. } if text == "/not a command")
        );
        let ctrl_c = Event::Key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert_eq!(app.on_event(&ctrl_c, 0), Action::Quit);
        app.on_event(&Event::Paste("pasted\nlines 🎉".into()), 0);
        assert_eq!(app.input.text(), "pasted\nlines 🎉");
    }
}
