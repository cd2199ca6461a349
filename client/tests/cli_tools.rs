//! The real `dmls` binary's tools around the chat: shell completions, the man page, and
//! `dmls graph` on a group of three with updates and a removal (relay in this process on
//! 127.0.0.1), whose DOT output is parsed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use graphviz_rust::dot_structures::{
    Attribute, EdgeTy, Graph, GraphAttributes, Id, Node, NodeId, Stmt, Vertex,
};
use serde_json::Value;

mod support;

use support::run;

async fn ok_text(home: &Path, args: &[&str]) -> String {
    let out = run(home, args).await;
    assert!(
        out.status.success(),
        "dmls {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn ok_json(home: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    serde_json::from_str(&ok_text(home, &all).await).unwrap()
}

const SUBCOMMANDS: &[&str] = &[
    "init",
    "group",
    "groups",
    "sync",
    "send",
    "log",
    "update",
    "remove",
    "status",
    "chat",
    "graph",
    "completions",
    "man",
];

#[tokio::test]
async fn completions_name_every_subcommand() {
    let home = tempfile::tempdir().unwrap();
    let bash = ok_text(home.path(), &["completions", "bash"]).await;
    assert!(bash.contains("complete -F _dmls"), "{bash}");
    for s in SUBCOMMANDS {
        assert!(bash.contains(&format!("dmls,{s})")), "bash misses {s}");
    }
    let zsh = ok_text(home.path(), &["completions", "zsh"]).await;
    assert!(zsh.starts_with("#compdef dmls"), "{zsh}");
    let fish = ok_text(home.path(), &["completions", "fish"]).await;
    for s in SUBCOMMANDS {
        assert!(fish.contains(&format!("-a \"{s}\"")), "fish misses {s}");
    }
    let out = run(home.path(), &["completions", "tcsh"]).await;
    assert!(!out.status.success());
    // Nothing was created in the home directory.
    assert_eq!(std::fs::read_dir(home.path()).unwrap().count(), 0);
}

#[tokio::test]
async fn the_man_page_has_a_synopsis_and_every_subcommand() {
    let home = tempfile::tempdir().unwrap();
    let man = ok_text(home.path(), &["man"]).await;
    assert!(man.contains(".TH dmls 1"), "{man}");
    assert!(man.contains(".SH NAME"), "{man}");
    assert!(man.contains(".SH SYNOPSIS"), "{man}");
    assert!(man.contains(".SH SUBCOMMANDS"), "{man}");
    for s in SUBCOMMANDS {
        assert!(
            man.contains(&format!("dmls\\-{s}(1)")),
            "man page misses {s}"
        );
    }
    // One page per command, the chat's with its explanation.
    let dir = home.path().join("man1");
    ok_text(home.path(), &["man", "--dir", dir.to_str().unwrap()]).await;
    for s in SUBCOMMANDS {
        assert!(dir.join(format!("dmls-{s}.1")).exists(), "no page for {s}");
    }
    let chat = std::fs::read_to_string(dir.join("dmls-chat.1")).unwrap();
    assert!(
        chat.contains(".SH SYNOPSIS") && chat.contains("/remove NAME"),
        "{chat}"
    );
}

/// A parsed DOT graph, flattened: clusters with their labels and nodes, all edges.
#[derive(Debug, Default)]
struct Dot {
    /// cluster label -> node ids
    lanes: BTreeMap<String, BTreeSet<String>>,
    /// node id -> label
    labels: BTreeMap<String, String>,
    /// (from, to, label)
    edges: Vec<(String, String, String)>,
}

fn id_text(id: &Id) -> String {
    match id {
        Id::Escaped(s) => s
            .trim_matches('"')
            .replace("\\\"", "\"")
            .replace("\\n", "\n"),
        Id::Plain(s) | Id::Html(s) | Id::Anonymous(s) => s.clone(),
    }
}

fn node_id(v: &Vertex) -> String {
    match v {
        Vertex::N(NodeId(id, _)) => id_text(id),
        Vertex::S(_) => panic!("an edge to a subgraph"),
    }
}

fn attr(attrs: &[Attribute], name: &str) -> String {
    attrs
        .iter()
        .find(|Attribute(k, _)| id_text(k) == name)
        .map(|Attribute(_, v)| id_text(v))
        .unwrap_or_default()
}

fn flatten(stmts: &[Stmt], lane: Option<&str>, dot: &mut Dot) {
    for s in stmts {
        match s {
            Stmt::Subgraph(sub) => {
                let label = sub
                    .stmts
                    .iter()
                    .find_map(|s| match s {
                        Stmt::Attribute(Attribute(k, v)) if id_text(k) == "label" => {
                            Some(id_text(v))
                        }
                        Stmt::GAttribute(GraphAttributes::Graph(a)) => {
                            Some(attr(a, "label")).filter(|l| !l.is_empty())
                        }
                        _ => None,
                    })
                    .expect("every lane has a label");
                dot.lanes.entry(label.clone()).or_default();
                flatten(&sub.stmts, Some(&label), dot);
            }
            Stmt::Node(Node {
                id: NodeId(id, _),
                attributes,
            }) => {
                let id = id_text(id);
                if let Some(l) = lane {
                    dot.lanes
                        .entry(l.to_string())
                        .or_default()
                        .insert(id.clone());
                }
                dot.labels.insert(id, attr(attributes, "label"));
            }
            Stmt::Edge(e) => match &e.ty {
                EdgeTy::Pair(a, b) => {
                    dot.edges
                        .push((node_id(a), node_id(b), attr(&e.attributes, "label")));
                }
                EdgeTy::Chain(vs) => {
                    for w in vs.windows(2) {
                        dot.edges.push((
                            node_id(&w[0]),
                            node_id(&w[1]),
                            attr(&e.attributes, "label"),
                        ));
                    }
                }
            },
            _ => {}
        }
    }
}

fn parse_dot(text: &str) -> Dot {
    let graph = graphviz_rust::parse(text).unwrap_or_else(|e| panic!("not DOT ({e}):\n{text}"));
    let Graph::DiGraph { stmts, .. } = graph else {
        panic!("not a digraph:\n{text}");
    };
    let mut dot = Dot::default();
    flatten(&stmts, None, &mut dot);
    dot
}

fn epoch_of(node: &str, owner: &str) -> Option<u64> {
    node.strip_prefix(&format!("{owner}@"))?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_of_three_members_with_updates_and_a_removal() {
    let relay_dir = tempfile::tempdir().unwrap();
    let relay = dmls_relay::testing::start_sqlite_relay(relay_dir.path())
        .await
        .unwrap();
    let url = relay.url();
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for (home, name) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        ok_json(home, &["init", "--relay", &url, "--name", name]).await;
    }
    ok_json(&a, &["group", "create", "friends", "bob", "carol"]).await;
    let sync_all = || async {
        for _ in 0..2 {
            for home in [&a, &b, &c] {
                ok_json(home, &["sync", "--evict-after-days", "0"]).await;
            }
        }
    };
    sync_all().await;
    ok_json(&b, &["update", "friends"]).await;
    ok_json(&c, &["update", "friends"]).await;
    sync_all().await;
    // Alice's update imports bob's and carol's new epochs.
    ok_json(&a, &["update", "friends"]).await;
    sync_all().await;
    ok_json(&b, &["update", "friends"]).await;
    ok_json(&a, &["remove", "friends", "carol"]).await;
    sync_all().await;

    let text = ok_text(&a, &["graph", "friends"]).await;
    let dot = parse_dot(&text);
    // One lane per member, named after them; carol's says she was removed.
    assert_eq!(dot.lanes.len(), 3, "{text}");
    let lane_of = |owner: &str| {
        let prefix = format!("{owner}'s Send Group");
        let (label, nodes) = dot
            .lanes
            .iter()
            .find(|(label, _)| label.starts_with(&prefix))
            .unwrap_or_else(|| panic!("no lane of {owner}: {text}"));
        (label.clone(), nodes.clone())
    };
    for owner in ["alice", "bob", "carol"] {
        let (label, nodes) = lane_of(owner);
        assert_eq!(label.contains("(removed)"), owner == "carol", "{label}");
        assert!(!nodes.is_empty(), "{text}");
        assert!(
            nodes.iter().all(|n| epoch_of(n, owner).is_some()),
            "{label}: {nodes:?}"
        );
    }
    let imports: Vec<&(String, String, String)> =
        dot.edges.iter().filter(|e| e.2 == "import").collect();
    // Alice's update imported an epoch of bob's and of carol's Send Group.
    for owner in ["bob", "carol"] {
        assert!(
            imports
                .iter()
                .any(|(from, to, _)| epoch_of(from, owner).is_some()
                    && epoch_of(to, "alice").is_some()),
            "no import of {owner}'s epoch by alice: {text}"
        );
    }
    // Bob's second update imported alice's epoch of her update.
    assert!(
        imports.iter().any(|(from, to, _)| epoch_of(from, "alice").is_some()
            && epoch_of(to, "bob").is_some()),
        "{text}"
    );
    // Every import edge joins nodes of two different lanes, both drawn.
    for (from, to, _) in &imports {
        assert!(
            dot.labels.contains_key(from) && dot.labels.contains_key(to),
            "{text}"
        );
        assert_ne!(from.split('@').next(), to.split('@').next(), "{text}");
    }
    // Alice's commit that removed carol says so.
    assert!(
        lane_of("alice")
            .1
            .iter()
            .any(|n| dot.labels[n].contains("removed carol")),
        "{text}"
    );
    // --last 1 keeps one commit per lane (plus the epochs they imported).
    let last = parse_dot(&ok_text(&a, &["graph", "friends", "--last", "1"]).await);
    assert!(last.edges.iter().filter(|e| e.2 == "import").count() < imports.len());

    // SVG is refused with the way to get it.
    let out = run(&a, &["graph", "friends", "--format", "svg"]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("dot -Tsvg"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn chat_without_a_terminal_says_so_and_fails() {
    let home = tempfile::tempdir().unwrap();
    // `output()` pipes standard output: not a terminal.
    let out = run(home.path(), &["chat", "room"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("needs a terminal"), "{stderr}");
    assert!(stderr.contains("dmls sync --follow"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing drawn on a pipe");
}
