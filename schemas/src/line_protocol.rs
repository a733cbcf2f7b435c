//! Reading InfluxDB line protocol back into [`Point`]s: what the tests use to
//! check the files and servers infermon writes to, escapes included.
//!
//! The rules are those of the InfluxDB 2.x line protocol reference (which
//! VictoriaMetrics follows too): in a measurement `\,` and `\ ` are escapes;
//! in tag keys, tag values and field keys `\,`, `\=` and `\ `; in all three
//! `\\` is one backslash, and a backslash before any other character is
//! itself. String field values escape `"` and `\`.

use crate::point::{FieldValue, Point};

/// Why a line is not line protocol; `column` is 0-based, in bytes.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line protocol, column {column}: {message}")]
pub struct ParseError {
    /// Where the parser stopped.
    pub column: usize,
    /// What it expected there.
    pub message: String,
}

/// Parse every non-empty line of `text`.
pub fn parse_lines(text: &str) -> Result<Vec<Point>, ParseError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect()
}

/// Parse one line: `measurement[,tag=value...] field=value[,...] timestamp`.
pub fn parse_line(line: &str) -> Result<Point, ParseError> {
    let mut c = Cursor { s: line, at: 0 };
    let measurement = c.name(&[',', ' '], &[',', ' '])?;
    let mut tags = Vec::new();
    while c.eat(',') {
        let key = c.name(&['='], &[',', '=', ' '])?;
        c.expect('=')?;
        let value = c.name(&[',', ' '], &[',', '=', ' '])?;
        tags.push((key, value));
    }
    c.expect(' ')?;
    let mut fields = Vec::new();
    loop {
        let key = c.name(&['='], &[',', '=', ' '])?;
        c.expect('=')?;
        fields.push((key, c.field_value()?));
        if !c.eat(',') {
            break;
        }
    }
    c.expect(' ')?;
    let rest = &line[c.at..];
    let timestamp_ns = rest.parse::<i64>().map_err(|_| ParseError {
        column: c.at,
        message: format!("expected an integer timestamp, got {rest:?}"),
    })?;
    Ok(Point {
        measurement,
        tags,
        fields,
        timestamp_ns,
    })
}

struct Cursor<'a> {
    s: &'a str,
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<char> {
        self.s[self.at..].chars().next()
    }

    fn eat(&mut self, want: char) -> bool {
        let hit = self.peek() == Some(want);
        if hit {
            self.at += want.len_utf8();
        }
        hit
    }

    fn expect(&mut self, want: char) -> Result<(), ParseError> {
        if self.eat(want) {
            Ok(())
        } else {
            Err(self.error(format!("expected {want:?}")))
        }
    }

    fn error(&self, message: String) -> ParseError {
        ParseError {
            column: self.at,
            message,
        }
    }

    /// A measurement, key or tag value: up to an unescaped `stop`
    /// character; `escapable` are the characters a backslash escapes here
    /// (besides the backslash itself).
    fn name(&mut self, stop: &[char], escapable: &[char]) -> Result<String, ParseError> {
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            if stop.contains(&ch) {
                break;
            }
            self.at += ch.len_utf8();
            if ch == '\\'
                && let Some(next) = self.peek().filter(|n| *n == '\\' || escapable.contains(n))
            {
                self.at += next.len_utf8();
                out.push(next);
            } else {
                out.push(ch);
            }
        }
        if out.is_empty() {
            return Err(self.error("expected a name".into()));
        }
        Ok(out)
    }

    fn field_value(&mut self) -> Result<FieldValue, ParseError> {
        if self.eat('"') {
            let mut out = String::new();
            loop {
                let Some(ch) = self.peek() else {
                    return Err(self.error("unterminated string field".into()));
                };
                self.at += ch.len_utf8();
                match ch {
                    '"' => return Ok(FieldValue::Str(out)),
                    '\\' if matches!(self.peek(), Some('"' | '\\')) => {
                        out.push(self.peek().expect("matched"));
                        self.at += 1;
                    }
                    other => out.push(other),
                }
            }
        }
        let start = self.at;
        let len = self.s[start..]
            .find([',', ' '])
            .unwrap_or(self.s.len() - start);
        self.at += len;
        let text = &self.s[start..start + len];
        let value = match text {
            "t" | "T" | "true" | "True" | "TRUE" => Some(FieldValue::Bool(true)),
            "f" | "F" | "false" | "False" | "FALSE" => Some(FieldValue::Bool(false)),
            _ => match text.strip_suffix('i') {
                Some(int) => int.parse().ok().map(FieldValue::Int),
                None => text.parse().ok().map(FieldValue::Float),
            },
        };
        value.ok_or_else(|| ParseError {
            column: start,
            message: format!("expected a field value, got {text:?}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(p: &Point) -> Point {
        let mut line = String::new();
        assert!(p.write_line_protocol(&mut line));
        parse_line(line.trim_end()).unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn every_special_character_in_every_position_survives() {
        let specials = [
            ",", "=", " ", "\"", "\\", "a\\", "\\,", "\\=", "\\ ", "a\\b", "\\\\", "é,\\\"",
        ];
        for s in specials {
            let p = Point::new(format!("m{s}"), 60_000)
                .tag(format!("k{s}"), format!("v{s}"))
                .tag("next", "after")
                .field(format!("f{s}"), FieldValue::Str(format!("s{s}")))
                .field("n", FieldValue::Int(-3))
                .field("x", FieldValue::Float(0.25))
                .field("b", FieldValue::Bool(false));
            assert_eq!(round_trip(&p), p, "special {s:?}");
        }
    }

    #[test]
    fn malformed_lines_say_where() {
        let e = parse_line("m,t=1 x=abc 1").unwrap_err();
        assert_eq!(e.column, 8);
        assert!(e.message.contains("\"abc\""), "{e}");
        assert!(parse_line("m,t x=1 1").is_err());
        assert!(parse_line("m x=\"open 1").is_err());
        assert!(parse_line("m x=1 soon").is_err());
    }
}
