//! Parser and evaluator for the Amazon ECS *cluster query language*.
//!
//! The language is used by `memberOf` task placement constraints
//! (`"expression": "attribute:ecs.instance-type =~ t2.*"`) and by
//! `ListContainerInstances --filter`. An [`Expr`] is parsed once and then
//! evaluated against any number of container instances through the
//! [`Subject`] trait.
//!
//! # Syntax
//!
//! Sources: AWS *Amazon ECS Developer Guide*, "Cluster query language" /
//! "Create expressions to define container instances for Amazon ECS tasks"
//! (`cluster-query-language.html`), and "Amazon ECS task placement
//! constraints" (`task-placement-constraints.html`).
//!
//! ```text
//! expr       := or
//! or         := and { ("or" | "||") and }
//! and        := unary { ("and" | "&&") unary }
//! unary      := { "not" | "!" } primary
//! primary    := "(" expr ")" | comparison
//! comparison := subject operator [argument]
//! argument   := value | "[" value { "," value } "]"
//! value      := bare-word | 'single quoted' | "double quoted"
//! ```
//!
//! * Subjects: `agentConnected`, `agentVersion`, `attribute:<name>`,
//!   `ec2InstanceId`, `registeredAt`, `runningTasksCount`, `task:group`.
//!   Built-in subject names and the `attribute:` prefix are matched
//!   ASCII-case-insensitively; attribute names are case-sensitive and may
//!   contain letters, digits, `-`, `_`, `/`, `\` and `.` (1-128 characters,
//!   as the docs allow for attribute names).
//! * Operators (symbol and word forms are equivalent; words are
//!   case-insensitive): `==` `equals`, `!=` `not_equals`, `>` `greater_than`,
//!   `>=` `greater_than_equal`, `<` `less_than`, `<=` `less_than_equal`,
//!   `exists`, `!exists` `not_exists`, `in`, `!in` `not_in`, `=~` `matches`,
//!   `!~` `not_matches`.
//! * Valid operators per subject follow the docs: `agentConnected` and
//!   `ec2InstanceId` take `== != in !in =~ !~`; `agentVersion`,
//!   `registeredAt` and `runningTasksCount` take `== != > >= < <=`.
//!   The docs list none for `attribute:` (all twelve are accepted) nor for
//!   `task:group` (everything but the ordering operators is accepted).
//!   Any other combination is a [`ParseError`].
//! * `in` / `!in` require a bracketed list `[a, b, 'c d']` (at least one
//!   element). Other value operators take exactly one value; `exists` /
//!   `!exists` take none. Parentheses are only for grouping (the docs: "a
//!   single expression can't contain parentheses"), so `(a, b)` is not a list.
//! * Bare words consist of ASCII letters, digits and `. - _ : * / ? @ + \`.
//!   Anything else must be quoted. Inside quotes `\\`, `\'` and `\"` are
//!   escapes; any other backslash is kept literally.
//! * Compound expressions: `and`/`&&`, `or`/`||`, `not`/`!` (keywords are
//!   case-insensitive). `not` binds tightest, then `and`, then `or`.
//!   Whitespace (space, tab, CR, LF) is insignificant between tokens.
//! * `registeredAt` values: `2018-06-18T22:28:28+00:00`,
//!   `2018-06-18T22:28:28Z`, `2018-06-18T22:28:28` (UTC) and `2018-06-18`
//!   (the formats the docs list); an invalid calendar date is a ParseError.
//! * Limits: at most 2000 characters (the ECS limit on `expression`);
//!   parentheses and the logical tree may nest at most 32 levels, so hostile
//!   input cannot overflow the stack. Parsing never panics.
//!
//! # Semantics (choices where the docs are silent are marked *chosen*)
//!
//! * Missing attribute: every value operator is **false**, including `!=`,
//!   `!in` and `!~`; `exists` is false and `!exists` true. This follows the
//!   docs' example `attribute:stack != prod`, which "lists the instances with
//!   the custom attribute stack unless the value is prod". To include
//!   instances without the attribute use `not(attribute:stack == prod)`.
//! * `==`, `!=`, `in` on strings are exact, case-sensitive string comparisons
//!   ("String equality" in the docs). For `attribute:` ordering operators
//!   compare numerically when both sides are decimal numbers (`-1`, `2.5`),
//!   otherwise byte-wise lexicographically (*chosen*).
//! * `=~` / `!~`: a regular expression, as the docs say ("Java regular
//!   expression"), matched against the whole value (anchored). The syntax
//!   is `regex-lite`'s, which agrees with Java's for the usual patterns
//!   (`t2.*`, `g2\.(x|2x)large`); an invalid pattern is a parse error.
//!   Compiled patterns are cached per thread.
//! * `agentConnected` values are `true`/`false` (case-insensitive); `=~`
//!   matches the pattern against `"true"`/`"false"`.
//! * `agentVersion` compares dot-separated numeric versions, missing parts
//!   count as 0 (`1.14` == `1.14.0`). The instance's version is read from
//!   its leading `[0-9.]` run (so `1.14.5-dev` is 1.14.5); if that is empty,
//!   ordering operators are false and `==`/`!=` compare strings (*chosen*).
//! * `registeredAt` with a date-only value denotes the whole UTC day
//!   (*chosen*): `== 2018-06-18` is true for any time that day,
//!   `< 2018-06-18` means before that day, `<= 2018-06-18` up to its end,
//!   `> 2018-06-18` after its end. A full timestamp denotes that second.
//! * `task:group` is a set (*chosen*): `== g` means some task on the instance
//!   is in group `g`, `!= g` means none is, `in` means some task is in one of
//!   the groups, `!in` means none is, `=~`/`!~` likewise over
//!   [`Subject::task_groups`], `exists` means the instance runs any task.
//! * Parsing normalises the tree: nested `and`s/`or`s are flattened and
//!   double negation is removed, so [`Display`](std::fmt::Display) output
//!   parses back to an equal [`Expr`] (provided the rendering still fits in
//!   2000 characters; it can be longer than a terse input, e.g. `&&`).

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Maximum expression length in characters (the ECS limit).
pub const MAX_EXPRESSION_CHARS: usize = 2000;
/// Maximum nesting of parentheses and of the logical tree.
pub const MAX_NESTING_DEPTH: usize = 32;

const VALID_SUBJECTS: &str = "agentConnected, agentVersion, attribute:<name>, ec2InstanceId, \
                              registeredAt, runningTasksCount, task:group";

/// A parsed cluster query expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr(Node);

/// Why an expression failed to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset into the input where the problem was detected.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.position, self.message)
    }
}

impl std::error::Error for ParseError {}

/// One container instance, as seen by an expression.
pub trait Subject {
    /// Value of attribute `name`, `None` when the instance lacks it.
    fn attribute(&self, name: &str) -> Option<&str>;
    fn ec2_instance_id(&self) -> &str;
    fn agent_connected(&self) -> bool;
    fn agent_version(&self) -> &str;
    fn registered_at_unix_secs(&self) -> i64;
    fn running_tasks_count(&self) -> u64;
    /// True when any task on the instance belongs to `group`.
    fn has_task_group(&self, group: &str) -> bool;
    /// The groups of the tasks on the instance (used by `=~`, `!~`, `exists`).
    fn task_groups(&self) -> Vec<String>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Cmp(Cmp),
    Not(Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Cmp {
    subject: Subj,
    op: Op,
    arg: Arg,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Subj {
    AgentConnected,
    AgentVersion,
    Attribute(String),
    Ec2InstanceId,
    RegisteredAt,
    RunningTasksCount,
    TaskGroup,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Gt,
    Ge,
    Lt,
    Le,
    Exists,
    NotExists,
    In,
    NotIn,
    Matches,
    NotMatches,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Arg {
    None,
    One(Value),
    List(Vec<Value>),
}

/// A literal: its unquoted text (used for display and string comparisons)
/// plus the typed interpretation checked at parse time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Value {
    text: String,
    kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Str,
    Bool(bool),
    Int(u64),
    Version(Vec<u64>),
    /// Half-open interval `[start, end)` in unix seconds.
    Time {
        start: i64,
        end: i64,
    },
}

const ALL_OPS: [Op; 12] = [
    Op::Eq,
    Op::Ne,
    Op::Gt,
    Op::Ge,
    Op::Lt,
    Op::Le,
    Op::Exists,
    Op::NotExists,
    Op::In,
    Op::NotIn,
    Op::Matches,
    Op::NotMatches,
];

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Exists => "exists",
            Op::NotExists => "!exists",
            Op::In => "in",
            Op::NotIn => "!in",
            Op::Matches => "=~",
            Op::NotMatches => "!~",
        }
    }

    fn from_word(word: &str) -> Option<Op> {
        let op = match word.to_ascii_lowercase().as_str() {
            "equals" => Op::Eq,
            "not_equals" => Op::Ne,
            "greater_than" => Op::Gt,
            "greater_than_equal" => Op::Ge,
            "less_than" => Op::Lt,
            "less_than_equal" => Op::Le,
            "exists" => Op::Exists,
            "not_exists" => Op::NotExists,
            "in" => Op::In,
            "not_in" => Op::NotIn,
            "matches" => Op::Matches,
            "not_matches" => Op::NotMatches,
            _ => return None,
        };
        Some(op)
    }
}

impl Subj {
    fn allows(&self, op: Op) -> bool {
        use Op::*;
        match self {
            Subj::AgentConnected | Subj::Ec2InstanceId => {
                matches!(op, Eq | Ne | In | NotIn | Matches | NotMatches)
            }
            Subj::AgentVersion | Subj::RegisteredAt | Subj::RunningTasksCount => {
                matches!(op, Eq | Ne | Gt | Ge | Lt | Le)
            }
            Subj::Attribute(_) => true,
            Subj::TaskGroup => !matches!(op, Gt | Ge | Lt | Le),
        }
    }
}

impl fmt::Display for Subj {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subj::AgentConnected => f.write_str("agentConnected"),
            Subj::AgentVersion => f.write_str("agentVersion"),
            Subj::Attribute(name) => write!(f, "attribute:{name}"),
            Subj::Ec2InstanceId => f.write_str("ec2InstanceId"),
            Subj::RegisteredAt => f.write_str("registeredAt"),
            Subj::RunningTasksCount => f.write_str("runningTasksCount"),
            Subj::TaskGroup => f.write_str("task:group"),
        }
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

/// Parses `s` as a cluster query expression.
pub fn parse(s: &str) -> Result<Expr, ParseError> {
    if let Some((pos, _)) = s.char_indices().nth(MAX_EXPRESSION_CHARS) {
        return Err(ParseError {
            position: pos,
            message: format!("expression is longer than {MAX_EXPRESSION_CHARS} characters"),
        });
    }
    let mut p = Parser {
        src: s,
        pos: 0,
        parens: 0,
    };
    p.skip_ws();
    if p.at_end() {
        return Err(p.err(p.pos, "empty expression".to_string()));
    }
    let node = p.parse_or()?;
    p.skip_ws();
    if !p.at_end() {
        let msg = if p.peek() == Some(')') {
            "unexpected ')' without a matching '('".to_string()
        } else {
            format!("expected 'and', 'or' or end of input, found {}", p.found())
        };
        return Err(p.err(p.pos, msg));
    }
    Ok(Expr(node))
}

impl FromStr for Expr {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Expr, ParseError> {
        parse(s)
    }
}

fn is_bare(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '.' | '-' | '_' | ':' | '*' | '/' | '?' | '@' | '+' | '\\'
        )
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

struct Parser<'a> {
    src: &'a str,
    /// Always on a char boundary.
    pos: usize,
    parens: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(is_ws) {
            self.pos += 1;
        }
    }

    /// The maximal bare word starting at the current position (ASCII only).
    fn bare_word(&self) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c: char| !is_bare(c)).unwrap_or(rest.len());
        &rest[..len]
    }

    /// Describes what is at the current position, for error messages.
    fn found(&self) -> String {
        let word = self.bare_word();
        if !word.is_empty() {
            format!("'{word}'")
        } else {
            match self.peek() {
                None => "end of input".to_string(),
                Some(c) => format!("'{c}'"),
            }
        }
    }

    fn err(&self, position: usize, message: String) -> ParseError {
        ParseError { position, message }
    }

    /// Consumes `kw` if the next bare word equals it (case-insensitively).
    fn eat_keyword(&mut self, kw: &str) -> bool {
        let word = self.bare_word();
        if word.eq_ignore_ascii_case(kw) {
            self.pos += word.len();
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, s: &str) -> bool {
        if self.rest().starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn check_depth(&self, node: &Node, start: usize) -> Result<(), ParseError> {
        if node_depth(node) > MAX_NESTING_DEPTH {
            return Err(self.err(
                start,
                format!("expression is nested too deeply (limit {MAX_NESTING_DEPTH} levels)"),
            ));
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Node, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let mut items = vec![self.parse_and()?];
        loop {
            self.skip_ws();
            if self.eat_keyword("or") || self.eat_str("||") {
                items.push(self.parse_and()?);
            } else {
                break;
            }
        }
        let node = combine(items, true);
        self.check_depth(&node, start)?;
        Ok(node)
    }

    fn parse_and(&mut self) -> Result<Node, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let mut items = vec![self.parse_unary()?];
        loop {
            self.skip_ws();
            if self.eat_keyword("and") || self.eat_str("&&") {
                items.push(self.parse_unary()?);
            } else {
                break;
            }
        }
        let node = combine(items, false);
        self.check_depth(&node, start)?;
        Ok(node)
    }

    fn parse_unary(&mut self) -> Result<Node, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let mut negations = 0usize;
        loop {
            self.skip_ws();
            if self.eat_str("!") || self.eat_keyword("not") {
                negations += 1;
            } else {
                break;
            }
        }
        let node = if self.peek() == Some('(') {
            self.parse_paren()?
        } else {
            self.parse_comparison()?
        };
        if negations % 2 == 1 {
            let node = negate(node);
            self.check_depth(&node, start)?;
            Ok(node)
        } else {
            Ok(node)
        }
    }

    fn parse_paren(&mut self) -> Result<Node, ParseError> {
        let open = self.pos;
        if self.parens >= MAX_NESTING_DEPTH {
            return Err(self.err(
                open,
                format!("parentheses are nested too deeply (limit {MAX_NESTING_DEPTH})"),
            ));
        }
        self.parens += 1;
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(')') {
            return Err(self.err(self.pos, "empty parentheses".to_string()));
        }
        let node = self.parse_or()?;
        self.skip_ws();
        if !self.eat_str(")") {
            return Err(self.err(
                self.pos,
                format!(
                    "expected ')' to close '(' at {open}, found {}",
                    self.found()
                ),
            ));
        }
        self.parens -= 1;
        Ok(node)
    }

    fn parse_subject(&mut self) -> Result<Subj, ParseError> {
        let start = self.pos;
        let word = self.bare_word();
        if word.is_empty() {
            return Err(self.err(start, format!("expected a subject, found {}", self.found())));
        }
        let lower = word.to_ascii_lowercase();
        let subject = match lower.as_str() {
            "agentconnected" => Subj::AgentConnected,
            "agentversion" => Subj::AgentVersion,
            "ec2instanceid" => Subj::Ec2InstanceId,
            "registeredat" => Subj::RegisteredAt,
            "runningtaskscount" => Subj::RunningTasksCount,
            "task:group" => Subj::TaskGroup,
            _ if lower.starts_with("attribute:") => {
                let name = &word["attribute:".len()..];
                if name.is_empty() {
                    return Err(self.err(
                        start,
                        "missing attribute name after 'attribute:'".to_string(),
                    ));
                }
                let valid_char = |c: char| {
                    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '\\' | '.')
                };
                if name.len() > 128 || !name.chars().all(valid_char) {
                    return Err(self.err(
                        start,
                        format!(
                            "invalid attribute name '{name}': names are 1-128 letters, \
                             digits, '-', '_', '/', '\\' or '.'"
                        ),
                    ));
                }
                Subj::Attribute(name.to_string())
            }
            _ => {
                return Err(self.err(
                    start,
                    format!("unknown subject '{word}'; valid subjects are {VALID_SUBJECTS}"),
                ))
            }
        };
        self.pos += word.len();
        Ok(subject)
    }

    fn parse_operator(&mut self) -> Option<Op> {
        const SYMBOLS: [(&str, Op); 8] = [
            ("==", Op::Eq),
            ("!=", Op::Ne),
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("=~", Op::Matches),
            ("!~", Op::NotMatches),
            (">", Op::Gt),
            ("<", Op::Lt),
        ];
        for (sym, op) in SYMBOLS {
            if self.eat_str(sym) {
                return Some(op);
            }
        }
        if self.rest().starts_with('!') {
            self.pos += 1;
            let word = self.bare_word();
            let op = if word.eq_ignore_ascii_case("in") {
                Some(Op::NotIn)
            } else if word.eq_ignore_ascii_case("exists") {
                Some(Op::NotExists)
            } else {
                None
            };
            match op {
                Some(_) => self.pos += word.len(),
                None => self.pos -= 1,
            }
            return op;
        }
        let word = self.bare_word();
        let op = Op::from_word(word)?;
        self.pos += word.len();
        Some(op)
    }

    fn parse_comparison(&mut self) -> Result<Node, ParseError> {
        self.skip_ws();
        let subject = self.parse_subject()?;
        self.skip_ws();
        let op_pos = self.pos;
        let Some(op) = self.parse_operator() else {
            return Err(self.err(
                op_pos,
                format!(
                    "expected an operator after subject {subject}, found {}",
                    self.found()
                ),
            ));
        };
        if !subject.allows(op) {
            let valid: Vec<&str> = ALL_OPS
                .iter()
                .filter(|o| subject.allows(**o))
                .map(|o| o.symbol())
                .collect();
            return Err(self.err(
                op_pos,
                format!(
                    "operator {} is not valid for subject {subject}; valid operators are {}",
                    op.symbol(),
                    valid.join(", ")
                ),
            ));
        }
        self.skip_ws();
        let arg = match op {
            Op::Exists | Op::NotExists => {
                let word = self.bare_word();
                let takes_value = matches!(self.peek(), Some('\'' | '"' | '['))
                    || (!word.is_empty()
                        && !word.eq_ignore_ascii_case("and")
                        && !word.eq_ignore_ascii_case("or"));
                if takes_value {
                    return Err(self.err(
                        self.pos,
                        format!(
                            "operator {} takes no value, found {}",
                            op.symbol(),
                            self.found()
                        ),
                    ));
                }
                Arg::None
            }
            Op::In | Op::NotIn => Arg::List(self.parse_list(&subject, op)?),
            _ => {
                if self.peek() == Some('[') {
                    return Err(self.err(
                        self.pos,
                        format!("operator {} takes a single value, not a list", op.symbol()),
                    ));
                }
                Arg::One(self.parse_value(&subject, op)?)
            }
        };
        Ok(Node::Cmp(Cmp { subject, op, arg }))
    }

    fn parse_list(&mut self, subject: &Subj, op: Op) -> Result<Vec<Value>, ParseError> {
        let open = self.pos;
        if !self.eat_str("[") {
            return Err(self.err(
                open,
                format!(
                    "operator {} expects a list like [a, b], found {}",
                    op.symbol(),
                    self.found()
                ),
            ));
        }
        self.skip_ws();
        if self.peek() == Some(']') {
            return Err(self.err(open, "empty list".to_string()));
        }
        let mut items = Vec::new();
        loop {
            items.push(self.parse_value(subject, op)?);
            self.skip_ws();
            if self.eat_str(",") {
                continue;
            }
            if self.eat_str("]") {
                return Ok(items);
            }
            return Err(self.err(
                self.pos,
                format!(
                    "expected ',' or ']' in the list opened at {open}, found {}",
                    self.found()
                ),
            ));
        }
    }

    fn parse_value(&mut self, subject: &Subj, op: Op) -> Result<Value, ParseError> {
        self.skip_ws();
        let start = self.pos;
        let text = match self.peek() {
            Some(q @ ('\'' | '"')) => self.parse_quoted(q)?,
            Some(c) if is_bare(c) => {
                let word = self.bare_word();
                self.pos += word.len();
                word.to_string()
            }
            _ => {
                return Err(self.err(
                    start,
                    format!(
                        "expected a value after operator {}, found {}",
                        op.symbol(),
                        self.found()
                    ),
                ))
            }
        };
        let kind = typed_value(subject, op, &text).map_err(|m| self.err(start, m))?;
        Ok(Value { text, kind })
    }

    fn parse_quoted(&mut self, quote: char) -> Result<String, ParseError> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(self.err(start, "unterminated quoted string".to_string()));
            };
            if c == quote {
                self.pos += 1;
                return Ok(out);
            }
            if c == '\\' {
                let next = self.rest()[1..].chars().next();
                if let Some(e @ ('\\' | '\'' | '"')) = next {
                    out.push(e);
                    self.pos += 2;
                    continue;
                }
            }
            out.push(c);
            self.pos += c.len_utf8();
        }
    }
}

/// Checks and interprets a literal for the given subject and operator.
fn typed_value(subject: &Subj, op: Op, text: &str) -> Result<Kind, String> {
    if matches!(op, Op::Matches | Op::NotMatches) {
        return match anchored(text) {
            Some(_) => Ok(Kind::Str),
            None => Err(format!("'{text}' is not a valid regular expression")),
        };
    }
    match subject {
        Subj::AgentConnected => {
            if text.eq_ignore_ascii_case("true") {
                Ok(Kind::Bool(true))
            } else if text.eq_ignore_ascii_case("false") {
                Ok(Kind::Bool(false))
            } else {
                Err(format!(
                    "invalid value '{text}' for agentConnected: expected true or false"
                ))
            }
        }
        Subj::AgentVersion => parse_version(text).map(Kind::Version).ok_or_else(|| {
            format!("invalid version '{text}' for agentVersion: expected numbers separated by '.', like 1.14.5")
        }),
        Subj::RunningTasksCount => {
            if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                if let Ok(n) = text.parse::<u64>() {
                    return Ok(Kind::Int(n));
                }
            }
            Err(format!(
                "invalid value '{text}' for runningTasksCount: expected a non-negative integer"
            ))
        }
        Subj::RegisteredAt => parse_time(text)
            .map(|(start, end)| Kind::Time { start, end })
            .ok_or_else(|| {
                format!(
                    "invalid date '{text}' for registeredAt: expected 2018-06-18, \
                     2018-06-18T22:28:28, 2018-06-18T22:28:28Z or 2018-06-18T22:28:28+00:00"
                )
            }),
        Subj::Attribute(_) | Subj::Ec2InstanceId | Subj::TaskGroup => Ok(Kind::Str),
    }
}

/// Joins items with `and` (or `or`), flattening nested nodes of the same kind.
fn combine(mut items: Vec<Node>, is_or: bool) -> Node {
    if items.len() == 1 {
        if let Some(only) = items.pop() {
            return only;
        }
    }
    let mut flat = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Node::Or(inner) if is_or => flat.extend(inner),
            Node::And(inner) if !is_or => flat.extend(inner),
            other => flat.push(other),
        }
    }
    if is_or {
        Node::Or(flat)
    } else {
        Node::And(flat)
    }
}

fn negate(node: Node) -> Node {
    match node {
        Node::Not(inner) => *inner,
        other => Node::Not(Box::new(other)),
    }
}

fn node_depth(node: &Node) -> usize {
    match node {
        Node::Cmp(_) => 0,
        Node::Not(inner) => 1 + node_depth(inner),
        Node::And(items) | Node::Or(items) => 1 + items.iter().map(node_depth).max().unwrap_or(0),
    }
}

fn parse_version(text: &str) -> Option<Vec<u64>> {
    if text.is_empty() {
        return None;
    }
    text.split('.')
        .map(|part| {
            if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                part.parse::<u64>().ok()
            } else {
                None
            }
        })
        .collect()
}

/// Lenient reading of an instance's agent version: its leading `[0-9.]` run.
fn instance_version(text: &str) -> Option<Vec<u64>> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    parse_version(text[..end].trim_end_matches('.'))
}

fn cmp_version(a: &[u64], b: &[u64]) -> Ordering {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let x = a.get(i).copied().unwrap_or(0);
            let y = b.get(i).copied().unwrap_or(0);
            x.cmp(&y)
        })
        .find(|o| o.is_ne())
        .unwrap_or(Ordering::Equal)
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses a documented `registeredAt` format into `[start, end)` unix seconds.
fn parse_time(text: &str) -> Option<(i64, i64)> {
    let b = text.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            digits
                .iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')),
        )
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return None;
    }
    let day_start = days_from_civil(y, mo, d) * 86_400;
    if b.len() == 10 {
        return Some((day_start, day_start + 86_400));
    }
    if b.len() < 19 || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (h, mi, s) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if h > 23 || mi > 59 || s > 59 {
        return None;
    }
    let offset = match &b[19..] {
        [] | [b'Z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(20, 22)?, num(23, 25)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let t = day_start + h * 3600 + mi * 60 + s - offset;
    Some((t, t + 1))
}

/// A plain decimal number (`-1`, `2.5`, `.5`), for attribute ordering.
fn as_number(s: &str) -> Option<f64> {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, f),
        None => (body, ""),
    };
    let digits = |x: &str| x.bytes().all(|c| c.is_ascii_digit());
    if !digits(int) || !digits(frac) || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    s.parse::<f64>().ok().filter(|v| v.is_finite())
}

fn cmp_attribute(a: &str, b: &str) -> Ordering {
    match (as_number(a), as_number(b)) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.cmp(b),
    }
}

/// The anchored regular expression for `pattern`, compiled once per thread;
/// `None` if it is not a valid pattern (or too large to compile).
fn anchored(pattern: &str) -> Option<regex_lite::Regex> {
    use std::cell::RefCell;
    use std::collections::HashMap;
    thread_local! {
        static CACHE: RefCell<HashMap<String, Option<regex_lite::Regex>>> = RefCell::new(HashMap::new());
    }
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(r) = c.get(pattern) {
            return r.clone();
        }
        if c.len() >= 256 {
            c.clear();
        }
        let r = regex_lite::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(1 << 20)
            .build()
            .ok();
        c.insert(pattern.to_string(), r.clone());
        r
    })
}

/// Whether `text` matches `pattern` as a whole (a regular expression).
fn regex_match(pattern: &str, text: &str) -> bool {
    anchored(pattern).is_some_and(|r| r.is_match(text))
}

// ---------------------------------------------------------------------------
// Evaluation
// ---------------------------------------------------------------------------

fn ordering_holds(op: Op, ord: Ordering) -> bool {
    match op {
        Op::Eq => ord.is_eq(),
        Op::Ne => ord.is_ne(),
        Op::Gt => ord.is_gt(),
        Op::Ge => ord.is_ge(),
        Op::Lt => ord.is_lt(),
        Op::Le => ord.is_le(),
        _ => false,
    }
}

fn values(arg: &Arg) -> &[Value] {
    match arg {
        Arg::None => &[],
        Arg::One(v) => std::slice::from_ref(v),
        Arg::List(vs) => vs,
    }
}

fn first_text(arg: &Arg) -> &str {
    values(arg).first().map_or("", |v| v.text.as_str())
}

/// String-valued subjects (attributes, instance id) that are present.
fn eval_string(op: Op, arg: &Arg, actual: &str) -> bool {
    let text = first_text(arg);
    match op {
        Op::Exists => true,
        Op::NotExists => false,
        Op::In => values(arg).iter().any(|v| v.text == actual),
        Op::NotIn => !values(arg).iter().any(|v| v.text == actual),
        Op::Matches => regex_match(text, actual),
        Op::NotMatches => !regex_match(text, actual),
        Op::Eq => actual == text,
        Op::Ne => actual != text,
        _ => ordering_holds(op, cmp_attribute(actual, text)),
    }
}

impl Cmp {
    fn eval(&self, s: &dyn Subject) -> bool {
        let (op, arg) = (self.op, &self.arg);
        match &self.subject {
            Subj::Attribute(name) => match s.attribute(name) {
                None => op == Op::NotExists,
                Some(v) => eval_string(op, arg, v),
            },
            Subj::Ec2InstanceId => eval_string(op, arg, s.ec2_instance_id()),
            Subj::AgentConnected => {
                let actual = s.agent_connected();
                let is = |v: &Value| v.kind == Kind::Bool(actual);
                let as_text = if actual { "true" } else { "false" };
                match op {
                    Op::Eq | Op::In => values(arg).iter().any(is),
                    Op::Ne | Op::NotIn => !values(arg).iter().any(is),
                    Op::Matches => regex_match(first_text(arg), as_text),
                    Op::NotMatches => !regex_match(first_text(arg), as_text),
                    _ => false,
                }
            }
            Subj::AgentVersion => {
                let raw = s.agent_version();
                let Some(Value {
                    kind: Kind::Version(want),
                    text,
                }) = values(arg).first()
                else {
                    return false;
                };
                match instance_version(raw) {
                    Some(have) => ordering_holds(op, cmp_version(&have, want)),
                    None => match op {
                        Op::Eq => raw == text,
                        Op::Ne => raw != text,
                        _ => false,
                    },
                }
            }
            Subj::RegisteredAt => {
                let t = s.registered_at_unix_secs();
                let Some(Value {
                    kind: Kind::Time { start, end },
                    ..
                }) = values(arg).first()
                else {
                    return false;
                };
                let (start, end) = (*start, *end);
                match op {
                    Op::Eq => start <= t && t < end,
                    Op::Ne => !(start <= t && t < end),
                    Op::Lt => t < start,
                    Op::Le => t < end,
                    Op::Gt => t >= end,
                    Op::Ge => t >= start,
                    _ => false,
                }
            }
            Subj::RunningTasksCount => {
                let n = s.running_tasks_count();
                match values(arg).first() {
                    Some(Value {
                        kind: Kind::Int(want),
                        ..
                    }) => ordering_holds(op, n.cmp(want)),
                    _ => false,
                }
            }
            Subj::TaskGroup => {
                let any_in = || values(arg).iter().any(|v| s.has_task_group(&v.text));
                let any_match = || {
                    let pattern = first_text(arg);
                    s.task_groups().iter().any(|g| regex_match(pattern, g))
                };
                match op {
                    Op::Eq | Op::In => any_in(),
                    Op::Ne | Op::NotIn => !any_in(),
                    Op::Matches => any_match(),
                    Op::NotMatches => !any_match(),
                    Op::Exists => !s.task_groups().is_empty(),
                    Op::NotExists => s.task_groups().is_empty(),
                    _ => false,
                }
            }
        }
    }
}

impl Node {
    fn eval(&self, s: &dyn Subject) -> bool {
        match self {
            Node::Cmp(c) => c.eval(s),
            Node::Not(inner) => !inner.eval(s),
            Node::And(items) => items.iter().all(|n| n.eval(s)),
            Node::Or(items) => items.iter().any(|n| n.eval(s)),
        }
    }

    fn collect_subjects(&self, out: &mut Vec<String>) {
        match self {
            Node::Cmp(c) => {
                let name = c.subject.to_string();
                if !out.contains(&name) {
                    out.push(name);
                }
            }
            Node::Not(inner) => inner.collect_subjects(out),
            Node::And(items) | Node::Or(items) => {
                for item in items {
                    item.collect_subjects(out);
                }
            }
        }
    }
}

impl Expr {
    /// True when the container instance `s` satisfies the expression.
    pub fn matches(&self, s: &dyn Subject) -> bool {
        self.0.eval(s)
    }

    /// The distinct subjects used, in order of first appearance, rendered
    /// canonically (`attribute:ecs.instance-type`, `task:group`, ...).
    pub fn subjects(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.0.collect_subjects(&mut out);
        out
    }
}

// ---------------------------------------------------------------------------
// Display
// ---------------------------------------------------------------------------

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.text.is_empty() && self.text.chars().all(is_bare) {
            return f.write_str(&self.text);
        }
        f.write_str("'")?;
        for c in self.text.chars() {
            if c == '\\' || c == '\'' {
                f.write_str("\\")?;
            }
            write!(f, "{c}")?;
        }
        f.write_str("'")
    }
}

impl fmt::Display for Cmp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.subject, self.op.symbol())?;
        match &self.arg {
            Arg::None => Ok(()),
            Arg::One(v) => write!(f, " {v}"),
            Arg::List(vs) => {
                f.write_str(" [")?;
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Cmp(c) => write!(f, "{c}"),
            Node::Not(inner) => write!(f, "not({inner})"),
            Node::And(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" and ")?;
                    }
                    match item {
                        Node::Or(_) => write!(f, "({item})")?,
                        _ => write!(f, "{item}")?,
                    }
                }
                Ok(())
            }
            Node::Or(items) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(" or ")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone)]
    struct Inst {
        attrs: Vec<(String, String)>,
        id: String,
        connected: bool,
        version: String,
        registered: i64,
        running: u64,
        groups: Vec<String>,
    }

    impl Subject for Inst {
        fn attribute(&self, name: &str) -> Option<&str> {
            self.attrs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        }
        fn ec2_instance_id(&self) -> &str {
            &self.id
        }
        fn agent_connected(&self) -> bool {
            self.connected
        }
        fn agent_version(&self) -> &str {
            &self.version
        }
        fn registered_at_unix_secs(&self) -> i64 {
            self.registered
        }
        fn running_tasks_count(&self) -> u64 {
            self.running
        }
        fn has_task_group(&self, group: &str) -> bool {
            self.groups.iter().any(|g| g == group)
        }
        fn task_groups(&self) -> Vec<String> {
            self.groups.clone()
        }
    }

    /// 2018-02-12T10:00:00Z
    const FEB_12_10AM: i64 = 1_518_480_000 - 86_400 + 10 * 3600;

    fn inst() -> Inst {
        Inst {
            attrs: vec![
                ("ecs.instance-type".into(), "t2.small".into()),
                ("ecs.availability-zone".into(), "us-east-1a".into()),
                ("ecs.os-type".into(), "linux".into()),
                ("stack".into(), "prod".into()),
                ("cores".into(), "8".into()),
            ],
            id: "i-abcd1234".into(),
            connected: true,
            version: "1.14.4".into(),
            registered: FEB_12_10AM,
            running: 1,
            groups: vec!["service:production".into()],
        }
    }

    fn with_attr(mut i: Inst, k: &str, v: &str) -> Inst {
        i.attrs.retain(|(name, _)| name != k);
        i.attrs.push((k.into(), v.into()));
        i
    }

    fn without_attr(mut i: Inst, k: &str) -> Inst {
        i.attrs.retain(|(name, _)| name != k);
        i
    }

    /// Parses, checks the Display round trip, and returns the expression.
    fn p(s: &str) -> Expr {
        let e = parse(s).unwrap_or_else(|err| panic!("{s:?} failed to parse: {err}"));
        let shown = e.to_string();
        let again = parse(&shown)
            .unwrap_or_else(|err| panic!("rendering {shown:?} of {s:?} failed to parse: {err}"));
        assert_eq!(e, again, "round trip of {s:?} via {shown:?}");
        assert_eq!(again.to_string(), shown, "rendering of {s:?} is not stable");
        e
    }

    fn m(s: &str, i: &Inst) -> bool {
        p(s).matches(i)
    }

    fn err(s: &str) -> ParseError {
        match parse(s) {
            Ok(e) => panic!("{s:?} unexpectedly parsed as {e}"),
            Err(e) => e,
        }
    }

    #[test]
    fn documented_examples_cluster_query_language_page() {
        let i = inst();
        // Example: String Equality
        let e = "attribute:ecs.instance-type == t2.small";
        assert!(m(e, &i));
        assert!(!m(e, &with_attr(inst(), "ecs.instance-type", "t2.medium")));
        // Example: Argument List
        let e = "attribute:ecs.availability-zone in [us-east-1a, us-east-1b]";
        assert!(m(e, &i));
        assert!(m(
            e,
            &with_attr(inst(), "ecs.availability-zone", "us-east-1b")
        ));
        assert!(!m(
            e,
            &with_attr(inst(), "ecs.availability-zone", "us-east-1c")
        ));
        // Example: Compound Expression
        let e =
            "attribute:ecs.instance-type =~ g2.* and attribute:ecs.availability-zone != us-east-1d";
        let g2 = with_attr(inst(), "ecs.instance-type", "g2.2xlarge");
        assert!(m(e, &g2));
        assert!(!m(e, &with_attr(g2, "ecs.availability-zone", "us-east-1d")));
        assert!(!m(e, &i));
        // Example: Task Affinity
        let e = "task:group == service:production";
        assert!(m(e, &i));
        assert!(!m(
            e,
            &Inst {
                groups: vec!["database".into()],
                ..inst()
            }
        ));
        // Example: Task Anti-Affinity
        let e = "not(task:group == database)";
        assert!(m(e, &i));
        assert!(m(
            e,
            &Inst {
                groups: vec![],
                ..inst()
            }
        ));
        assert!(!m(
            e,
            &Inst {
                groups: vec!["x".into(), "database".into()],
                ..inst()
            }
        ));
        // Example: Running task count
        assert!(m("runningTasksCount == 1", &i));
        assert!(!m(
            "runningTasksCount == 1",
            &Inst {
                running: 2,
                ..inst()
            }
        ));
        // Example: Amazon ECS container agent version (below 1.14.5)
        let e = "agentVersion < 1.14.5";
        assert!(m(e, &i));
        assert!(m(
            e,
            &Inst {
                version: "1.9.0".into(),
                ..inst()
            }
        ));
        assert!(!m(
            e,
            &Inst {
                version: "1.14.5".into(),
                ..inst()
            }
        ));
        assert!(!m(
            e,
            &Inst {
                version: "1.20.0".into(),
                ..inst()
            }
        ));
        // Example: Instance registration time (before February 13, 2018)
        let e = "registeredAt < 2018-02-13";
        assert!(m(e, &i));
        assert!(m(
            e,
            &Inst {
                registered: 1_518_480_000 - 1,
                ..inst()
            }
        ));
        assert!(!m(
            e,
            &Inst {
                registered: 1_518_480_000,
                ..inst()
            }
        ));
        // Example: Amazon EC2 instance ID
        let e = "ec2InstanceId in ['i-abcd1234', 'i-wxyx7890']";
        assert!(m(e, &i));
        assert!(m(
            e,
            &Inst {
                id: "i-wxyx7890".into(),
                ..inst()
            }
        ));
        assert!(!m(
            e,
            &Inst {
                id: "i-00000000".into(),
                ..inst()
            }
        ));
        // Compound precedence form "(expression1 or expression2) and expression3"
        let e = "(attribute:stack == dev or attribute:stack == prod) and runningTasksCount < 5";
        assert!(m(e, &i));
        assert!(!m(
            e,
            &Inst {
                running: 5,
                ..inst()
            }
        ));
        assert!(!m(e, &with_attr(inst(), "stack", "qa")));
    }

    #[test]
    fn documented_examples_task_placement_constraints_page() {
        let i = inst();
        // memberOf constraint examples
        assert!(m("attribute:ecs.instance-type =~ t2.*", &i));
        assert!(!m(
            "attribute:ecs.instance-type =~ t2.*",
            &with_attr(inst(), "ecs.instance-type", "m5.large")
        ));
        let db = Inst {
            groups: vec!["databases".into()],
            ..inst()
        };
        assert!(m("task:group == databases", &db));
        assert!(!m("task:group == databases", &i));
        // list-container-instances --filter examples
        let g2 = with_attr(inst(), "ecs.instance-type", "g2.2xlarge");
        assert!(m("attribute:ecs.instance-type == g2.2xlarge", &g2));
        assert!(!m("attribute:ecs.instance-type == g2.2xlarge", &i));
        assert!(m("attribute:stack == prod", &i));
        // "instances with the custom attribute stack unless the value is prod"
        let e = "attribute:stack != prod";
        assert!(!m(e, &i));
        assert!(m(e, &with_attr(inst(), "stack", "dev")));
        assert!(!m(e, &without_attr(inst(), "stack")));
        let e = "attribute:ecs.instance-type in [t2.small, t2.medium]";
        assert!(m(e, &i));
        assert!(m(e, &with_attr(inst(), "ecs.instance-type", "t2.medium")));
        assert!(!m(e, &g2));
        let e =
            "attribute:ecs.instance-type =~ t2.* and attribute:ecs.availability-zone == us-east-1a";
        assert!(m(e, &i));
        assert!(!m(
            e,
            &with_attr(inst(), "ecs.availability-zone", "us-east-1b")
        ));
    }

    #[test]
    fn documented_registered_at_formats() {
        let at = |t: i64| Inst {
            registered: t,
            ..inst()
        };
        // 2018-06-18T22:28:28Z
        let t = 1_529_360_908;
        for e in [
            "registeredAt == 2018-06-18T22:28:28+00:00",
            "registeredAt == 2018-06-18T22:28:28Z",
            "registeredAt == 2018-06-18T22:28:28",
            "registeredAt == 2018-06-18",
            "registeredAt == '2018-06-18T22:28:28Z'",
            "registeredAt == 2018-06-19T00:28:28+02:00",
            "registeredAt == 2018-06-18T20:28:28-02:00",
        ] {
            assert!(m(e, &at(t)), "{e}");
            assert!(!m(e, &at(t + 86_400)), "{e}");
        }
        assert!(!m("registeredAt == 2018-06-18T22:28:28Z", &at(t + 1)));
        assert!(m("registeredAt != 2018-06-18T22:28:28Z", &at(t + 1)));
    }

    #[test]
    fn registered_at_day_and_second_granularity() {
        let day = 1_529_280_000; // 2018-06-18T00:00:00Z
        let at = |t: i64| Inst {
            registered: t,
            ..inst()
        };
        let cases: &[(&str, i64, bool)] = &[
            ("registeredAt == 2018-06-18", day, true),
            ("registeredAt == 2018-06-18", day + 86_399, true),
            ("registeredAt == 2018-06-18", day - 1, false),
            ("registeredAt != 2018-06-18", day + 86_400, true),
            ("registeredAt < 2018-06-18", day - 1, true),
            ("registeredAt < 2018-06-18", day, false),
            ("registeredAt <= 2018-06-18", day + 86_399, true),
            ("registeredAt <= 2018-06-18", day + 86_400, false),
            ("registeredAt > 2018-06-18", day + 86_399, false),
            ("registeredAt > 2018-06-18", day + 86_400, true),
            ("registeredAt >= 2018-06-18", day, true),
            ("registeredAt >= 2018-06-18", day - 1, false),
            ("registeredAt > 2018-06-18T00:00:00Z", day, false),
            ("registeredAt > 2018-06-18T00:00:00Z", day + 1, true),
            ("registeredAt >= 2018-06-18T00:00:00Z", day, true),
            ("registeredAt <= 2018-06-18T00:00:00Z", day, true),
            ("registeredAt < 2016-06-01", 1_464_739_200 - 1, true),
            ("registeredAt < 2016-06-01", 1_464_739_200, false),
            ("registeredAt less_than 2000-02-29", 951_782_400 - 1, true),
            ("registeredAt > 1969-12-31", 0, true),
            ("registeredAt < 1970-01-01", -1, true),
        ];
        for &(e, t, want) in cases {
            assert_eq!(m(e, &at(t)), want, "{e} at {t}");
        }
    }

    #[test]
    fn date_conversion_matches_known_instants() {
        assert_eq!(parse_time("1970-01-01"), Some((0, 86_400)));
        assert_eq!(parse_time("2018-02-13").map(|t| t.0), Some(1_518_480_000));
        assert_eq!(parse_time("2016-06-01").map(|t| t.0), Some(1_464_739_200));
        assert_eq!(parse_time("2000-02-29").map(|t| t.0), Some(951_782_400));
        assert_eq!(
            parse_time("2018-06-18T22:28:28+00:00"),
            Some((1_529_360_908, 1_529_360_909))
        );
        for bad in [
            "2018-02-30",
            "2019-02-29",
            "1900-02-29",
            "2018-13-01",
            "2018-00-10",
            "2018-1-01",
            "2018-06-18T24:00:00",
            "2018-06-18T22:60:00",
            "2018-06-18T22:28:60",
            "2018-06-18T22:28:28+0000",
            "2018-06-18T22:28:28+24:00",
            "2018-06-18T22:28",
            "2018-06-18 22:28:28",
            "2018-06-18T22:28:28.5Z",
            "18-06-18",
            "",
            "yesterday",
            "2018-06-18Z",
            "2018-06-18T22:28:28ZZ",
            "٢٠١٨-06-18",
        ] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn operator_word_forms_and_case() {
        let pairs = [
            ("attribute:a == x", "attribute:a equals x"),
            ("attribute:a != x", "attribute:a NOT_EQUALS x"),
            ("attribute:a > x", "attribute:a greater_than x"),
            ("attribute:a >= x", "attribute:a Greater_Than_Equal x"),
            ("attribute:a < x", "attribute:a less_than x"),
            ("attribute:a <= x", "attribute:a less_than_equal x"),
            ("attribute:a exists", "attribute:a EXISTS"),
            ("attribute:a !exists", "attribute:a not_exists"),
            ("attribute:a in [x]", "attribute:a IN [x]"),
            ("attribute:a !in [x]", "attribute:a not_in [x]"),
            ("attribute:a =~ x*", "attribute:a matches x*"),
            ("attribute:a !~ x*", "attribute:a not_matches x*"),
            (
                "attribute:a == x && attribute:b == y",
                "attribute:a == x AND attribute:b == y",
            ),
            (
                "attribute:a == x || attribute:b == y",
                "attribute:a == x Or attribute:b == y",
            ),
            ("!attribute:a == x", "NOT attribute:a == x"),
            ("agentConnected == true", "AGENTCONNECTED == true"),
            ("task:group == g", "Task:Group == g"),
            ("attribute:a == x", "ATTRIBUTE:a == x"),
            ("runningTasksCount==1", "  runningTasksCount\t==\n1  "),
        ];
        for (a, b) in pairs {
            assert_eq!(p(a), p(b), "{a} vs {b}");
        }
        // Attribute names stay case-sensitive.
        assert_ne!(p("attribute:a == x"), p("attribute:A == x"));
    }

    #[test]
    fn attribute_operators() {
        let i = with_attr(inst(), "ver", "10");
        let cases: &[(&str, bool)] = &[
            ("attribute:stack == prod", true),
            ("attribute:stack == Prod", false),
            ("attribute:stack != dev", true),
            ("attribute:stack > pro", true),
            ("attribute:stack >= prod", true),
            ("attribute:stack < prof", true),
            ("attribute:stack <= prod", true),
            ("attribute:stack < pro", false),
            ("attribute:stack exists", true),
            ("attribute:stack !exists", false),
            ("attribute:stack in [dev, prod]", true),
            ("attribute:stack !in [dev, prod]", false),
            ("attribute:stack !in [dev, qa]", true),
            ("attribute:stack =~ pr.*", true),
            ("attribute:stack =~ p.od", true),
            ("attribute:stack =~ pr", false),
            ("attribute:stack !~ d.*", true),
            // numeric when both sides are numbers, string order otherwise
            ("attribute:ver > 9", true),
            ("attribute:ver > 9.5", true),
            ("attribute:ver >= 10.0", true),
            ("attribute:ver <= 10.0", true),
            ("attribute:ver == 10.0", false),
            ("attribute:ver < -1", false),
            ("attribute:ver > abc", false),
            ("attribute:ver < abc", true),
            ("attribute:cores >= 8", true),
            ("attribute:cores < 16", true),
        ];
        for &(e, want) in cases {
            assert_eq!(m(e, &i), want, "{e}");
        }
    }

    #[test]
    fn missing_attribute_semantics() {
        let i = without_attr(inst(), "stack");
        let cases: &[(&str, bool)] = &[
            ("attribute:stack == prod", false),
            ("attribute:stack != prod", false),
            ("attribute:stack > a", false),
            ("attribute:stack <= z", false),
            ("attribute:stack in [prod]", false),
            ("attribute:stack !in [prod]", false),
            ("attribute:stack =~ .*", false),
            ("attribute:stack !~ prod", false),
            ("attribute:stack exists", false),
            ("attribute:stack !exists", true),
            ("not(attribute:stack == prod)", true),
            ("!attribute:stack exists", true),
        ];
        for &(e, want) in cases {
            assert_eq!(m(e, &i), want, "{e}");
        }
    }

    #[test]
    fn builtin_subject_operators() {
        let i = inst();
        let off = Inst {
            connected: false,
            ..inst()
        };
        let cases: &[(&str, &Inst, bool)] = &[
            ("agentConnected == true", &i, true),
            ("agentConnected == TRUE", &i, true),
            ("agentConnected == false", &off, true),
            ("agentConnected != true", &off, true),
            ("agentConnected != true", &i, false),
            ("agentConnected in [false]", &off, true),
            ("agentConnected in [true, false]", &i, true),
            ("agentConnected !in [true]", &off, true),
            ("agentConnected =~ t.*", &i, true),
            ("agentConnected =~ t.*", &off, false),
            ("agentConnected !~ t.*", &off, true),
            ("agentVersion == 1.14.4", &i, true),
            ("agentVersion == 1.14.4.0", &i, true),
            ("agentVersion != 1.14.4", &i, false),
            ("agentVersion > 1.14", &i, true),
            ("agentVersion >= 1.14.4", &i, true),
            ("agentVersion <= 1.14.3", &i, false),
            ("agentVersion < 2", &i, true),
            ("ec2InstanceId == i-abcd1234", &i, true),
            ("ec2InstanceId != i-abcd1234", &i, false),
            ("ec2InstanceId in [i-1, i-abcd1234]", &i, true),
            ("ec2InstanceId !in [i-1, i-2]", &i, true),
            ("ec2InstanceId =~ i-abcd.*", &i, true),
            ("ec2InstanceId !~ i-abcd.*", &i, false),
            ("runningTasksCount == 1", &i, true),
            ("runningTasksCount != 1", &i, false),
            ("runningTasksCount > 0", &i, true),
            ("runningTasksCount >= 2", &i, false),
            ("runningTasksCount < 2", &i, true),
            ("runningTasksCount <= 0", &i, false),
        ];
        for &(e, s, want) in cases {
            assert_eq!(m(e, s), want, "{e}");
        }
        let dev = Inst {
            version: "1.14.5-dev".into(),
            ..inst()
        };
        assert!(m("agentVersion == 1.14.5", &dev));
        let odd = Inst {
            version: "unknown".into(),
            ..inst()
        };
        assert!(!m("agentVersion < 9", &odd));
        assert!(!m("agentVersion > 0", &odd));
        assert!(!m("agentVersion == 1", &odd));
        assert!(m("agentVersion != 1", &odd));
    }

    #[test]
    fn task_group_operators() {
        let i = Inst {
            groups: vec!["service:web".into(), "family:batch".into()],
            ..inst()
        };
        let none = Inst {
            groups: vec![],
            ..inst()
        };
        let cases: &[(&str, &Inst, bool)] = &[
            ("task:group == service:web", &i, true),
            ("task:group == family:batch", &i, true),
            ("task:group == service:db", &i, false),
            ("task:group != service:db", &i, true),
            ("task:group != service:web", &i, false),
            ("task:group in [service:db, family:batch]", &i, true),
            ("task:group !in [service:db, family:batch]", &i, false),
            ("task:group !in [service:db]", &i, true),
            ("task:group =~ service:.*", &i, true),
            ("task:group =~ service:d.*", &i, false),
            ("task:group !~ service:d.*", &i, true),
            ("task:group exists", &i, true),
            ("task:group exists", &none, false),
            ("task:group !exists", &none, true),
            ("task:group != service:web", &none, true),
        ];
        for &(e, s, want) in cases {
            assert_eq!(m(e, s), want, "{e}");
        }
    }

    #[test]
    fn precedence_parentheses_and_negation() {
        let i = inst(); // stack=prod, running=1
        let t = "attribute:stack == prod";
        let f = "attribute:stack == dev";
        // and binds tighter than or
        assert!(m(&format!("{t} or {f} and {f}"), &i));
        assert!(!m(&format!("({t} or {f}) and {f}"), &i));
        assert!(m(&format!("{f} and {f} or {t}"), &i));
        assert!(!m(&format!("{f} and ({f} or {t})"), &i));
        // not binds tighter than and/or
        assert!(!m(&format!("not {t} and {t}"), &i));
        assert!(!m(&format!("!{t} || {f}"), &i));
        assert!(m(&format!("not ({t} and {f})"), &i));
        assert!(m(&format!("!!{t}"), &i));
        assert!(!m(&format!("not not not {t}"), &i));
        assert!(m(&format!("((({t})))"), &i));
        // structure
        assert_eq!(
            p(&format!("{t} or {f} and {f}")),
            p(&format!("{t} or ({f} and {f})"))
        );
        assert_ne!(
            p(&format!("{t} or {f} and {f}")),
            p(&format!("({t} or {f}) and {f}"))
        );
        assert_eq!(
            p(&format!("a:b == c or ({t} or {f})").replace("a:b", "attribute:b")),
            p(&format!("attribute:b == c or {t} or {f}"))
        );
        assert_eq!(p(&format!("!!{t}")), p(t));
        assert_eq!(p(&format!("not(not({t}))")), p(t));
    }

    #[test]
    fn lists_quotes_and_escapes() {
        let i = with_attr(inst(), "name", "it's a \"test\" \\ é");
        assert!(m(r#"attribute:name == 'it\'s a "test" \\ é'"#, &i));
        assert!(m(r#"attribute:name == "it's a \"test\" \\ é""#, &i));
        assert!(m(
            r#"attribute:name in [x, "it's a \"test\" \\ é", 'y z']"#,
            &i
        ));
        assert!(m(r#"attribute:name =~ 'it.*é'"#, &i));
        let j = with_attr(inst(), "path", r"C:\dir");
        assert!(m(r"attribute:path == C:\dir", &j));
        assert!(m(r"attribute:path == 'C:\dir'", &j));
        assert!(m(r"attribute:path == 'C:\\dir'", &j));
        let k = with_attr(inst(), "sp", "a b");
        assert!(m("attribute:sp in ['a b',\"c d\" ,e]", &k));
        assert!(m("attribute:sp in[ 'a b' ]", &k));
        assert!(m("attribute:sp == ''", &with_attr(inst(), "sp", "")));
        assert_eq!(
            p("attribute:sp in ['a b', \"c\", d]").to_string(),
            "attribute:sp in ['a b', c, d]"
        );
        assert_eq!(
            p(r#"attribute:n == "it's""#).to_string(),
            r"attribute:n == 'it\'s'"
        );
        assert_eq!(
            p("attribute:n == 'a\\b'").to_string(),
            "attribute:n == a\\b"
        );
        assert_eq!(p("attribute:n == 'and'").to_string(), "attribute:n == and");
        assert!(m(
            "attribute:stack == and or attribute:stack == prod",
            &inst()
        ));
    }

    #[test]
    fn regex_semantics() {
        let cases: &[(&str, &str, bool)] = &[
            ("t2.*", "t2.small", true),
            ("t2.*", "t2", true),
            ("t2\\..*", "t2xlarge", false),
            ("t2.*", "xt2.small", false),
            (".*", "", true),
            ("", "", true),
            ("", "a", false),
            ("us-east-1[ab]", "us-east-1a", true),
            ("us-east-1[ab]", "us-east-1c", false),
            ("g2\\.(x|2x)large", "g2.2xlarge", true),
            ("(a+)+b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac", false),
        ];
        for &(pat, text, want) in cases {
            assert_eq!(regex_match(pat, text), want, "{pat} vs {text}");
        }
        assert!(Expr::from_str("attribute:x =~ '(unclosed'").is_err());
    }

    #[test]
    fn display_is_canonical() {
        let cases = [
            (
                "attribute:ecs.instance-type equals t2.small",
                "attribute:ecs.instance-type == t2.small",
            ),
            ("NOT(task:group == database)", "not(task:group == database)"),
            ("!task:group == database", "not(task:group == database)"),
            (
                "a:x == 1 && a:y == 2 || a:z == 3",
                "a:x == 1 and a:y == 2 or a:z == 3",
            ),
            (
                "a:x == 1 && (a:y == 2 || a:z == 3)",
                "a:x == 1 and (a:y == 2 or a:z == 3)",
            ),
            ("!(a:x == 1 || a:y == 2)", "not(a:x == 1 or a:y == 2)"),
            ("(((a:x exists)))", "a:x exists"),
            ("a:x not_in [ 'p q' ,r ]", "a:x !in ['p q', r]"),
            ("agentConnected==TRUE", "agentConnected == TRUE"),
            ("registeredAt<'2018-02-13'", "registeredAt < 2018-02-13"),
        ];
        for (input, want) in cases {
            let input = input.replace("a:", "attribute:");
            let want = want.replace("a:", "attribute:");
            assert_eq!(p(&input).to_string(), want, "{input}");
        }
    }

    #[test]
    fn subjects_lists_distinct_subjects_in_order() {
        let e = p("task:group == a and (attribute:ecs.instance-type =~ t2.* or not(task:group == b)) and RUNNINGTASKSCOUNT < 3");
        assert_eq!(
            e.subjects(),
            vec![
                "task:group",
                "attribute:ecs.instance-type",
                "runningTasksCount"
            ]
        );
    }

    #[test]
    fn parse_errors() {
        let long = format!("attribute:a == {}", "x".repeat(MAX_EXPRESSION_CHARS));
        let deep = format!("{}attribute:a exists{}", "(".repeat(40), ")".repeat(40));
        let cases: Vec<(&str, usize, &str)> = vec![
            ("", 0, "empty expression"),
            ("   ", 3, "empty expression"),
            ("foo == bar", 0, "unknown subject 'foo'; valid subjects are agentConnected"),
            (
                "attribute:ecs.instance-type foo",
                28,
                "expected an operator after subject attribute:ecs.instance-type, found 'foo'",
            ),
            ("agentConnected > 3", 15, "operator > is not valid for subject agentConnected; valid operators are ==, !=, in, !in, =~, !~"),
            ("registeredAt exists", 13, "operator exists is not valid for subject registeredAt"),
            ("task:group < a", 11, "operator < is not valid for subject task:group"),
            ("runningTasksCount == abc", 21, "invalid value 'abc' for runningTasksCount"),
            ("runningTasksCount == -1", 21, "expected a non-negative integer"),
            ("registeredAt < 2018-13-01", 15, "invalid date '2018-13-01'"),
            ("registeredAt < 2018-02-30", 15, "invalid date"),
            ("agentVersion < 1.x", 15, "invalid version '1.x'"),
            ("agentConnected == yes", 18, "expected true or false"),
            ("attribute:a == 'unterminated", 15, "unterminated quoted string"),
            ("attribute:a == \"it's", 15, "unterminated quoted string"),
            ("attribute:a in [x, y", 20, "expected ',' or ']' in the list opened at 15, found end of input"),
            ("attribute:a in [x y]", 18, "expected ',' or ']' in the list opened at 15, found 'y'"),
            ("attribute:a in [x,]", 18, "expected a value after operator in, found ']'"),
            ("attribute:a in []", 15, "empty list"),
            ("attribute:a in x", 15, "operator in expects a list like [a, b], found 'x'"),
            ("attribute:a in (x, y)", 15, "expects a list"),
            ("attribute:a == [x]", 15, "operator == takes a single value, not a list"),
            ("attribute:a ==", 14, "expected a value after operator ==, found end of input"),
            ("attribute:a = b", 12, "expected an operator after subject attribute:a, found '='"),
            ("attribute:a exists x", 19, "operator exists takes no value, found 'x'"),
            ("attribute: == x", 0, "missing attribute name after 'attribute:'"),
            ("attribute:a:b == x", 0, "invalid attribute name 'a:b'"),
            ("(attribute:a == b", 17, "expected ')' to close '(' at 0, found end of input"),
            ("attribute:a == b)", 16, "unexpected ')' without a matching '('"),
            ("attribute:a == b c", 17, "expected 'and', 'or' or end of input, found 'c'"),
            ("attribute:a == b and", 20, "expected a subject, found end of input"),
            ("attribute:a == b & attribute:c exists", 17, "found '&'"),
            ("() or attribute:a exists", 1, "empty parentheses"),
            ("é == b", 0, "expected a subject, found 'é'"),
            ("attribute:a == b andattribute:c exists", 17, "found 'andattribute:c'"),
            ("not", 3, "expected a subject, found end of input"),
            ("attribute:a !inx [a]", 12, "expected an operator"),
            (&long, MAX_EXPRESSION_CHARS, "longer than 2000 characters"),
            (&deep, 32, "parentheses are nested too deeply (limit 32)"),
        ];
        assert!(cases.len() >= 15);
        for (input, pos, fragment) in cases {
            let e = err(input);
            assert!(
                e.message.contains(fragment),
                "{input:?}: message {:?} lacks {fragment:?}",
                e.message
            );
            assert_eq!(e.position, pos, "{input:?}: {e}");
            assert_eq!(e.to_string(), format!("at {pos}: {}", e.message));
        }
        // Byte offsets, not char offsets, with non-ASCII text before the error.
        let e = err("attribute:a == 'é' zz");
        assert_eq!(e.position, 20);
    }

    #[test]
    fn limits() {
        // Exactly at the length limit parses; one more character fails.
        let base = "attribute:a == ";
        let ok = format!("{base}{}", "x".repeat(MAX_EXPRESSION_CHARS - base.len()));
        assert!(parse(&ok).is_ok());
        assert!(parse(&format!("{ok}x")).is_err());
        // Non-ASCII characters count as one character each.
        let ok = format!(
            "{base}'{}'",
            "é".repeat(MAX_EXPRESSION_CHARS - base.len() - 2)
        );
        assert!(parse(&ok).is_ok());
        // 32 nested parentheses parse, 33 do not.
        let nest = |n: usize| format!("{}attribute:a exists{}", "(".repeat(n), ")".repeat(n));
        assert!(parse(&nest(MAX_NESTING_DEPTH)).is_ok());
        assert_eq!(
            err(&nest(MAX_NESTING_DEPTH + 1)).position,
            MAX_NESTING_DEPTH
        );
        // Hostile input: deep unbalanced nesting, long negation chains.
        assert!(parse(&"(".repeat(1999)).is_err());
        assert!(parse(&"[".repeat(1999)).is_err());
        assert!(parse(&format!("{}attribute:a exists", "!".repeat(1500))).is_ok());
        assert!(parse(&"not(".repeat(499)).is_err());
        // Logical depth is limited too: alternate and/or/not inside parentheses.
        let mut e = String::from("attribute:a exists");
        for _ in 0..12 {
            e = format!("not (attribute:b exists or {e} and attribute:c exists)");
        }
        let err = err(&e);
        assert!(err.message.contains("nested too deeply"), "{err}");
        let mut e = String::from("attribute:a exists");
        for _ in 0..10 {
            e = format!("not (attribute:b exists or {e} and attribute:c exists)");
        }
        p(&e);
    }

    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            self.0 >> 33
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn check_fuzz_input(input: &str, samples: &[Inst]) -> bool {
        match parse(input) {
            Err(e) => {
                assert!(e.position <= input.len(), "{input:?}: {e}");
                assert!(input.is_char_boundary(e.position), "{input:?}: {e}");
                false
            }
            Ok(expr) => {
                let shown = expr.to_string();
                if shown.chars().count() <= MAX_EXPRESSION_CHARS {
                    let again =
                        parse(&shown).unwrap_or_else(|e| panic!("{input:?} -> {shown:?}: {e}"));
                    assert_eq!(expr, again, "{input:?} -> {shown:?}");
                    for s in samples {
                        assert_eq!(expr.matches(s), again.matches(s), "{input:?}");
                    }
                }
                let _ = expr.subjects();
                true
            }
        }
    }

    #[rustfmt::skip]
    const FRAGMENTS: &[&str] = &[
        "attribute:", "attribute:a", "attribute:ecs.instance-type", "task:group",
        "agentConnected", "agentVersion", "ec2InstanceId", "registeredAt",
        "runningTasksCount", "foo", " ", " ", " ", "\t", "==", "!=", ">", ">=", "<", "<=",
        "=~", "!~", "!", "=", "~", "in", "!in", "not_in", "exists", "!exists", "matches",
        "and", "or", "not", "&&", "||", "&", "|", "(", ")", "[", "]", ",", "'", "\"", "\\",
        "t2.*", "?", "*", "1", "1.14.5", "-3", "2018-06-18", "2018-06-18T22:28:28Z",
        "+00:00", "true", "FALSE", "x", "é", "€", "\u{0}", "💥", "service:web", "''",
    ];

    #[rustfmt::skip]
    const SUBJECTS: &[&str] = &[
        "attribute:stack", "attribute:ecs.instance-type", "attribute:cores", "attribute:Zz_9/\\.-",
        "task:group", "agentConnected", "agentVersion", "ec2InstanceId", "registeredAt",
        "runningTasksCount", "ATTRIBUTE:stack",
    ];

    #[rustfmt::skip]
    const OPERATORS: &[&str] = &[
        "==", "equals", "!=", "not_equals", ">", "greater_than", ">=", "greater_than_equal",
        "<", "less_than", "<=", "less_than_equal", "exists", "!exists", "not_exists", "in",
        "!in", "not_in", "=~", "matches", "!~", "not_matches",
    ];

    #[rustfmt::skip]
    const VALUES: &[&str] = &[
        "prod", "t2.*", "1", "8", "-2.5", "1.14.5", "true", "false", "2018-06-18",
        "2018-06-18T22:28:28+02:00", "2018-02-13T00:00:00Z", "service:production", "'a b'",
        "\"it's\"", "'x\\'y'", "'\\\\'", "''", "'é€💥'", "us-east-1?", "and", "C:\\dir",
    ];

    fn pick<'a>(rng: &mut Lcg, items: &[&'a str]) -> &'a str {
        items[rng.below(items.len())]
    }

    fn ws(rng: &mut Lcg) -> &'static str {
        ["", " ", " ", "  ", "\t", "\n "][rng.below(6)]
    }

    /// A grammar-directed random expression (not always type-correct).
    fn gen_expr(rng: &mut Lcg, depth: usize) -> String {
        let choice = if depth > 4 { 0 } else { rng.below(6) };
        match choice {
            0..=2 => {
                let op = pick(rng, OPERATORS);
                let mut s = format!("{}{}{}{}", pick(rng, SUBJECTS), ws(rng), op, ws(rng));
                if op.contains("in") && !op.contains("not_e") {
                    let n = 1 + rng.below(3);
                    let items: Vec<&str> = (0..n).map(|_| pick(rng, VALUES)).collect();
                    s.push_str(&format!("[{}]", items.join(", ")));
                } else if !op.contains("exists") {
                    s.push(' ');
                    s.push_str(pick(rng, VALUES));
                }
                s
            }
            3 => format!(
                "{}({})",
                ["", "not", "!", "NOT "][rng.below(4)],
                gen_expr(rng, depth + 1)
            ),
            _ => {
                let conn = ["and", "or", "&&", "||", "AND", "Or"][rng.below(6)];
                let (a, b) = (gen_expr(rng, depth + 1), gen_expr(rng, depth + 1));
                format!("{a}{} {conn} {}{b}", ws(rng), ws(rng))
            }
        }
    }

    fn mutate(rng: &mut Lcg, source: &str) -> String {
        let mut bytes = source.as_bytes().to_vec();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(bytes.len() + 1);
            let byte = if rng.below(2) == 0 {
                rng.below(256) as u8
            } else {
                let alphabet = b"()[]'\",!=~<> &|\\*?:";
                alphabet[rng.below(alphabet.len())]
            };
            match rng.below(3) {
                0 if at < bytes.len() => bytes[at] = byte,
                1 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn mini_fuzz() {
        const VALID: &[&str] = &[
            "attribute:ecs.instance-type =~ t2.*",
            "attribute:ecs.availability-zone in [us-east-1a, us-east-1b]",
            "attribute:ecs.instance-type =~ g2.* and attribute:ecs.availability-zone != us-east-1d",
            "task:group == service:production",
            "not(task:group == database)",
            "runningTasksCount == 1",
            "agentVersion < 1.14.5",
            "registeredAt < 2018-02-13",
            "ec2InstanceId in ['i-abcd1234', 'i-wxyx7890']",
            "(attribute:a == \"x y\" || !attribute:b exists) && registeredAt >= 2018-06-18T22:28:28+00:00",
        ];
        let samples = [
            inst(),
            Inst {
                connected: false,
                groups: vec![],
                running: 0,
                version: "junk".into(),
                ..without_attr(inst(), "stack")
            },
            Inst {
                registered: 1_529_280_000,
                ..with_attr(inst(), "ecs.instance-type", "t2.")
            },
        ];
        let mut rng = Lcg(0x5eed);
        let (mut soup_ok, mut grammar_ok, mut mutated_ok) = (0usize, 0usize, 0usize);
        // 10,000 strings of random fragments.
        for _ in 0..10_000 {
            let n = 1 + rng.below(12);
            let s: String = (0..n).map(|_| pick(&mut rng, FRAGMENTS)).collect();
            soup_ok += usize::from(check_fuzz_input(&s, &samples));
        }
        // 10,000 grammar-directed strings, a third with a stray fragment spliced in.
        for _ in 0..10_000 {
            let mut s = gen_expr(&mut rng, 0);
            if rng.below(3) == 0 {
                let mut at = rng.below(s.len() + 1);
                while !s.is_char_boundary(at) {
                    at -= 1;
                }
                s.insert_str(at, pick(&mut rng, FRAGMENTS));
            }
            grammar_ok += usize::from(check_fuzz_input(&s, &samples));
        }
        // 20,000 byte mutations of documented and generated expressions.
        for k in 0..20_000 {
            let source = if k % 2 == 0 {
                VALID[rng.below(VALID.len())].to_string()
            } else {
                gen_expr(&mut rng, 0)
            };
            let s = mutate(&mut rng, &source);
            mutated_ok += usize::from(check_fuzz_input(&s, &samples));
        }
        eprintln!("fuzz: parsed {soup_ok}/10000 soup, {grammar_ok}/10000 grammar, {mutated_ok}/20000 mutated");
        // Every generator must exercise both outcomes.
        for (ok, total) in [
            (soup_ok, 10_000),
            (grammar_ok, 10_000),
            (mutated_ok, 20_000),
        ] {
            assert!(ok > 0 && ok < total, "{ok} of {total} parsed");
        }
        assert!(
            grammar_ok > 2_000,
            "grammar generator too weak: {grammar_ok}"
        );
    }
}
