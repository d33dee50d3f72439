//! Prefix arithmetic: which prefixes cover which, and which keys fall under a prefix.

/// Reduces a set of requested prefixes to the ones that must really be watched: a prefix that
/// lies under another requested prefix (`config/app/` under `config/`) is served by the wider one.
/// The result is sorted and free of duplicates.
pub fn widest(prefixes: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut all: Vec<String> = prefixes.into_iter().collect();
    all.sort();
    all.dedup();
    let mut out: Vec<String> = Vec::with_capacity(all.len());
    for p in all {
        // Sorted order puts a covering prefix before everything it covers.
        if out.last().is_some_and(|last| p.starts_with(last.as_str())) {
            continue;
        }
        out.push(p);
    }
    out
}

/// The watched prefix (one of `watched`) that serves `prefix`.
pub fn covering<'a>(watched: &'a [String], prefix: &str) -> Option<&'a String> {
    watched.iter().find(|w| prefix.starts_with(w.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn narrower_prefixes_fold_into_wider() {
        assert_eq!(
            widest(s(&["config/app/", "config/", "other/", "config/app/", "config/db/"])),
            s(&["config/", "other/"])
        );
        assert_eq!(widest(s(&["a/", ""])), s(&[""]));
        // `app` covers `app2/` textually, as it does on the server side.
        assert_eq!(widest(s(&["app2/", "app"])), s(&["app"]));
    }

    #[test]
    fn covering_finds_the_watch() {
        let w = s(&["config/", "other/"]);
        assert_eq!(covering(&w, "config/app/").unwrap(), "config/");
        assert!(covering(&w, "nope/").is_none());
    }
}
