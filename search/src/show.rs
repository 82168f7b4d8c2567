//! A tree as indented text (`orchard tree show`).

use std::fmt::Write;

use crate::tree::{NodeId, Tree};

/// Renders `tree` one node per line, children indented under their parent: id, kind, visits, Q, critic, reward
/// and the node's text (newlines shown as `⏎`, cut to `width` characters).
pub fn render(tree: &Tree, width: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "task {} ({} nodes)", tree.task_id, tree.nodes.len());
    let _ = writeln!(out, "prompt: {}", one_line(tree.prompt(), width));
    if let Some(a) = tree.root().execution.as_ref().and_then(|e| e.answer.as_deref()) {
        let _ = writeln!(out, "majority vote: {a}");
    }
    for &c in &tree.root().children {
        node(tree, c, 1, width, &mut out);
    }
    out
}

fn node(tree: &Tree, id: NodeId, indent: usize, width: usize, out: &mut String) {
    let n = &tree.nodes[id];
    let mut facts = format!("#{id} {} N={} Q={:.3}", n.kind.as_str(), n.visits, n.q);
    if let Some(c) = n.critic {
        let _ = write!(facts, " critic={c:.3}");
    }
    if let Some(v) = &n.verdict {
        match &v.error {
            Some(e) => {
                let _ = write!(facts, " FAILED({})", one_line(e, 60));
            }
            None => {
                let _ = write!(facts, " reward={:.3}", v.score);
            }
        }
    }
    if let Some(e) = &n.execution {
        let _ = write!(facts, " exec={}", if e.ok { "ok" } else { "failed" });
    }
    let _ = writeln!(out, "{}{facts}: {}", "  ".repeat(indent), one_line(&n.text, width));
    for &c in &n.children {
        node(tree, c, indent + 1, width, out);
    }
}

fn one_line(s: &str, width: usize) -> String {
    let flat = s.replace('\n', "⏎");
    let mut cut: String = flat.chars().take(width).collect();
    if flat.chars().count() > width {
        cut.push('…');
    }
    cut
}
