//! Output points (the contract's InfluxDB measurements) and their line
//! protocol encoding.
//!
//! Escaping follows the InfluxDB line protocol reference: measurements escape
//! commas and spaces; tag keys, tag values and field keys escape commas,
//! equals signs and spaces; string field values escape `"` and `\`.
//! Newlines cannot be represented in line protocol and become spaces.
//!
//! A backslash in a measurement, tag or field key is doubled wherever it
//! would otherwise escape what follows it: at the end, before a character
//! that position escapes, or before another backslash (InfluxDB 2.x and
//! VictoriaMetrics read `\\` as one backslash). A lone backslash before an
//! ordinary character is written as it is, which every reader, InfluxDB 1.x
//! included, reads as itself. InfluxDB 1.x never unescapes `\\`: it refuses
//! a tag value ending in a backslash (it has no escape for it) and keeps the
//! doubled backslash before a separator or another backslash.

use std::fmt::Write;

/// A field value; integers carry the `i` suffix on the wire.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum FieldValue {
    /// Written as `3i`.
    Int(i64),
    /// Written as a plain decimal; non-finite values are not written at all.
    Float(f64),
    /// Written as `true` / `false`.
    Bool(bool),
    /// Written quoted and escaped.
    Str(String),
}

/// One point of one measurement at one timestamp (a window end).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Point {
    /// Measurement name, e.g. `latency`.
    pub measurement: String,
    /// Tags in the order written; series identity in InfluxDB.
    pub tags: Vec<(String, String)>,
    /// Fields in the order written.
    pub fields: Vec<(String, FieldValue)>,
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
}

impl Point {
    /// A point with no tags or fields yet, at `timestamp_ms` (event time).
    pub fn new(measurement: impl Into<String>, timestamp_ms: i64) -> Self {
        Self {
            measurement: measurement.into(),
            tags: Vec::new(),
            fields: Vec::new(),
            timestamp_ns: timestamp_ms * 1_000_000,
        }
    }

    /// Add a tag (builder style).
    pub fn tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.tags.push((key.into(), value.into()));
        self
    }

    /// Add a field (builder style).
    pub fn field(mut self, key: impl Into<String>, value: FieldValue) -> Self {
        self.fields.push((key.into(), value));
        self
    }

    /// The value of a tag, if present.
    pub fn tag_value(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of a field, if present.
    pub fn field_value(&self, key: &str) -> Option<&FieldValue> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Append this point as one line of line protocol (with `\n`) to `out`.
    /// Returns false (and writes nothing) when no field has a writable value.
    pub fn write_line_protocol(&self, out: &mut String) -> bool {
        let start = out.len();
        escape_into(out, &self.measurement, &[',', ' ']);
        for (k, v) in &self.tags {
            if v.is_empty() {
                continue; // InfluxDB rejects empty tag values; absent is the same series.
            }
            out.push(',');
            escape_into(out, k, &[',', '=', ' ']);
            out.push('=');
            escape_into(out, v, &[',', '=', ' ']);
        }
        let mut sep = ' ';
        for (k, v) in &self.fields {
            if let FieldValue::Float(x) = v
                && !x.is_finite()
            {
                continue;
            }
            out.push(sep);
            sep = ',';
            escape_into(out, k, &[',', '=', ' ']);
            out.push('=');
            match v {
                FieldValue::Int(i) => {
                    let _ = write!(out, "{i}i");
                }
                FieldValue::Float(x) => {
                    let _ = write!(out, "{x}");
                }
                FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
                FieldValue::Str(s) => {
                    out.push('"');
                    escape_into(out, s, &['"', '\\']);
                    out.push('"');
                }
            }
        }
        if sep == ' ' {
            out.truncate(start);
            return false;
        }
        let _ = writeln!(out, " {}", self.timestamp_ns);
        true
    }
}

fn escape_into(out: &mut String, s: &str, special: &[char]) {
    let newline_free = |c: char| if c == '\n' || c == '\r' { ' ' } else { c };
    let mut chars = s.chars().map(newline_free).peekable();
    while let Some(c) = chars.next() {
        let escapes_next = c == '\\'
            && chars
                .peek()
                .is_none_or(|n| *n == '\\' || special.contains(n));
        if special.contains(&c) || escapes_next {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(p: &Point) -> String {
        let mut s = String::new();
        p.write_line_protocol(&mut s);
        s
    }

    #[test]
    fn escapes_every_special_character_in_its_place() {
        let p = Point::new("lat ency,x", 60_000)
            .tag("mo del", "a,b=c d")
            .tag("empty", "")
            .field("f=1", FieldValue::Str(r#"say "hi" \ bye"#.into()))
            .field("n", FieldValue::Int(-3))
            .field("x", FieldValue::Float(0.25))
            .field("ok", FieldValue::Bool(true));
        assert_eq!(
            line(&p),
            "lat\\ ency\\,x,mo\\ del=a\\,b\\=c\\ d f\\=1=\"say \\\"hi\\\" \\\\ bye\",n=-3i,x=0.25,ok=true 60000000000\n"
        );
    }

    #[test]
    fn non_finite_floats_are_skipped_and_empty_points_not_written() {
        let p = Point::new("m", 1)
            .field("a", FieldValue::Float(f64::NAN))
            .field("b", FieldValue::Float(1.0));
        assert_eq!(line(&p), "m b=1 1000000\n");
        let p = Point::new("m", 1).field("a", FieldValue::Float(f64::INFINITY));
        let mut s = String::from("keep\n");
        assert!(!p.write_line_protocol(&mut s));
        assert_eq!(s, "keep\n");
    }

    #[test]
    fn backslashes_never_escape_the_separator_after_them() {
        let p = Point::new("m\\", 1)
            .tag("surface", "search\\")
            .tag("k\\", "a\\,b")
            .tag("mid", "p\\q")
            .tag("run", "x\\\\y")
            .field("f\\", FieldValue::Str("s\\".into()));
        assert_eq!(
            line(&p),
            "m\\\\,surface=search\\\\,k\\\\=a\\\\\\,b,mid=p\\q,run=x\\\\\\y f\\\\=\"s\\\\\" 1000000\n"
        );
    }

    #[test]
    fn newlines_cannot_split_a_line() {
        let p = Point::new("m", 1)
            .tag("t", "a\nb")
            .field("s", FieldValue::Str("x\ny".into()));
        assert_eq!(line(&p), "m,t=a\\ b s=\"x y\" 1000000\n");
    }
}
