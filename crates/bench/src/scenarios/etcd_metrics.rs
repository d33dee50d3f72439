//! etcd's own Prometheus metrics, read from `/metrics` on its client port (a plain HTTP/1.1 GET: not
//! a gRPC call, so it is not counted in the gRPC figures it reads).

use std::time::Duration;

/// Bound on the read.
const CALL: Duration = Duration::from_secs(10);

/// The metrics text.
pub fn fetch(port: u16) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), CALL)?;
    s.set_read_timeout(Some(CALL))?;
    s.set_write_timeout(Some(CALL))?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

/// The sum of every series of the metric `name` in a Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with('{') || r.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn metric_sums_add_every_series_of_one_name_only() {
        let text = "# TYPE a counter\na{x=\"1\"} 2\na{x=\"2\"} 3.5\na_total 100\nab 7\na 1\n";
        assert_eq!(super::metric_sum(text, "a"), 6.5);
        assert_eq!(super::metric_sum(text, "a_total"), 100.0);
        assert_eq!(super::metric_sum(text, "missing"), 0.0);
    }
}
