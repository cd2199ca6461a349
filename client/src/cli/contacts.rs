//! `dmls contacts`, `dmls verify --confirm` and how key changes and key mismatches are shown
//! (docs/PROTOCOL.md "Pinning").

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};

use super::{Ctx, emit, format_time};
use crate::engine::{Contact, KeyChange, KeyMismatch, fingerprint};

/// `dmls contacts ...`
#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// List your contacts (the default): fingerprint, first seen, verified or not, and any key
    /// change waiting for your decision.
    List,
    /// Make NAME a contact before any group with them, so that you can compare safety numbers
    /// first (`dmls verify NAME`, then `dmls verify NAME --confirm`).
    ///
    /// Fetches one of NAME's key packages from the relay (using it up) and pins its identity key.
    /// This is a first contact: only comparing safety numbers tells whether the relay gave you
    /// NAME's real key.
    Add {
        /// The contact's client id.
        name: String,
    },
    /// Accept NAME's new identity key, after checking its fingerprint with NAME out of band.
    ///
    /// Only a key that was reported as a key change of NAME can be trusted, by its fingerprint
    /// as the report (or `dmls contacts`) shows it. Welcomes NAME sent with that key are joined
    /// and key packages are claimed again for groups NAME is missing from. The new key is not
    /// verified: compare safety numbers again (`dmls verify NAME`).
    Trust {
        /// The contact's client id.
        name: String,
        /// The fingerprint of the new key: 32 hexadecimal digits (spaces are ignored).
        #[arg(long)]
        fingerprint: String,
    },
    /// Show or set whether only verified contacts may be added to groups.
    ///
    /// On: `dmls group create` refuses members you have not verified with `dmls verify NAME
    /// --confirm`, and a key package claimed for a member later is used only if it carries the
    /// verified key. Kept with your identity.
    RequireVerified {
        /// on or off; absent shows the setting.
        #[arg(value_parser = ["on", "off"])]
        setting: Option<String>,
    },
}

/// Runs `dmls contacts`.
pub(super) async fn run(ctx: &Ctx, command: Option<ContactsCommand>) -> Result<()> {
    match command.unwrap_or(ContactsCommand::List) {
        ContactsCommand::List => list(ctx).await,
        ContactsCommand::Add { name } => add(ctx, &name).await,
        ContactsCommand::Trust { name, fingerprint } => trust(ctx, &name, &fingerprint).await,
        ContactsCommand::RequireVerified { setting } => require_verified(ctx, setting).await,
    }
}

async fn list(ctx: &Ctx) -> Result<()> {
    let client = ctx.open()?;
    let contacts = client
        .contacts()
        .await
        .context("cannot read your contacts")?;
    let changes = client
        .key_changes()
        .await
        .context("cannot read your contacts")?;
    if ctx.json {
        emit(&json!({
            "contacts": contacts.iter().map(contact_json).collect::<Vec<_>>(),
            "key_changes": changes.iter().map(key_change_json).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    if contacts.is_empty() {
        println!("No contacts yet: a member becomes one at your first group with them.");
    }
    for c in &contacts {
        let verified = match c.verified_ms {
            Some(t) => format!("verified {} UTC", format_time(t)),
            None => "not verified".into(),
        };
        println!("{}  {}  {verified}", c.client_id, fingerprint(&c.key));
        println!(
            "    first seen {}: {}",
            seen_time(c.first_seen_ms),
            c.first_seen_where
        );
    }
    for k in &changes {
        println!();
        println!("{}", key_change_text(k));
    }
    Ok(())
}

async fn add(ctx: &Ctx, name: &str) -> Result<()> {
    let mut client = ctx.open()?;
    let key = client
        .add_contact(name)
        .await
        .with_context(|| format!("cannot add the contact {name}"))?;
    let events = client.take_events();
    let names = super::group_names(&client).await;
    if ctx.json {
        emit(&json!({
            "client_id": name,
            "fingerprint": fingerprint(&key),
            "events": events.iter().map(|e| super::event_json(e, &names)).collect::<Vec<_>>(),
        }));
    } else {
        super::print_event_lines(&events, &names);
        if events.is_empty() {
            println!(
                "{name} is a contact, key {}. Compare safety numbers now: `dmls verify {name}`.",
                fingerprint(&key)
            );
        }
    }
    Ok(())
}

async fn trust(ctx: &Ctx, name: &str, fp: &str) -> Result<()> {
    let mut client = ctx.open()?;
    client
        .trust(name, fp)
        .await
        .with_context(|| format!("cannot trust the key {fp} for {name}"))?;
    let events = client.take_events();
    let names = super::group_names(&client).await;
    if ctx.json {
        emit(&json!({
            "client_id": name,
            "fingerprint": fingerprint_of(&client, name).await?,
            "events": events.iter().map(|e| super::event_json(e, &names)).collect::<Vec<_>>(),
        }));
    } else {
        println!(
            "{name}'s key {fp} is now trusted (not verified: compare safety numbers with `dmls verify {name}`)."
        );
        super::print_event_lines(&events, &names);
    }
    Ok(())
}

async fn fingerprint_of(client: &crate::client::Client, name: &str) -> Result<Option<String>> {
    Ok(client
        .contacts()
        .await?
        .into_iter()
        .find(|c| c.client_id == name)
        .map(|c| fingerprint(&c.key)))
}

async fn require_verified(ctx: &Ctx, setting: Option<String>) -> Result<()> {
    let client = ctx.open()?;
    if let Some(s) = setting {
        client
            .set_require_verified(s == "on")
            .await
            .context("cannot change the setting")?;
    }
    let on = client
        .require_verified()
        .await
        .context("cannot read the setting")?;
    if ctx.json {
        emit(&json!({ "require_verified": on }));
    } else if on {
        println!("Only verified contacts can be added to groups.");
    } else {
        println!("Any member can be added to groups (verified or not).");
    }
    Ok(())
}

/// `dmls group create --require-verified`: every member must be a verified contact.
pub(super) async fn check_all_verified(
    client: &crate::client::Client,
    members: &[String],
) -> Result<()> {
    let contacts = client
        .contacts()
        .await
        .context("cannot read your contacts")?;
    let unverified: Vec<&str> = members
        .iter()
        .filter(|m| *m != client.client_id())
        .filter(|m| {
            !contacts
                .iter()
                .any(|c| c.client_id == **m && c.verified_ms.is_some())
        })
        .map(String::as_str)
        .collect();
    if !unverified.is_empty() {
        bail!(
            "not verified: {} (--require-verified): compare safety numbers with each, then \
             `dmls verify NAME --confirm`",
            unverified.join(", ")
        );
    }
    Ok(())
}

fn seen_time(ms: u64) -> String {
    if ms == 0 {
        "before contacts were kept".into()
    } else {
        format!("{} UTC", format_time(ms))
    }
}

fn contact_json(c: &Contact) -> Value {
    json!({
        "client_id": c.client_id,
        "identity_key": hex::encode(&c.key),
        "fingerprint": fingerprint(&c.key),
        "first_seen_ms": c.first_seen_ms,
        "first_seen_where": c.first_seen_where,
        "verified": c.verified_ms.is_some(),
        "verified_ms": c.verified_ms,
    })
}

/// A key change as JSON (in `dmls contacts` and in the `key_changed` event).
pub(super) fn key_change_json(k: &KeyChange) -> Value {
    json!({
        "client_id": k.client_id,
        "pinned_fingerprint": fingerprint(&k.pinned_key),
        "new_fingerprint": fingerprint(&k.new_key),
        "new_identity_key": hex::encode(&k.new_key),
        "seen_ms": k.seen_ms,
        "seen_where": k.seen_where,
    })
}

/// What is printed for a key change.
pub(super) fn key_change_text(k: &KeyChange) -> String {
    let name = &k.client_id;
    let new = fingerprint(&k.new_key);
    format!(
        "WARNING: {name}'s identity key changed. Pinned: {}. Seen now: {new}, in {}.\n\
         Nothing is sent to the new key and nothing it signed is shown. A relay can do this to \
         read your messages. If {name} really made a new identity (ask them, out of band, for \
         the fingerprint `dmls whoami` shows them), accept it with:\n    \
         dmls contacts trust {name} --fingerprint '{new}'",
        fingerprint(&k.pinned_key),
        k.seen_where
    )
}

/// The lines of `dmls status` about leaves with unexpected keys and unverified members.
pub(super) fn status_lines(mismatches: &[KeyMismatch], unverified: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if !mismatches.is_empty() {
        out.push(
            "  UNSAFE: leaves that do not carry their member's pinned identity key \
             (someone else may read what is sent there):"
                .to_string(),
        );
        for m in mismatches {
            let pinned = m
                .pinned_key
                .as_deref()
                .map_or("none".to_string(), fingerprint);
            out.push(format!(
                "    {} in {}'s Send Group: key {}, pinned {pinned}",
                m.member,
                m.send_group_owner,
                fingerprint(&m.leaf_key)
            ));
        }
    }
    if !unverified.is_empty() {
        out.push(format!(
            "  not verified: {} (compare safety numbers: `dmls verify NAME`)",
            unverified.join(", ")
        ));
    }
    out
}

/// `key_mismatches` of `dmls status --json`.
pub(super) fn mismatches_json(mismatches: &[KeyMismatch]) -> Value {
    mismatches
        .iter()
        .map(|m| {
            json!({
                "member": m.member,
                "send_group_owner": m.send_group_owner,
                "leaf_fingerprint": fingerprint(&m.leaf_key),
                "pinned_fingerprint": m.pinned_key.as_deref().map(fingerprint),
            })
        })
        .collect()
}
