//! SIGKILL kvsync at random moments during a burst of changes, 100 times per source (file, etcd,
//! Consul): after every kill each destination holds a complete version, the `files` output is one
//! generation as a set (never a mix of two), and the next start cleans up and converges.
//!
//! That a kill landed inside a commit is seen from outside, on disk, once the process is dead: a
//! staged temp file beside `app.json`, a `..data_tmp` link, or a generation directory other than the
//! one `..data` points at that is not a complete version (being built or patched). Half of the kills
//! wait for a staged file or a new generation to appear and strike at once; the rest come at a spread
//! of delays. Each test asserts that at least 20 of its 100 kills landed inside a commit window, so
//! the test proves what it claims rather than killing an idle process 100 times.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kvsync_tests::consul_server::ConsulServer;
use kvsync_tests::etcd_server::{EtcdServer, TestClient};
use kvsync_tests::kvsync::Daemon;
use kvsync_tests::wait;

const KEYS: [&str; 3] = ["a", "b", "c"];
const ROUNDS: usize = 100;
const MIN_IN_WINDOW: usize = 20;

/// Every value is `<version>:` followed by 8 KiB of the version's last digit, so a torn or mixed
/// write cannot pass for a complete one.
fn value(v: u64) -> String {
    format!("{v}:{}", ((v % 10) as u8 + b'0') as char) + &((v % 10).to_string().repeat(8192))
}

/// The version of a complete value; None for a torn one.
fn version_of(text: &str) -> Option<u64> {
    let (v, body) = text.split_once(':')?;
    let v = v.parse::<u64>().ok()?;
    (text == value(v) && body.len() == 8193).then_some(v)
}

/// Where the test's data lives and how a new version is written.
enum Backend {
    /// A directory tree (`kv/`); the three keys are renamed into place one after the other.
    File(std::path::PathBuf),
    /// etcd (with the runtime its client runs on); one put per key.
    Etcd(Box<(EtcdServer, TestClient, tokio::runtime::Runtime)>),
    /// Consul; the three keys in one write (as a transaction), so every version is whole.
    Consul(ConsulServer),
}

impl Backend {
    fn put(&self, v: u64) {
        match self {
            Backend::File(kv) => {
                // Staged beside the watched tree, so the source never sees a temp file as a key.
                let tmp = kv.with_extension("staged");
                for key in KEYS {
                    fs::write(&tmp, value(v)).unwrap();
                    fs::rename(&tmp, kv.join("app").join(key)).unwrap();
                }
            }
            Backend::Etcd(e) => e.2.block_on(async {
                let c = &e.1;
                for key in KEYS {
                    c.put(&format!("app/{key}"), value(v)).await.unwrap();
                }
            }),
            Backend::Consul(consul) => {
                let entries: Vec<(String, Bytes)> =
                    KEYS.iter().map(|k| (format!("app/{k}"), Bytes::from(value(v)))).collect();
                let refs: Vec<(&str, Bytes)> = entries.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
                consul.put_all(&refs);
            }
        }
    }

    /// Whether every key of one version is written in one step, so every rendering holds one version.
    fn versions_are_whole(&self) -> bool {
        matches!(self, Backend::Consul(_))
    }

    fn source(&self) -> String {
        match self {
            Backend::File(kv) => format!("{{ name: s, type: file, path: {} }}", kv.display()),
            Backend::Etcd(e) => format!("{{ name: s, type: etcd, endpoints: [{}] }}", e.0.endpoint()),
            Backend::Consul(c) => format!("{{ name: s, type: consul, address: {}, wait: 5s }}", c.url()),
        }
    }
}

/// What one kill left on disk.
#[derive(Debug, Default)]
struct Landed {
    /// A staged `app.json` (its temp file was still there).
    staged_file: bool,
    /// The `files` output was between building a generation and linking it.
    generation_window: bool,
}

impl Landed {
    fn in_window(&self) -> bool {
        self.staged_file || self.generation_window
    }
}

fn names(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// The versions of the keys in a generation directory; None when a key is missing or torn.
fn generation_versions(dir: &Path) -> Option<Vec<u64>> {
    KEYS.iter().map(|k| fs::read_to_string(dir.join(k)).ok().and_then(|t| version_of(&t))).collect()
}

/// Checks the destinations after a kill, and says whether it landed inside a commit.
#[track_caller]
fn check_after_kill(out: &Path, round: usize, whole: bool, newest: u64) -> Landed {
    let mut landed =
        Landed { staged_file: names(out).iter().any(|n| n.contains("kvsync-tmp")), generation_window: false };
    // app.json: complete JSON, every value complete, one version when versions are written whole.
    if let Ok(text) = fs::read_to_string(out.join("app.json")) {
        let j: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("round {round}: app.json is not complete JSON: {e}"));
        let mut versions = BTreeSet::new();
        for key in KEYS {
            let v = j[key].as_str().unwrap_or_else(|| panic!("round {round}: app.json lacks {key}"));
            let v = version_of(v).unwrap_or_else(|| panic!("round {round}: app.json holds a torn value for {key}"));
            assert!(v <= newest, "round {round}: app.json holds version {v}, newer than any written ({newest})");
            versions.insert(v);
        }
        if whole {
            assert_eq!(versions.len(), 1, "round {round}: app.json mixes versions {versions:?}");
        }
    }
    // files: the visible entries are exactly the keys, each a link through `..data`, and what they
    // show is the generation `..data` points at, whole: one generation as a set, never a mix of two.
    let files = out.join("files");
    if let Ok(current) = fs::read_link(files.join("..data")) {
        let current = current.to_string_lossy().into_owned();
        let visible: BTreeSet<String> = names(&files).into_iter().filter(|n| !n.starts_with("..")).collect();
        assert_eq!(visible, KEYS.iter().map(|k| k.to_string()).collect(), "round {round}: visible entries");
        let through_links =
            generation_versions(&files).unwrap_or_else(|| panic!("round {round}: a visible file is missing or torn"));
        for key in KEYS {
            assert_eq!(
                fs::read_link(files.join(key)).unwrap(),
                Path::new("..data").join(key),
                "round {round}: files/{key} does not link through ..data"
            );
        }
        let in_generation = generation_versions(&files.join(&current))
            .unwrap_or_else(|| panic!("round {round}: the generation ..data points at ({current}) is not whole"));
        assert_eq!(through_links, in_generation, "round {round}: the visible files are not ..data's generation");
        assert!(in_generation.iter().all(|v| *v <= newest), "round {round}: a version newer than any written");
        if whole {
            let set: BTreeSet<u64> = in_generation.iter().copied().collect();
            assert_eq!(set.len(), 1, "round {round}: the files output mixes versions {set:?}");
        }
        // Inside the window: the link swap was under way, or another generation is not a whole,
        // consistent version (being built, or a spare being patched).
        landed.generation_window = names(&files).iter().any(|n| n == "..data_tmp")
            || names(&files).iter().filter(|n| n.starts_with("..") && *n != "..data" && **n != current).any(|g| {
                match generation_versions(&files.join(g)) {
                    None => true,
                    Some(vs) => whole && vs.iter().collect::<BTreeSet<_>>().len() > 1,
                }
            });
    } else if files.exists() {
        // Before the first link: any generation there is being built.
        landed.generation_window = names(&files).iter().any(|n| n.starts_with(".."));
    }
    landed
}

fn generation_dirs(dest: &Path) -> Vec<String> {
    names(dest).into_iter().filter(|n| n.starts_with("..") && n != "..data").collect()
}

/// A spread of kill delays (10..160 ms) without a random-number dependency.
fn spread_ms(round: usize) -> u64 {
    let x = (round as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
    10 + x * 150 / 63
}

/// Whether a commit is visibly under way in `out`: a staged file, the link swap, or a generation
/// directory that was not there when the round began and that `..data` does not point at.
fn commit_under_way(out: &Path, before: &BTreeSet<String>) -> bool {
    if names(out).iter().any(|n| n.contains("kvsync-tmp")) {
        return true;
    }
    let files = out.join("files");
    let current = fs::read_link(files.join("..data")).ok().map(|t| t.to_string_lossy().into_owned());
    names(&files).iter().any(|n| {
        n == "..data_tmp"
            || (n.starts_with("..") && n != "..data" && !before.contains(n) && Some(n) != current.as_ref())
    })
}

fn kill_during_bursts(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    fs::create_dir_all(&out).unwrap();
    backend.put(0);
    let cfg = dir.path().join("k.yaml");
    fs::write(
        &cfg,
        format!(
            "sources:\n  - {}\nhttp: {{ listen: \"\" }}\nretry: {{ initial: 20ms, max: 200ms }}\noutputs:\n  \
             - {{ name: j, source: s, prefix: app/, format: json, destination: {o}/app.json }}\n  \
             - {{ name: f, source: s, prefix: app/, format: files, destination: {o}/files }}\n",
            backend.source(),
            o = out.display()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let whole = backend.versions_are_whole();

    let start = Instant::now();
    let mut version = 0u64;
    let mut rounds = 0;
    let mut in_window = 0;
    let (mut staged, mut generations) = (0, 0);
    while rounds < ROUNDS && start.elapsed() < Duration::from_secs(240) {
        rounds += 1;
        let d = Daemon::start(&["run", "--config", &cfg]);
        let t = Instant::now();
        if rounds % 2 == 0 {
            // Strike as soon as a commit is seen under way (bounded: a spread delay if none is seen).
            let before: BTreeSet<String> = names(&out.join("files")).into_iter().collect();
            let mut last_put = Instant::now() - Duration::from_secs(1);
            while t.elapsed() < Duration::from_secs(3) {
                if last_put.elapsed() >= Duration::from_millis(3) {
                    version += 1;
                    backend.put(version);
                    last_put = Instant::now();
                }
                if commit_under_way(&out, &before) {
                    break;
                }
            }
        } else {
            let kill_after = Duration::from_millis(spread_ms(rounds));
            while t.elapsed() < kill_after {
                version += 1;
                backend.put(version);
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        d.signal(9);
        drop(d);
        let landed = check_after_kill(&out, rounds, whole, version);
        in_window += landed.in_window() as usize;
        staged += landed.staged_file as usize;
        generations += landed.generation_window as usize;
    }
    eprintln!(
        "{rounds} kills, {in_window} inside a commit ({staged} with a staged app.json, {generations} while a \
         generation was being built or linked)"
    );
    assert_eq!(rounds, ROUNDS, "only {rounds} rounds ran in the time bound");
    assert!(
        in_window >= MIN_IN_WINDOW,
        "only {in_window} of {rounds} kills landed inside a commit ({staged} staged app.json, {generations} \
         generations): the test did not exercise what it claims"
    );

    // A clean start converges and removes every stray temp file and old generation.
    let d = Daemon::start(&["run", "--config", &cfg]);
    version += 1;
    backend.put(version);
    wait::file_is(&out.join("files/a"), &value(version), Duration::from_secs(30));
    wait::until(Duration::from_secs(30), "app.json to converge", || {
        fs::read_to_string(out.join("app.json")).is_ok_and(|t| t.contains(&format!("\"{version}:")))
    });
    let strays: Vec<String> = names(&out).into_iter().filter(|n| n.contains("kvsync-tmp")).collect();
    assert!(strays.is_empty(), "stray temp files remain: {strays:?}");
    // What interrupted runs left goes at the first render; two generations remain: the current one
    // and the spare kept to become the next (the replaced generation, or a copy made in the
    // background).
    let files = out.join("files");
    wait::until(Duration::from_secs(10), "the current generation and one spare to remain", || {
        let gens = generation_dirs(&files);
        let current = fs::read_link(files.join("..data")).map(|t| t.to_string_lossy().into_owned());
        gens.len() == 2 && current.is_ok_and(|c| gens.contains(&c))
    });
    drop(d);
}

#[test]
fn killed_at_random_moments_never_leaves_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv");
    fs::create_dir_all(kv.join("app")).unwrap();
    kill_during_bursts(Backend::File(kv));
}

#[test]
fn killed_at_random_moments_with_an_etcd_source() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let etcd = rt.block_on(EtcdServer::start()).unwrap();
    let client = rt.block_on(etcd.client()).unwrap();
    kill_during_bursts(Backend::Etcd(Box::new((etcd, client, rt))));
}

#[test]
fn killed_at_random_moments_with_a_consul_source() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let consul = rt.block_on(ConsulServer::start()).unwrap();
    kill_during_bursts(Backend::Consul(consul));
    drop(rt);
}
