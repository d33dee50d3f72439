//! Line diffs in the unified format (`diff -u`), for `kvsync once --dry-run` and `kvsync check --render`.
//!
//! Myers' O((N+M)·D) algorithm over the lines that differ once the common head and tail are set
//! aside. A diff with more than `MAX_EDITS` edits is shown as the old lines removed and the new ones
//! added, which is still a correct diff, only not the shortest.

/// Lines of context around each change, as `diff -u` shows.
const CONTEXT: usize = 3;
/// Past this many edits the shortest diff is not searched for.
const MAX_EDITS: usize = 4000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Same,
    Del,
    Add,
}

/// How many lines a diff adds and removes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub added: usize,
    pub removed: usize,
}

/// Splits text into lines, each keeping its `\n` (the last may lack one).
fn lines(text: &str) -> Vec<&str> {
    text.split_inclusive('\n').collect()
}

/// The edit script turning `a` into `b`: one op per line of either.
fn script(a: &[&str], b: &[&str]) -> Vec<Op> {
    let head = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let tail = a[head..].iter().rev().zip(b[head..].iter().rev()).take_while(|(x, y)| x == y).count();
    let (ma, mb) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    let mut ops = vec![Op::Same; head];
    ops.extend(myers(ma, mb).unwrap_or_else(|| {
        let mut o = vec![Op::Del; ma.len()];
        o.extend(std::iter::repeat_n(Op::Add, mb.len()));
        o
    }));
    ops.extend(std::iter::repeat_n(Op::Same, tail));
    ops
}

/// Myers' greedy shortest edit script; None when it needs more than `MAX_EDITS` edits.
fn myers(a: &[&str], b: &[&str]) -> Option<Vec<Op>> {
    let (n, m) = (a.len() as isize, b.len() as isize);
    let max = (n + m) as usize;
    if max == 0 {
        return Some(Vec::new());
    }
    let limit = max.min(MAX_EDITS);
    let offset = max as isize + 1;
    let mut v = vec![0isize; 2 * max + 3];
    let mut trace: Vec<Vec<isize>> = Vec::new();
    for d in 0..=limit as isize {
        trace.push(v.clone());
        let mut k = -d;
        while k <= d {
            let i = (k + offset) as usize;
            let mut x = if k == -d || (k != d && v[i - 1] < v[i + 1]) { v[i + 1] } else { v[i - 1] + 1 };
            let mut y = x - k;
            while x < n && y < m && a[x as usize] == b[y as usize] {
                x += 1;
                y += 1;
            }
            v[i] = x;
            if x >= n && y >= m {
                return Some(backtrack(&trace, n, m, offset, d));
            }
            k += 2;
        }
    }
    None
}

fn backtrack(trace: &[Vec<isize>], n: isize, m: isize, offset: isize, dmax: isize) -> Vec<Op> {
    let mut ops = Vec::new();
    let (mut x, mut y) = (n, m);
    for d in (1..=dmax).rev() {
        let v = &trace[d as usize];
        let k = x - y;
        let i = (k + offset) as usize;
        let prev_k = if k == -d || (k != d && v[i - 1] < v[i + 1]) { k + 1 } else { k - 1 };
        let prev_x = v[(prev_k + offset) as usize];
        let prev_y = prev_x - prev_k;
        while x > prev_x && y > prev_y {
            ops.push(Op::Same);
            x -= 1;
            y -= 1;
        }
        ops.push(if x == prev_x { Op::Add } else { Op::Del });
        x = prev_x;
        y = prev_y;
    }
    while x > 0 && y > 0 {
        ops.push(Op::Same);
        x -= 1;
        y -= 1;
    }
    ops.reverse();
    ops
}

/// How many lines turning `old` into `new` adds and removes.
pub fn counts(old: &str, new: &str) -> Counts {
    let ops = script(&lines(old), &lines(new));
    Counts {
        added: ops.iter().filter(|o| **o == Op::Add).count(),
        removed: ops.iter().filter(|o| **o == Op::Del).count(),
    }
}

/// The unified diff turning `old` into `new`, with `---`/`+++` headers naming `old_name` and
/// `new_name`; empty when they are the same.
pub fn unified(old: &str, new: &str, old_name: &str, new_name: &str) -> String {
    if old == new {
        return String::new();
    }
    let (a, b) = (lines(old), lines(new));
    let ops = script(&a, &b);
    // Positions in a and b before each op.
    let mut pos = Vec::with_capacity(ops.len());
    let (mut i, mut j) = (0usize, 0usize);
    for op in &ops {
        pos.push((i, j));
        match op {
            Op::Same => {
                i += 1;
                j += 1;
            }
            Op::Del => i += 1,
            Op::Add => j += 1,
        }
    }
    let mut out = format!("--- {old_name}\n+++ {new_name}\n");
    let changed: Vec<usize> = ops.iter().enumerate().filter(|(_, o)| **o != Op::Same).map(|(i, _)| i).collect();
    let mut h = 0;
    while h < changed.len() {
        // A hunk: changes closer than 2×CONTEXT apart share it.
        let start = changed[h].saturating_sub(CONTEXT);
        let mut end = changed[h];
        while h + 1 < changed.len() && changed[h + 1] - end <= 2 * CONTEXT {
            h += 1;
            end = changed[h];
        }
        let end = (end + CONTEXT + 1).min(ops.len());
        h += 1;
        let (a0, b0) = pos[start];
        let a_len = ops[start..end].iter().filter(|o| **o != Op::Add).count();
        let b_len = ops[start..end].iter().filter(|o| **o != Op::Del).count();
        let range = |s: usize, l: usize| match l {
            0 => format!("{s},0"),
            1 => format!("{}", s + 1),
            _ => format!("{},{l}", s + 1),
        };
        out.push_str(&format!("@@ -{} +{} @@\n", range(a0, a_len), range(b0, b_len)));
        for (k, op) in ops[start..end].iter().enumerate() {
            let (ai, bi) = pos[start + k];
            let (mark, line) = match op {
                Op::Same => (' ', a[ai]),
                Op::Del => ('-', a[ai]),
                Op::Add => ('+', b[bi]),
            };
            out.push(mark);
            out.push_str(line);
            if !line.ends_with('\n') {
                out.push_str("\n\\ No newline at end of file\n");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Applies a unified diff to `old` (the way `patch` does, trusting the hunk positions).
    fn apply(old: &str, diff: &str) -> String {
        let a = lines(old);
        let mut out = String::new();
        let mut at = 0usize;
        let mut body = diff.lines().skip(2).peekable();
        while let Some(h) = body.next() {
            let spec = h.trim_start_matches("@@ -").split(' ').next().unwrap();
            let (s, l): (usize, usize) = match spec.split_once(',') {
                Some((s, l)) => (s.parse().unwrap(), l.parse().unwrap()),
                None => (spec.parse().unwrap(), 1),
            };
            let start = if l == 0 { s } else { s - 1 };
            while at < start {
                out.push_str(a[at]);
                at += 1;
            }
            while let Some(l) = body.next_if(|l| !l.starts_with("@@")) {
                let no_eol = body.next_if(|n| n.starts_with('\\')).is_some();
                let text = format!("{}{}", &l[1..], if no_eol { "" } else { "\n" });
                match &l[..1] {
                    " " => {
                        out.push_str(&text);
                        at += 1;
                    }
                    "-" => at += 1,
                    _ => out.push_str(&text),
                }
            }
        }
        while at < a.len() {
            out.push_str(a[at]);
            at += 1;
        }
        out
    }

    #[test]
    fn a_small_change_has_context_and_ranges_like_diff_u() {
        let old = "a\nb\nc\nd\ne\nf\ng\nh\n";
        let new = "a\nb\nc\nd\nE\nf\ng\nh\n";
        assert_eq!(
            unified(old, new, "a/x", "b/x"),
            "--- a/x\n+++ b/x\n@@ -2,7 +2,7 @@\n b\n c\n d\n-e\n+E\n f\n g\n h\n"
        );
        assert_eq!(counts(old, new), Counts { added: 1, removed: 1 });
        assert_eq!(unified(old, old, "a", "b"), "");
    }

    #[test]
    fn new_files_missing_newlines_and_far_apart_changes() {
        assert_eq!(unified("", "x\ny\n", "a", "b"), "--- a\n+++ b\n@@ -0,0 +1,2 @@\n+x\n+y\n");
        assert_eq!(
            unified("x", "y", "a", "b"),
            "--- a\n+++ b\n@@ -1 +1 @@\n-x\n\\ No newline at end of file\n+y\n\\ No newline at end of file\n"
        );
        let old: String = (0..30).map(|i| format!("line {i}\n")).collect();
        let new = old.replace("line 2\n", "two\n").replace("line 27\n", "twenty-seven\n");
        let d = unified(&old, &new, "a", "b");
        assert_eq!(d.matches("@@ -").count(), 2, "{d}");
    }

    proptest::proptest! {
        /// Any two texts: the diff applied to the old text gives the new one, and the counts match it.
        #[test]
        fn the_diff_applied_gives_the_new_text(
            old in proptest::collection::vec(proptest::sample::select(vec!["a\n", "b\n", "c\n", "d", "\n"]), 0..30),
            new in proptest::collection::vec(proptest::sample::select(vec!["a\n", "b\n", "c\n", "d", "\n"]), 0..30),
        ) {
            // "d" without a newline may only end a text.
            let fix = |v: Vec<&str>| -> String { v.iter().map(|l| if *l == "d" { "d\n" } else { l }).collect::<String>() + "end" };
            let (old, new) = (fix(old), fix(new));
            let d = unified(&old, &new, "a", "b");
            proptest::prop_assert_eq!(apply(&old, &d), new.clone());
            let c = counts(&old, &new);
            proptest::prop_assert_eq!(c.added, d.lines().filter(|l| l.starts_with('+') && !l.starts_with("+++")).count());
            proptest::prop_assert_eq!(c.removed, d.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).count());
        }
    }
}
