//! The Azure LLM inference traces (`../shared/traces/`): `TIMESTAMP,ContextTokens,
//! GeneratedTokens` per line, one file per service. Parsed as untrusted input (the caller
//! reads the file): every error names the file, the line and the field; sizes are bounded.

use std::path::{Path, PathBuf};

/// Most requests one trace file may hold.
pub const MAX_REQUESTS: usize = 1_000_000;
/// Most tokens one request may have, prompt or generated.
pub const MAX_TOKENS: u32 = 1 << 20;
/// Largest trace file a reader should hand to [`parse`].
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// One request of a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TraceRequest {
    /// Microseconds since midnight of the trace's day.
    pub at_us: u64,
    pub context_tokens: u32,
    pub generated_tokens: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}:{line}: field `{field}`: {detail}")]
    Bad {
        path: PathBuf,
        line: usize,
        field: &'static str,
        detail: String,
    },
}

/// Parses a trace's text (`path` names it in errors).
pub fn parse(path: &Path, text: &str) -> Result<Vec<TraceRequest>, TraceError> {
    let bad = |line: usize, field: &'static str, detail: String| TraceError::Bad {
        path: path.to_path_buf(),
        line,
        field,
        detail,
    };
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.trim_end_matches('\r');
        if line == 1 {
            if raw != "TIMESTAMP,ContextTokens,GeneratedTokens" {
                return Err(bad(
                    line,
                    "header",
                    format!("expected TIMESTAMP,ContextTokens,GeneratedTokens, got {raw:?}"),
                ));
            }
            continue;
        }
        if raw.is_empty() {
            continue;
        }
        if out.len() >= MAX_REQUESTS {
            return Err(bad(
                line,
                "TIMESTAMP",
                format!("more than {MAX_REQUESTS} requests"),
            ));
        }
        let mut fields = raw.split(',');
        let (Some(ts), Some(ctx), Some(generated), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(line, "TIMESTAMP", "expected three fields".into()));
        };
        let at_us = time_of_day_us(ts)
            .ok_or_else(|| bad(line, "TIMESTAMP", format!("not a time of day: {ts:?}")))?;
        let tokens = |field: &'static str, v: &str| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n <= MAX_TOKENS)
                .ok_or_else(|| {
                    bad(
                        line,
                        field,
                        format!("not a count of at most {MAX_TOKENS}: {v:?}"),
                    )
                })
        };
        out.push(TraceRequest {
            at_us,
            context_tokens: tokens("ContextTokens", ctx)?,
            generated_tokens: tokens("GeneratedTokens", generated)?,
        });
    }
    Ok(out)
}

/// `2023-11-16 18:17:03.9799600` as microseconds since midnight.
fn time_of_day_us(ts: &str) -> Option<u64> {
    let (_, clock) = ts.trim().split_once(' ')?;
    let mut parts = clock.split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let whole: u64 = whole.parse().ok()?;
    if h > 23 || m > 59 || whole > 60 || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let micros: u64 = format!("{frac:0<6}")[..6].parse().ok()?;
    Some(((h * 60 + m) * 60 + whole) * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_errors_name_the_line_and_field() {
        let path = Path::new("t.csv");
        let ok = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9799600,4808,10\n2023-11-16 18:17:04.0319600,3180,8";
        let reqs = parse(path, ok).unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(
            reqs[0].at_us,
            (18 * 3600 + 17 * 60 + 3) * 1_000_000 + 979_960
        );
        assert_eq!(reqs[1].context_tokens, 3180);
        for (text, want) in [
            ("nope\n", "t.csv:1: field `header`"),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 25:00:00.0,1,1",
                "t.csv:2: field `TIMESTAMP`",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 10:00:00.0,-1,1",
                "t.csv:2: field `ContextTokens`",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 10:00:00.0,1,99999999",
                "t.csv:2: field `GeneratedTokens`",
            ),
            (
                "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 10:00:00.0,1",
                "t.csv:2: field `TIMESTAMP`",
            ),
        ] {
            let e = parse(path, text).unwrap_err().to_string();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
