//! Finds where a key path (`clusters.payment.endpoints[1].address`) sits in the YAML text.
//!
//! serde_yaml reports positions for syntax and type errors, but the semantic checks run on
//! deserialized structs that no longer know where they came from. Rather than thread spans
//! through every struct, we parse the text a second time with a marked event parser and keep a
//! small tree of node positions; validation asks it for the line and column of a path.

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// Formats a key path the way errors print it: `a.b[2].c`.
pub fn path_string(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

#[derive(Debug)]
enum Node {
    Map(Vec<(String, (usize, usize), Node)>),
    Seq(Vec<Node>),
    Scalar,
}

#[derive(Debug)]
struct Located {
    pos: (usize, usize),
    node: Node,
}

enum Frame {
    Map { pos: (usize, usize), entries: Vec<(String, (usize, usize), Node)>, key: Option<(String, (usize, usize))> },
    Seq { pos: (usize, usize), items: Vec<Node> },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    root: Option<Located>,
}

fn pos_of(m: Marker) -> (usize, usize) {
    // yaml-rust2 lines are 1-based and columns 0-based.
    (m.line(), m.col() + 1)
}

impl Builder {
    fn push_value(&mut self, pos: (usize, usize), node: Node, key_text: Option<String>) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(Located { pos, node });
                }
            }
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some((k, kpos)) => entries.push((k, kpos, node)),
                None => *key = Some((key_text.unwrap_or_default(), pos)),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = pos_of(mark);
        match ev {
            Event::MappingStart(..) => self.stack.push(Frame::Map { pos, entries: Vec::new(), key: None }),
            Event::SequenceStart(..) => self.stack.push(Frame::Seq { pos, items: Vec::new() }),
            Event::MappingEnd => {
                if let Some(Frame::Map { pos, entries, .. }) = self.stack.pop() {
                    self.finish(pos, Node::Map(entries));
                }
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq { pos, items }) = self.stack.pop() {
                    self.finish(pos, Node::Seq(items));
                }
            }
            Event::Scalar(text, ..) => self.push_value(pos, Node::Scalar, Some(text)),
            Event::Alias(_) => self.push_value(pos, Node::Scalar, Some(String::new())),
            _ => {}
        }
    }
}

impl Builder {
    fn finish(&mut self, pos: (usize, usize), node: Node) {
        match self.stack.last_mut() {
            None => self.root = Some(Located { pos, node }),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some((k, kpos)) => entries.push((k, kpos, node)),
                // A complex (non-scalar) key: record it so the value that follows pairs up.
                None => *key = Some((String::new(), pos)),
            },
        }
    }
}

/// Positions of every key in one YAML document.
pub struct Locator {
    root: Option<Located>,
}

impl Locator {
    /// Parses `text`; if it is not valid YAML, every lookup answers `None`.
    pub fn new(text: &str) -> Locator {
        let mut b = Builder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut b, false).is_err() {
            return Locator { root: None };
        }
        Locator { root: b.root }
    }

    /// Line and column (both 1-based) of the deepest part of `path` that exists: the key itself
    /// when it is present, else its nearest present ancestor.
    pub fn locate(&self, path: &[Seg]) -> Option<(usize, usize)> {
        let root = self.root.as_ref()?;
        let mut node = &root.node;
        let mut best = root.pos;
        for seg in path {
            match (seg, node) {
                (Seg::Key(k), Node::Map(entries)) => match entries.iter().find(|(name, _, _)| name == k) {
                    Some((_, kpos, child)) => {
                        best = *kpos;
                        node = child;
                    }
                    None => return Some(best),
                },
                (Seg::Index(i), Node::Seq(items)) => match items.get(*i) {
                    Some(child) => {
                        best = first_pos(child).unwrap_or(best);
                        node = child;
                    }
                    None => return Some(best),
                },
                _ => return Some(best),
            }
        }
        Some(best)
    }
}

impl Locator {
    /// Keys that appear twice in one mapping, with the path and position of the second one.
    /// serde would silently keep the last; a duplicated cluster is almost always a paste error.
    pub fn duplicate_keys(&self) -> Vec<(Vec<Seg>, (usize, usize))> {
        let mut out = Vec::new();
        if let Some(root) = &self.root {
            collect_duplicates(&root.node, &mut Vec::new(), &mut out);
        }
        out
    }
}

fn collect_duplicates(node: &Node, path: &mut Vec<Seg>, out: &mut Vec<(Vec<Seg>, (usize, usize))>) {
    match node {
        Node::Map(entries) => {
            for (i, (key, pos, child)) in entries.iter().enumerate() {
                path.push(Seg::Key(key.clone()));
                if entries[..i].iter().any(|(k, _, _)| k == key) {
                    out.push((path.clone(), *pos));
                }
                collect_duplicates(child, path, out);
                path.pop();
            }
        }
        Node::Seq(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                collect_duplicates(child, path, out);
                path.pop();
            }
        }
        Node::Scalar => {}
    }
}

fn first_pos(node: &Node) -> Option<(usize, usize)> {
    match node {
        Node::Map(entries) => entries.first().map(|(_, p, _)| *p),
        Node::Seq(items) => items.first().and_then(first_pos),
        Node::Scalar => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }

    #[test]
    fn finds_nested_keys_and_items() {
        let text = "listen: 1\nclusters:\n  payment:\n    endpoints:\n      - address: a\n      - address: b\n        priority: 1\n";
        let loc = Locator::new(text);
        assert_eq!(loc.locate(&[k("listen")]), Some((1, 1)));
        assert_eq!(loc.locate(&[k("clusters"), k("payment")]), Some((3, 3)));
        let p = [k("clusters"), k("payment"), k("endpoints"), Seg::Index(1), k("priority")];
        assert_eq!(loc.locate(&p), Some((7, 9)));
        // Missing key: nearest ancestor.
        let p = [k("clusters"), k("payment"), k("breaker")];
        assert_eq!(loc.locate(&p), Some((3, 3)));
        assert_eq!(path_string(&[k("a"), Seg::Index(2), k("b")]), "a[2].b");
    }

    #[test]
    fn duplicate_keys_are_found() {
        let loc = Locator::new("clusters:\n  a: 1\n  b: 2\n  a: 3\n");
        let dups = loc.duplicate_keys();
        assert_eq!(dups, vec![(vec![k("clusters"), k("a")], (4, 3))]);
    }

    #[test]
    fn flow_style() {
        let loc = Locator::new("routes:\n  - { match: { path_prefix: /auth/ }, cluster: auth }\n");
        assert_eq!(loc.locate(&[k("routes"), Seg::Index(0), k("cluster")]), Some((2, 39)));
    }
}
