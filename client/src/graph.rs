//! `dmls graph`: a DGroup's dependencies as a Graphviz DOT graph.
//!
//! Each Send Group is a lane (a `cluster` subgraph) of the epochs we saw it reach, left to
//! right. An edge from an epoch of one Send Group to a commit of another means that commit
//! imported that epoch (its PSK). Messages we hold but cannot process yet are red nodes, with
//! a dashed red edge from what they wait for when that is an epoch. Lanes of removed members
//! are dashed and grey; a commit that removed members says whom.
//!
//! The output is plain DOT; to get a picture, pipe it into Graphviz: `dot -Tsvg`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::client::dgroup_hex;
use crate::engine::{DGroupGraph, PskId, WaitReason};

/// What to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphOptions {
    /// Show at most this many of the latest commits of each Send Group (`None`: all kept).
    pub last: Option<usize>,
}

/// Quotes `s` as a DOT string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The DOT id of epoch `epoch` of `owner`'s Send Group.
pub fn epoch_node(owner: &str, epoch: u64) -> String {
    format!("{owner}@{epoch}")
}

/// A message we hold but cannot process yet, as a node.
struct Wait {
    /// The owner of the Send Group it came through (its lane).
    lane: String,
    /// Its DOT id.
    id: String,
    label: String,
    /// The epoch it waits for, as (owner, epoch), when it waits for one.
    from: Option<(String, u64)>,
}

/// One lane's nodes: epoch -> extra label lines and whether it is a commit we saw.
type LaneNodes = BTreeMap<u64, (Vec<String>, bool)>;

/// Renders `graph` as a DOT digraph.
pub fn to_dot(graph: &DGroupGraph, options: &GraphOptions) -> String {
    let status = &graph.status;
    let summary = &status.summary;
    // Send Group id -> owner, to name imported epochs.
    let owners: BTreeMap<String, String> = status
        .send_groups
        .iter()
        .map(|sg| (sg.group_id.clone(), sg.owner.clone()))
        .collect();
    let owner_of = |p: &PskId| {
        let hex = hex::encode(p.group_id);
        owners
            .get(&hex)
            .cloned()
            .unwrap_or_else(|| hex.chars().take(8).collect())
    };

    let mut lanes: BTreeMap<String, LaneNodes> = BTreeMap::new();
    // (imported epoch, importing commit), each as (owner, epoch).
    let mut imports: Vec<((String, u64), (String, u64))> = Vec::new();
    for (sg, commits) in status.send_groups.iter().zip(&graph.commits) {
        let lane = lanes.entry(sg.owner.clone()).or_default();
        let skip = options.last.map_or(0, |n| commits.len().saturating_sub(n));
        for c in commits.iter().skip(skip) {
            let entry = lane.entry(c.epoch).or_default();
            entry.1 = true;
            if !c.removed.is_empty() {
                entry.0.push(format!("removed {}", c.removed.join(", ")));
            }
            for p in &c.imports {
                imports.push(((owner_of(p), p.epoch), (sg.owner.clone(), c.epoch)));
            }
        }
        if let Some(e) = sg.epoch {
            lane.entry(e).or_default().0.push("current".into());
        }
    }
    // Imported epochs are nodes of their lanes too, whether or not we saw their commit.
    for ((owner, epoch), _) in &imports {
        lanes
            .entry(owner.clone())
            .or_default()
            .entry(*epoch)
            .or_default();
    }

    // Waiting messages and the epochs they wait for.
    let mut waits: Vec<Wait> = Vec::new();
    for sg in &status.send_groups {
        for (i, w) in sg.waiting.iter().enumerate() {
            let kind = if w.is_commit { "commit" } else { "message" };
            let (needs, from) = match &w.waits_for {
                WaitReason::Epoch(e) => (format!("needs epoch {e}"), Some((sg.owner.clone(), *e))),
                WaitReason::Psk(p) => {
                    let owner = owner_of(p);
                    (
                        format!("needs {owner}'s epoch {}", p.epoch),
                        Some((owner, p.epoch)),
                    )
                }
                WaitReason::Welcome => ("needs the Welcome".into(), None),
                WaitReason::Proposal(e) => (format!("needs a proposal of epoch {e}"), None),
                WaitReason::Commit(e) => (format!("waits for a commit of epoch {e}"), None),
                WaitReason::Stopped => ("beyond the removal; kept".into(), None),
            };
            if let Some((owner, epoch)) = &from {
                lanes
                    .entry(owner.clone())
                    .or_default()
                    .entry(*epoch)
                    .or_default();
            }
            waits.push(Wait {
                lane: sg.owner.clone(),
                id: format!("waiting {}#{i}", sg.owner),
                label: format!("waiting {kind}\nof epoch {}\n{needs}", w.epoch),
                from,
            });
        }
    }

    let mut out = String::new();
    let title = format!(
        "group {} ({}){}",
        summary.name,
        dgroup_hex(&summary.id).chars().take(8).collect::<String>(),
        if summary.we_are_removed {
            ", you were removed"
        } else {
            ""
        }
    );
    let _ = writeln!(out, "digraph dmls {{");
    let _ = writeln!(out, "  rankdir=LR;");
    let _ = writeln!(out, "  label={};", quote(&title));
    let _ = writeln!(out, "  labelloc=t;");
    let _ = writeln!(out, "  node [shape=box, fontname=monospace];");
    for (i, sg) in status.send_groups.iter().enumerate() {
        let removed = summary.removed.contains(&sg.owner);
        let mut label = format!("{}'s Send Group", sg.owner);
        if removed {
            label.push_str(" (removed)");
        }
        if !sg.joined {
            label.push_str(" (not joined: no Welcome yet)");
        }
        if sg.behind_since_ms.is_some() {
            label.push_str(" (behind)");
        }
        let _ = writeln!(out, "  subgraph cluster_{i} {{");
        let _ = writeln!(out, "    label={};", quote(&label));
        if removed {
            let _ = writeln!(out, "    style=dashed; color=grey; fontcolor=grey;");
        }
        let lane = lanes.get(&sg.owner);
        let mut previous: Option<u64> = None;
        for (epoch, (notes, seen_commit)) in lane.into_iter().flatten() {
            let mut label = format!("epoch {epoch}");
            for n in notes {
                label.push('\n');
                label.push_str(n);
            }
            let mut attrs = format!("label={}", quote(&label));
            if notes.iter().any(|n| n.starts_with("removed ")) {
                attrs.push_str(", color=red");
            }
            if !seen_commit {
                attrs.push_str(", style=dotted");
            }
            let _ = writeln!(
                out,
                "    {} [{attrs}];",
                quote(&epoch_node(&sg.owner, *epoch))
            );
            if let Some(p) = previous {
                let style = if *epoch == p + 1 {
                    "color=grey"
                } else {
                    "color=grey, style=dotted"
                };
                let _ = writeln!(
                    out,
                    "    {} -> {} [{style}];",
                    quote(&epoch_node(&sg.owner, p)),
                    quote(&epoch_node(&sg.owner, *epoch))
                );
            }
            previous = Some(*epoch);
        }
        for w in waits.iter().filter(|w| w.lane == sg.owner) {
            let _ = writeln!(
                out,
                "    {} [label={}, color=red, fontcolor=red, style=filled, fillcolor=mistyrose];",
                quote(&w.id),
                quote(&w.label)
            );
        }
        if !sg.joined && lane.is_none_or(BTreeMap::is_empty) {
            // An empty cluster is not drawn: one placeholder node keeps the lane visible.
            let _ = writeln!(
                out,
                "    {} [label=\"not joined\", style=dotted];",
                quote(&format!("{} (not joined)", sg.owner))
            );
        }
        let _ = writeln!(out, "  }}");
    }
    // Lanes of imported epochs whose owner is not a member we know (should not happen).
    for (owner, lane) in &lanes {
        if status.send_groups.iter().any(|sg| &sg.owner == owner) {
            continue;
        }
        for epoch in lane.keys() {
            let _ = writeln!(
                out,
                "  {} [label={}, style=dotted];",
                quote(&epoch_node(owner, *epoch)),
                quote(&format!("{owner}\nepoch {epoch}"))
            );
        }
    }
    let edges: BTreeSet<(String, String)> = imports
        .into_iter()
        .map(|((from, e), (to, c))| (epoch_node(&from, e), epoch_node(&to, c)))
        .collect();
    for (from, to) in &edges {
        let _ = writeln!(
            out,
            "  {} -> {} [color=blue, label=\"import\", fontcolor=blue];",
            quote(from),
            quote(to)
        );
    }
    for w in &waits {
        if let Some((owner, epoch)) = &w.from {
            let _ = writeln!(
                out,
                "  {} -> {} [color=red, style=dashed, label=\"waits for\", fontcolor=red];",
                quote(&epoch_node(owner, *epoch)),
                quote(&w.id)
            );
        }
    }
    let _ = writeln!(out, "}}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{
        DGroupId, DGroupStatus, DGroupSummary, GraphCommit, SendGroupStatus, WaitingMessage,
        send_group_id,
    };

    fn lane(d: &DGroupId, owner: &str, epoch: u64) -> SendGroupStatus {
        SendGroupStatus {
            owner: owner.into(),
            group_id: hex::encode(send_group_id(d, owner)),
            joined: true,
            epoch: Some(epoch),
            members: vec![],
            epoch_authenticator: None,
            after_seq: 0,
            waiting: vec![],
            psk_deletion_holders: vec![],
            behind_since_ms: None,
            last_resort_leaf: false,
        }
    }

    #[test]
    fn draws_lanes_imports_waits_and_removals() {
        let d = DGroupId([1; 16]);
        let mut bob = lane(&d, "bob", 2);
        bob.waiting.push(WaitingMessage {
            epoch: 2,
            is_commit: true,
            waits_for: WaitReason::Psk(PskId {
                epoch: 4,
                group_id: send_group_id(&d, "alice"),
            }),
        });
        let graph = DGroupGraph {
            status: DGroupStatus {
                summary: DGroupSummary {
                    id: d,
                    name: "we \"quote\"".into(),
                    renamed_by: None,
                    members: vec!["alice".into(), "bob".into(), "carol".into()],
                    removed: vec!["carol".into()],
                    we_are_removed: false,
                    left_ms: None,
                    add_policy: Default::default(),
                },
                send_groups: vec![lane(&d, "alice", 3), bob, lane(&d, "carol", 1)],
                pending_removals: vec![],
                pending_adds: vec![],
                held_welcomes: 0,
                unimported: vec![],
                key_mismatches: vec![],
                unverified: vec![],
                key_changes: vec![],
            },
            commits: vec![
                vec![
                    GraphCommit {
                        epoch: 2,
                        imports: vec![],
                        removed: vec![],
                    },
                    GraphCommit {
                        epoch: 3,
                        imports: vec![PskId {
                            epoch: 1,
                            group_id: send_group_id(&d, "bob"),
                        }],
                        removed: vec!["carol".into()],
                    },
                ],
                vec![],
                vec![],
            ],
        };
        let dot = to_dot(&graph, &GraphOptions { last: None });
        assert!(
            dot.contains(r#"label="group we \"quote\" (01010101)";"#),
            "{dot}"
        );
        assert!(
            dot.contains("\"bob@1\" -> \"alice@3\" [color=blue"),
            "{dot}"
        );
        assert!(dot.contains("removed carol"), "{dot}");
        assert!(dot.contains("carol's Send Group (removed)"), "{dot}");
        assert!(
            dot.contains("\"alice@4\" -> \"waiting bob#0\" [color=red"),
            "{dot}"
        );
        assert!(
            dot.contains("\"alice@2\" -> \"alice@3\" [color=grey]"),
            "{dot}"
        );
        // --last 1 keeps alice's latest commit only (epoch 2 is gone).
        let dot = to_dot(&graph, &GraphOptions { last: Some(1) });
        assert!(!dot.contains("\"alice@2\""), "{dot}");
        assert!(dot.contains("\"bob@1\" -> \"alice@3\""), "{dot}");
    }
}
