//! SIGKILL kvsync at random moments during a burst of changes, many times over: after every kill each
//! destination holds a complete version, and the next start cleans up and converges.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use kvsync_tests::kvsync::Daemon;
use kvsync_tests::wait;

/// Every value is `<version>:` followed by 8 KiB of the version's last digit, so a torn or mixed
/// write cannot pass for a complete one.
fn value(v: u64) -> String {
    format!("{v}:{}", ((v % 10) as u8 + b'0') as char).to_string() + &((v % 10).to_string().repeat(8192))
}

fn complete(text: &str) -> bool {
    let Some((v, body)) = text.split_once(':') else { return false };
    let Ok(v) = v.parse::<u64>() else { return false };
    text == value(v) && body.len() == 8193
}

#[test]
fn killed_at_random_moments_never_leaves_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv");
    let out = dir.path().join("out");
    fs::create_dir_all(kv.join("app")).unwrap();
    fs::create_dir_all(&out).unwrap();
    let put = |v: u64| {
        for key in ["a", "b", "c"] {
            let p = kv.join("app").join(key);
            fs::write(p.with_extension("..tmp"), value(v)).unwrap();
            fs::rename(p.with_extension("..tmp"), &p).unwrap();
        }
    };
    put(0);
    let cfg = dir.path().join("k.yaml");
    fs::write(
        &cfg,
        format!(
            "sources:\n  - {{ name: l, type: file, path: {} }}\nhttp: {{ listen: \"\" }}\noutputs:\n  \
             - {{ name: j, source: l, prefix: app/, format: json, destination: {o}/app.json }}\n  \
             - {{ name: f, source: l, prefix: app/, format: files, destination: {o}/files }}\n",
            kv.display(),
            o = out.display()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let check_outputs = |round: usize| {
        if let Ok(text) = fs::read_to_string(out.join("app.json")) {
            let j: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("round {round}: app.json is not complete JSON: {e}"));
            for key in ["a", "b", "c"] {
                let v = j[key].as_str().unwrap_or_else(|| panic!("round {round}: app.json lacks {key}"));
                assert!(complete(v), "round {round}: app.json holds a torn value for {key}");
            }
        }
        if out.join("files/..data").exists() {
            for key in ["a", "b", "c"] {
                let text = fs::read_to_string(out.join("files").join(key))
                    .unwrap_or_else(|e| panic!("round {round}: files/{key} is missing: {e}"));
                assert!(complete(&text), "round {round}: files/{key} is torn");
            }
        }
    };

    let start = Instant::now();
    let mut version = 0u64;
    let mut rounds = 0;
    // 100 kills, bounded in time.
    while rounds < 100 && start.elapsed() < Duration::from_secs(90) {
        rounds += 1;
        let d = Daemon::start(&["run", "--config", &cfg]);
        let kill_after = Duration::from_millis(fastrand_ms(rounds));
        let t = Instant::now();
        while t.elapsed() < kill_after {
            version += 1;
            put(version);
            std::thread::sleep(Duration::from_millis(2));
        }
        d.signal(9);
        drop(d);
        check_outputs(rounds);
    }
    assert!(rounds >= 50, "only {rounds} rounds ran in the time bound");

    // A clean start converges and removes every stray temp file and old generation.
    let d = Daemon::start(&["run", "--config", &cfg]);
    version += 1;
    put(version);
    wait::file_is(&out.join("files/a"), &value(version), Duration::from_secs(20));
    wait::until(Duration::from_secs(20), "app.json to converge", || {
        fs::read_to_string(out.join("app.json")).is_ok_and(|t| t.contains(&format!("\"{version}:")))
    });
    let strays: Vec<String> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("kvsync-tmp"))
        .collect();
    assert!(strays.is_empty(), "stray temp files remain: {strays:?}");
    // What interrupted runs left goes at the first render; two generations remain: the current one
    // and the spare kept to become the next (the replaced generation, or a copy made in the
    // background). Give the commit and the copy a moment to finish.
    let files = out.join("files");
    wait::until(Duration::from_secs(10), "the current generation and one spare to remain", || {
        let gens = generation_dirs(&files);
        let current = fs::read_link(files.join("..data")).map(|t| t.to_string_lossy().into_owned());
        gens.len() == 2 && current.is_ok_and(|c| gens.contains(&c))
    });
    drop(d);
}

fn generation_dirs(dest: &Path) -> Vec<String> {
    fs::read_dir(dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data")
        .collect()
}

/// A spread of kill delays (10..160 ms) without a random-number dependency.
fn fastrand_ms(round: usize) -> u64 {
    let x = (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
    10 + x * 150 / 63
}
