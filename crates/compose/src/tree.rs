//! A compose file as a tree of nodes that remember their line, from yaml-rust2's event parser:
//! the typed model (docker-compose-types, through serde) knows no lines, and every error a user
//! gets names the line of the file it is about. Aliases are expanded and merge keys (`<<`)
//! applied here, as the compose specification says, before anything looks at the keys.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::{Error, Result};

/// Bounds on what a file may make of itself through aliases (a "billion laughs" file).
const MAX_NODES: usize = 1_000_000;
const MAX_DEPTH: usize = 64;
/// Bytes of scalars a file may make of itself through aliases (a short file that repeats a large
/// value a million times).
const MAX_BYTES: usize = 64 << 20;

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// A scalar, its text, and whether it was written plain (unquoted: its type is resolved from
    /// the text, as YAML's core schema says).
    Scalar {
        text: String,
        plain: bool,
        line: usize,
    },
    Seq {
        items: Vec<Node>,
        line: usize,
    },
    /// Keys in the file's order.
    Map {
        entries: Vec<(String, Node)>,
        line: usize,
    },
}

impl Node {
    pub fn line(&self) -> usize {
        match self {
            Node::Scalar { line, .. } | Node::Seq { line, .. } | Node::Map { line, .. } => *line,
        }
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        match self {
            Node::Map { entries, .. } => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn entries(&self) -> &[(String, Node)] {
        match self {
            Node::Map { entries, .. } => entries,
            _ => &[],
        }
    }

    pub fn items(&self) -> &[Node] {
        match self {
            Node::Seq { items, .. } => items,
            _ => &[],
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Node::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// (nodes, scalar bytes, depth) of this subtree.
    fn size(&self) -> (usize, usize, usize) {
        match self {
            Node::Scalar { text, .. } => (1, text.len(), 1),
            Node::Seq { items, .. } => items
                .iter()
                .map(Node::size)
                .fold((1, 0, 1), |a, b| (a.0 + b.0, a.1 + b.1, a.2.max(b.2 + 1))),
            Node::Map { entries, .. } => entries
                .iter()
                .map(|(k, v)| {
                    let s = v.size();
                    (s.0, s.1 + k.len(), s.2)
                })
                .fold((1, 0, 1), |a, b| (a.0 + b.0, a.1 + b.1, a.2.max(b.2 + 1))),
        }
    }
}

enum Frame {
    Seq(Vec<Node>, usize, usize),
    /// Entries (and whether each came from a merge), a key waiting for its value, line, anchor.
    Map(
        Vec<(String, Node, bool)>,
        Option<Node>,
        usize,
        usize,
        std::collections::HashMap<String, usize>,
    ),
}

struct Builder {
    stack: Vec<Frame>,
    /// Each anchor's node, and its (nodes, scalar bytes, depth).
    anchors: HashMap<usize, (Node, (usize, usize, usize))>,
    docs: Vec<Node>,
    error: Option<Error>,
    nodes: usize,
    bytes: usize,
}

impl Builder {
    fn fail(&mut self, line: usize, msg: String) {
        if self.error.is_none() {
            self.error = Some(Error::at(line, msg));
        }
    }

    fn push(&mut self, node: Node, anchor: usize) {
        if self.error.is_some() {
            return;
        }
        if anchor > 0 {
            let n = node.size();
            self.anchors.insert(anchor, (node.clone(), n));
        }
        match self.stack.last_mut() {
            None => self.docs.push(node),
            Some(Frame::Seq(items, _, _)) => items.push(node),
            Some(Frame::Map(entries, key, _, _, index)) => match key.take() {
                None => match node {
                    Node::Scalar { text, line, .. } => *key = Some(Node::Scalar { text, plain: true, line }),
                    other => {
                        let line = other.line();
                        self.fail(line, "a key that is not a plain value".into());
                    }
                },
                Some(Node::Scalar {
                    text: k, line: key_line, ..
                }) => {
                    // A mapping or a list under a key is "at" the key's line (its first entry
                    // may be on the next).
                    let mut node = node;
                    if let Node::Map { line, .. } | Node::Seq { line, .. } = &mut node {
                        *line = key_line;
                    }
                    if k == "<<" {
                        // Merge keys: the keys of the mapping(s) given, unless already here.
                        let sources = match node {
                            Node::Map { .. } => vec![node],
                            Node::Seq { items, .. } => items,
                            other => {
                                let line = other.line();
                                return self.fail(line, "`<<` merges only mappings".into());
                            }
                        };
                        for src in sources {
                            match src {
                                Node::Map { entries: more, .. } => {
                                    for (mk, mv) in more {
                                        if !index.contains_key(&mk) {
                                            index.insert(mk.clone(), entries.len());
                                            entries.push((mk, mv, true));
                                        }
                                    }
                                }
                                other => {
                                    let line = other.line();
                                    return self.fail(line, "`<<` merges only mappings".into());
                                }
                            }
                        }
                    } else if let Some(&i) = index.get(&k) {
                        if entries[i].2 {
                            // One that came from a merge is overridden, as the specification says.
                            entries[i] = (k, node, false);
                        } else {
                            // A key given twice: one of them would silently win.
                            let line = node.line();
                            self.fail(line, format!("key {k:?} given twice"));
                        }
                    } else {
                        index.insert(k.clone(), entries.len());
                        entries.push((k, node, false));
                    }
                }
                Some(_) => unreachable!("keys are scalars"),
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        let line = mark.line();
        match ev {
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) if self.stack.len() >= MAX_DEPTH => {
                let _ = anchor;
                self.fail(line, format!("nested more than {MAX_DEPTH} levels deep"));
            }
            Event::SequenceStart(anchor, _) => {
                self.nodes += 1;
                self.stack.push(Frame::Seq(Vec::new(), line, anchor))
            }
            Event::MappingStart(anchor, _) => {
                self.nodes += 1;
                self.stack
                    .push(Frame::Map(Vec::new(), None, line, anchor, std::collections::HashMap::new()))
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, l, a)) = self.stack.pop() {
                    self.push(Node::Seq { items, line: l }, a);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, l, a, _)) = self.stack.pop() {
                    let entries = entries.into_iter().map(|(k, v, _)| (k, v)).collect();
                    self.push(Node::Map { entries, line: l }, a);
                }
            }
            Event::Scalar(text, style, anchor, _tag) => {
                self.nodes += 1;
                self.bytes += text.len();
                let plain = style == TScalarStyle::Plain;
                self.push(Node::Scalar { text, plain, line }, anchor)
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some((_, (n, b, _))) if self.nodes + n > MAX_NODES || self.bytes + b > MAX_BYTES => self.fail(
                    line,
                    format!(
                        "more than {MAX_NODES} values or {} MiB (aliases that expand without end?)",
                        MAX_BYTES >> 20
                    ),
                ),
                Some((_, (_, _, d))) if self.stack.len() + d > MAX_DEPTH => {
                    self.fail(line, format!("nested more than {MAX_DEPTH} levels deep (through an alias)"))
                }
                Some((node, (n, b, _))) => {
                    let (node, n, b) = (node.clone(), *n, *b);
                    self.nodes += n;
                    self.bytes += b;
                    self.push(node, 0)
                }
                None => self.fail(line, "an alias to an anchor not defined before it".into()),
            },
            _ => {}
        }
    }
}

/// Parses `text` (one YAML document) into a tree.
pub fn parse(text: &str) -> Result<Node> {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        docs: Vec::new(),
        error: None,
        nodes: 0,
        bytes: 0,
    };
    let mut parser = Parser::new_from_str(text);
    if let Err(e) = parser.load(&mut b, true) {
        return Err(Error::at(e.marker().line(), e.info().to_owned()));
    }
    if let Some(e) = b.error {
        return Err(e);
    }
    match b.docs.len() {
        0 => Err(Error::at(1, "the file is empty".into())),
        1 => Ok(b.docs.pop().expect("one")),
        _ => Err(Error::at(1, "more than one YAML document".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_merges_and_aliases() {
        let t =
            parse("x-base: &base\n  image: busybox\n  read_only: true\nservices:\n  web:\n    <<: *base\n    read_only: false\n").unwrap();
        let web = t.get("services").unwrap().get("web").unwrap();
        assert_eq!(web.line(), 5);
        assert_eq!(web.get("image").unwrap().as_str(), Some("busybox"));
        assert_eq!(web.get("read_only").unwrap().as_str(), Some("false"));
        assert_eq!(web.get("read_only").unwrap().line(), 7);
    }

    #[test]
    fn bad_files_fail_with_a_line() {
        for (text, line) in [("a: 1\na: 2\n", 2), ("a: [1,\n", 2), ("a: *nope\n", 1), ("a: &x [*x]\n", 1)] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line(), Some(line), "{text:?}: {e}");
        }
        assert!(parse("").is_err());
        assert!(parse("a: 1\n---\nb: 2\n").is_err());
        // Laughs: 10 levels of 10 aliases each.
        let mut t = String::from("a0: &a0 [x,x,x,x,x,x,x,x,x,x]\n");
        for i in 1..10 {
            let p = i - 1;
            t.push_str(&format!(
                "a{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"
            ));
        }
        assert!(parse(&t).unwrap_err().to_string().contains("values"));
        // A large value repeated (bytes, not nodes): 2 MiB x 40.
        let big = "x".repeat(2 << 20);
        let t = format!("a: &a \"{big}\"\nb: [{}]\n", vec!["*a"; 40].join(","));
        assert!(parse(&t).unwrap_err().to_string().contains("MiB"));
        // Depth through aliases: 8 anchors each nesting the last 10 deep.
        let mut t = String::from("a0: &a0 x\n");
        for i in 1..9 {
            t.push_str(&format!("a{i}: &a{i} {}*a{}{}\n", "[".repeat(10), i - 1, "]".repeat(10)));
        }
        assert!(parse(&t).unwrap_err().to_string().contains("deep"));
    }
}
