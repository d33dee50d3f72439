//! Disk faults under a real daemon: a full file system and a file system made read-only mid-run.
//! The destination lives on a small tmpfs mounted by the test (root only; the test says so and
//! returns when mounting is not allowed). Each fault: the write fails cleanly, the old file stays, the
//! error names the path and the cause, and the next change after the fault clears is written.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kvsync_tests::kvsync::Daemon;
use kvsync_tests::wait;

const T: Duration = Duration::from_secs(20);

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(path).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755"), "tmpfs"])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs { path: path.to_path_buf() })
    }

    fn remount(&self, opt: &str) {
        let s = Command::new("mount").args(["-o", &format!("remount,{opt}")]).arg(&self.path).status().unwrap();
        assert!(s.success(), "remount {opt}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn put(kv: &Path, key: &str, value: &str) {
    let p = kv.join(key);
    fs::write(p.with_extension("..tmp"), value).unwrap();
    fs::rename(p.with_extension("..tmp"), &p).unwrap();
}

/// Starts kvsync rendering the `file` source at `kv` (prefix app/) as JSON into `dest`.
fn start_json_output(dir: &Path, kv: &Path, dest: &Path) -> Daemon {
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
    Daemon::start(&["run", "--config", &cfg.display().to_string()])
}

#[test]
fn full_and_read_only_file_systems() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv");
    fs::create_dir_all(kv.join("app")).unwrap();
    let Some(disk) = Tmpfs::mount(&dir.path().join("disk"), "256k") else {
        eprintln!("SKIPPED: mounting a tmpfs is not allowed here (needs root)");
        return;
    };
    let dest = disk.path.join("app.json");
    put(&kv, "app/v", "first");
    let d = start_json_output(dir.path(), &kv, &dest);
    wait::until(T, "first render", || fs::read_to_string(&dest).is_ok_and(|t| t.contains("first")));

    // Fill the disk, then change the value: the new file cannot be written.
    let filler = disk.path.join("filler");
    let _ = fs::write(&filler, vec![0u8; 512 * 1024]); // fails part-way with ENOSPC, leaving the disk full
    put(&kv, "app/v", &"second".repeat(2000));
    d.wait_log("No space left on device", T);
    let log = d.log();
    assert!(log.contains("output `app`") && log.contains(&disk.path.display().to_string()), "{log}");
    assert!(fs::read_to_string(&dest).unwrap().contains("first"), "the old file stays");
    let strays = fs::read_dir(&disk.path)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("kvsync-tmp"))
        .count();
    assert_eq!(strays, 0, "a failed write leaves no temp file");

    // Space returns: the next change is written.
    fs::remove_file(&filler).unwrap();
    put(&kv, "app/v", "third");
    wait::until(T, "the write after space returns", || fs::read_to_string(&dest).is_ok_and(|t| t.contains("third")));

    // The file system turns read-only mid-run.
    disk.remount("ro");
    put(&kv, "app/v", "fourth");
    d.wait_log("Read-only file system", T);
    assert!(fs::read_to_string(&dest).unwrap().contains("third"));
    assert!(!d.has_exited(), "kvsync keeps running through disk faults");
    disk.remount("rw");
    put(&kv, "app/v", "fifth");
    wait::until(T, "the write after the remount", || fs::read_to_string(&dest).is_ok_and(|t| t.contains("fifth")));
    drop(d);
}

/// A destination that is a bind-mounted single file (Docker `-v file:file`, Kubernetes `subPath`)
/// cannot be renamed over (EBUSY): kvsync rewrites it in place, with a warning.
#[test]
fn bind_mounted_file_is_rewritten_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let kv = dir.path().join("kv");
    fs::create_dir_all(kv.join("app")).unwrap();
    let source_file = dir.path().join("real.json");
    fs::write(&source_file, "{}").unwrap();
    fs::create_dir_all(dir.path().join("mnt")).unwrap();
    let dest = dir.path().join("mnt/app.json");
    fs::write(&dest, "").unwrap();
    let mounted =
        Command::new("mount").arg("--bind").arg(&source_file).arg(&dest).status().map(|s| s.success()).unwrap_or(false);
    if !mounted {
        eprintln!("SKIPPED: bind mounts are not allowed here (needs root)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(dest.clone());
    put(&kv, "app/v", "in-place");
    let d = start_json_output(dir.path(), &kv, &dest);
    d.wait_log("rename refused (EBUSY", T);
    wait::until(T, "the in-place write", || fs::read_to_string(&dest).is_ok_and(|t| t.contains("in-place")));
    // The mount was not replaced: the file behind it holds the new content too.
    assert!(fs::read_to_string(&source_file).unwrap().contains("in-place"));
    // The staged file is removed right after the in-place write.
    let names = || -> Vec<String> {
        fs::read_dir(dir.path().join("mnt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    wait::until(T, "no temp file left beside the mount", || names() == vec!["app.json"]);
}
