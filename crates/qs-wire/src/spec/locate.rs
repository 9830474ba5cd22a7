//! Where in a spec document an error is: byte spans turned into line, column and the dotted
//! path of the field (`service.web.resources.cpu_cores`), inline tables included.

use super::SpecError;
use std::ops::Range;

/// Turns byte spans into file, line, column and field path.
pub(crate) struct Locator<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
}

impl<'a> Locator<'a> {
    pub(crate) fn new(file: &'a str, text: &'a str) -> Locator<'a> {
        Locator { file, text }
    }

    pub(crate) fn error(
        &self,
        span: Range<usize>,
        field: &str,
        message: impl Into<String>,
    ) -> SpecError {
        let (line, column) = line_column(self.text, span.start);
        SpecError {
            file: self.file.to_owned(),
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// Errors from the TOML deserializer carry a span but no field path; rebuild the path from
    /// the table header and key around the span.
    pub(crate) fn serde_error(&self, e: &toml::de::Error) -> SpecError {
        let start = e.span().map_or(0, |s| s.start).min(self.text.len());
        let message = e.message().trim().to_owned();
        // A missing field is reported at the table that lacks it: the path ends there.
        let field = match backticked(&message, "missing field `") {
            Some(missing) => join(&field_at(self.text, start, false), missing),
            None => field_at(self.text, start, true),
        };
        let syntax = !message.contains("field")
            && !message.contains("variant")
            && !message.contains("invalid type")
            && !message.contains("invalid value");
        self.error(start..start, if syntax { "" } else { &field }, message)
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_char_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn floor_char_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The dotted path of the key written at `offset`: the governing `[table]` header plus the
/// keys leading to `offset` on its line, inline tables included; with `to_token_end`, the key
/// whose token starts at `offset` too.
fn field_at(text: &str, offset: usize, to_token_end: bool) -> String {
    let offset = floor_char_boundary(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = text[line_start..line_end].trim();
    if let Some(header) = table_header(line) {
        return header;
    }
    let header = text[..line_start]
        .lines()
        .rev()
        .find_map(|l| table_header(l.trim()))
        .unwrap_or_default();
    // At the error itself the key may not be complete yet: read up to the end of its token.
    let upto = if to_token_end {
        text[offset..line_end]
            .find([',', '}'])
            .map_or(line_end, |i| offset + i)
    } else {
        offset
    };
    inline_keys(&text[line_start..upto])
        .iter()
        .fold(header, |path, key| join(&path, key))
}

/// The keys leading to the end of `prefix`, one per open inline table plus the last one:
/// `a = { b = 1, c = { d` gives `[a, c, d]`.
fn inline_keys(prefix: &str) -> Vec<String> {
    let mut open: Vec<String> = Vec::new();
    let mut token = String::new();
    let mut last = String::new();
    let mut quoted = false;
    for c in prefix.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => token.push(c),
            '=' => {
                last = token.trim().to_owned();
                token.clear();
            }
            '{' => {
                open.push(std::mem::take(&mut last));
                token.clear();
            }
            '}' => {
                open.pop();
                last.clear();
                token.clear();
            }
            ',' => {
                last.clear();
                token.clear();
            }
            _ => token.push(c),
        }
    }
    if last.is_empty() && !token.trim().is_empty() && !prefix.contains('=') {
        last = token.trim().to_owned();
    }
    open.into_iter()
        .chain([last])
        .filter(|k| !k.is_empty())
        .collect()
}

fn table_header(line: &str) -> Option<String> {
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let end = inner.find(']')?;
    Some(inner[..end].trim().replace('"', ""))
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}.{b}")
    }
}

fn backticked<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    let rest = &message[message.find(prefix)? + prefix.len()..];
    Some(&rest[..rest.find('`')?])
}
