//! Disk faults under a real daemon: a full file system and a file system made read-only mid-run, and
//! a bind-mounted destination file. The destination lives on a small tmpfs (or a bind mount) in a
//! private mount namespace made for the daemon (`unshare -m` as root, `unshare -Urm` otherwise), so
//! the test needs no mount on the machine; it reaches the mount through `/proc/<pid>/root` and changes
//! it with `nsenter`. When no such namespace can be had, the test fails unless
//! `KVSYNC_TEST_ALLOW_SKIP` names it. Each fault: the write fails cleanly, the old file stays, the
//! error names the path and the cause, and the next change after the fault clears is written.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kvsync_tests::kvsync::{self, Daemon};
use kvsync_tests::namespace::{self, Private};
use kvsync_tests::{skip, wait};

const T: Duration = Duration::from_secs(20);

/// Whether a private mount namespace can be had; records the skip (or fails) when not.
fn namespaces_or_skip(test: &str) -> bool {
    match namespace::mount_namespace_unavailable() {
        None => true,
        Some(why) => skip::require(false, test, &format!("no private mount namespace with a tmpfs: {why}")),
    }
}

fn put(kv: &Path, key: &str, value: &str) {
    let p = kv.join(key);
    fs::write(p.with_extension("..tmp"), value).unwrap();
    fs::rename(p.with_extension("..tmp"), &p).unwrap();
}

/// Starts kvsync, in a private mount namespace set up by `ns`, rendering the `file` source at `kv`
/// (prefix app/) as JSON into `dest`.
fn start_json_output(dir: &Path, kv: &Path, dest: &Path, ns: &Private) -> Daemon {
    let cfg = dir.join("k.yaml");
    fs::write(
        &cfg,
        format!(
            "sources:\n  - {{ name: l, type: file, path: {} }}\nhttp: {{ listen: \"\" }}\n\
             outputs:\n  - {{ name: app, source: l, prefix: app/, format: json, destination: {} }}\n",
            kv.display(),
            dest.display()
        ),
    )
    .unwrap();
    let cfg = cfg.display().to_string();
    let mut cmd = ns.command(&kvsync::binary(), &["run", "--config", &cfg]);
    cmd.env_remove("KVSYNC_LOG").env("NO_COLOR", "1").stdin(Stdio::null());
    Daemon::start_with(cmd)
}

#[test]
fn full_and_read_only_file_systems() {
    if !namespaces_or_skip("disk_faults::full_and_read_only_file_systems") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv");
    fs::create_dir_all(kv.join("app")).unwrap();
    // The mount point exists outside too (empty there); the 256 KiB tmpfs is the daemon's only.
    let mount_point = dir.path().join("disk");
    fs::create_dir_all(&mount_point).unwrap();
    let ns = Private::new(format!("mount -t tmpfs -o size=256k,mode=0755 tmpfs '{}'", mount_point.display()));
    let dest = mount_point.join("app.json");
    put(&kv, "app/v", "first");
    let d = start_json_output(dir.path(), &kv, &dest, &ns);
    let pid = d.pid();
    // What the daemon sees at `dest`, on its tmpfs.
    let seen = namespace::inside(pid, &dest);
    let disk = namespace::inside(pid, &mount_point);
    wait::until(T, "first render", || fs::read_to_string(&seen).is_ok_and(|t| t.contains("first")));
    assert!(!dest.exists(), "the tmpfs is private to the daemon's namespace");

    // Fill the disk, then change the value: the new file cannot be written.
    let filler = disk.join("filler");
    let filled = fs::write(&filler, vec![0u8; 512 * 1024]); // fails part-way with ENOSPC, leaving the disk full
    assert!(filled.is_err_and(|e| e.raw_os_error() == Some(28)), "the 256 KiB tmpfs is full after 512 KiB");
    put(&kv, "app/v", &"second".repeat(2000));
    d.wait_log("No space left on device", T);
    let log = d.log();
    assert!(log.contains("output `app`") && log.contains(&mount_point.display().to_string()), "{log}");
    assert!(fs::read_to_string(&seen).unwrap().contains("first"), "the old file stays");
    let strays = fs::read_dir(&disk)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("kvsync-tmp"))
        .count();
    assert_eq!(strays, 0, "a failed write leaves no temp file");

    // Space returns: the next change is written.
    fs::remove_file(&filler).unwrap();
    put(&kv, "app/v", "third");
    wait::until(T, "the write after space returns", || fs::read_to_string(&seen).is_ok_and(|t| t.contains("third")));

    // The file system turns read-only mid-run.
    namespace::run_inside(pid, &format!("mount -o remount,ro '{}'", mount_point.display()));
    assert!(fs::write(disk.join("probe"), "x").is_err(), "the remount took effect");
    put(&kv, "app/v", "fourth");
    d.wait_log("Read-only file system", T);
    assert!(fs::read_to_string(&seen).unwrap().contains("third"));
    assert!(!d.has_exited(), "kvsync keeps running through disk faults");
    namespace::run_inside(pid, &format!("mount -o remount,rw '{}'", mount_point.display()));
    put(&kv, "app/v", "fifth");
    wait::until(T, "the write after the remount", || fs::read_to_string(&seen).is_ok_and(|t| t.contains("fifth")));
    drop(d);
}

/// A destination that is a bind-mounted single file (Docker `-v file:file`, Kubernetes `subPath`)
/// cannot be renamed over (EBUSY): kvsync rewrites it in place, with a warning.
#[test]
fn bind_mounted_file_is_rewritten_in_place() {
    if !namespaces_or_skip("disk_faults::bind_mounted_file_is_rewritten_in_place") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv");
    fs::create_dir_all(kv.join("app")).unwrap();
    let source_file = dir.path().join("real.json");
    fs::write(&source_file, "{}").unwrap();
    fs::create_dir_all(dir.path().join("mnt")).unwrap();
    let dest = dir.path().join("mnt/app.json");
    fs::write(&dest, "").unwrap();
    // The bind mount exists in the daemon's namespace only.
    let ns = Private::new(format!("mount --bind '{}' '{}'", source_file.display(), dest.display()));
    put(&kv, "app/v", "in-place");
    let d = start_json_output(dir.path(), &kv, &dest, &ns);
    d.wait_log("rename refused (EBUSY", T);
    let seen = namespace::inside(d.pid(), &dest);
    wait::until(T, "the in-place write", || fs::read_to_string(&seen).is_ok_and(|t| t.contains("in-place")));
    // The mount was not replaced: the file behind it holds the new content too.
    assert!(fs::read_to_string(&source_file).unwrap().contains("in-place"));
    // The staged file is removed right after the in-place write.
    let mnt = namespace::inside(d.pid(), &dir.path().join("mnt"));
    let names = || -> Vec<String> {
        fs::read_dir(&mnt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
    };
    wait::until(T, "no temp file left beside the mount", || names() == vec!["app.json"]);
    drop(d);
}
