//! A blocking HTTP/1.1 GET for the tests, and the parsing of what kvsync's endpoint answers.
//!
//! Written on std's TcpStream so that a test reads exactly the bytes the daemon sent, through no
//! client library that might smooth over a malformed answer.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One answer: status code, headers (lower-cased names) and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// GET `path` from `addr` (`127.0.0.1:port`); Err when nothing answers or the answer is not HTTP.
pub fn get(addr: &str, path: &str) -> Result<Answer, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| format!("read {addr}{path}: {e}"))?;
    let raw = String::from_utf8(raw).map_err(|e| format!("{addr}{path}: answer is not UTF-8: {e}"))?;
    let (head, body) = raw.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}{path}: no header end in {raw:?}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{addr}{path}: bad status line {status_line:?}"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect::<BTreeMap<_, _>>();
    // Connection: close and a Content-Length (or chunked) body; ours are small and sent whole.
    let body = if headers.get("transfer-encoding").map(|t| t == "chunked").unwrap_or(false) {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok(Answer { status, headers, body })
}

fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or("bad chunk")?;
        let n = usize::from_str_radix(size.trim(), 16).map_err(|e| format!("bad chunk size {size:?}: {e}"))?;
        if n == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..n).ok_or("short chunk")?);
        s = rest.get(n + 2..).ok_or("short chunk")?;
    }
}

/// The address in kvsync's "http endpoint listening on http://ADDR" log line, if logged yet.
pub fn endpoint_in_log(log: &str) -> Option<String> {
    let rest = log.split("listening on http://").nth(1)?;
    let end = rest.find(|c: char| c.is_whitespace() || c == '"' || c == '/').unwrap_or(rest.len());
    Some(rest[..end].to_string())
}

/// A scrape in the Prometheus text format (0.0.4), parsed strictly: every line is `# HELP`, `# TYPE`
/// or `name{labels} value`; every sample belongs to a family that has a TYPE.
#[derive(Debug, Default)]
pub struct Scrape {
    /// `name{label="v",...}` exactly as exposed -> value.
    pub samples: BTreeMap<String, f64>,
    /// family name -> type.
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut s = Scrape::default();
        for (i, line) in text.lines().enumerate() {
            let at = |m: &str| format!("line {}: {m}: {line:?}", i + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').ok_or_else(|| at("TYPE without a type"))?;
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                    return Err(at("unknown type"));
                }
                s.types.insert(name.to_string(), ty.to_string());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            if line.starts_with('#') {
                return Err(at("a comment that is neither HELP nor TYPE"));
            }
            let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().map_err(|_| at("value is not a number"))?,
            };
            let name = series.split('{').next().unwrap_or_default();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                return Err(at("bad metric name"));
            }
            let labels = &series[name.len()..];
            let well_formed = labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}'));
            if !well_formed {
                return Err(at("bad label set"));
            }
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix).filter(|f| s.types.get(*f).map(|t| t == "histogram").unwrap_or(false))
                })
                .unwrap_or(name);
            if !s.types.contains_key(family) {
                return Err(at("sample before its TYPE line"));
            }
            s.samples.insert(series.to_string(), value);
        }
        Ok(s)
    }

    /// The value of one series, e.g. `kvsync_output_writes_total{output="app"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.samples.get(series).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrape_parser_accepts_the_format_and_rejects_what_is_not() {
        let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 3\n\
                  # TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
        let s = Scrape::parse(ok).unwrap();
        assert_eq!(s.get("a_total{x=\"1\"}"), Some(3.0));
        assert_eq!(s.get("h_count"), Some(1.0));
        for bad in [
            "a 1\n",                         // no TYPE
            "# TYPE a gauge\na one\n",       // not a number
            "# TYPE a gauge\na{x=\"1\" 1\n", // unclosed labels
            "# TYPE a meter\na 1\n",         // unknown type
            "# comment\n",                   // neither HELP nor TYPE
            "# TYPE a gauge\nb-c 1\n",       // bad name
        ] {
            assert!(Scrape::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn endpoint_address_from_text_and_json_logs() {
        let text =
            "INFO kvsync::endpoint: http endpoint listening on http://127.0.0.1:4567 (/healthz) addr=127.0.0.1:4567";
        assert_eq!(endpoint_in_log(text).as_deref(), Some("127.0.0.1:4567"));
        let json =
            r#"{"message":"http endpoint listening on http://127.0.0.1:4567 (/healthz)","addr":"127.0.0.1:4567"}"#;
        assert_eq!(endpoint_in_log(json).as_deref(), Some("127.0.0.1:4567"));
        assert_eq!(endpoint_in_log("nothing yet"), None);
    }
}
