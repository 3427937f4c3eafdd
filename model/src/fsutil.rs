//! Files that hold keys and credentials, and durable writes of state the
//! control planes keep on disk.
//!
//! Every file holding a key or a credential is mode 0600 in a folder of mode
//! 0700, whatever the umask, and a component refuses to start on one that
//! other users can access (as ssh does with private keys).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The I/O error is part of the message, not a separate cause, so an
    /// error chain (`{:#}`) names it once.
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "{path} holds {what} and other users can access it (mode {mode:04o}); \
         run `chmod {fix} {path}` and start again"
    )]
    Exposed {
        path: PathBuf,
        what: &'static str,
        mode: u32,
        fix: &'static str,
    },
    #[error("{0} is not a folder; give a folder (it is made if missing)")]
    NotDir(PathBuf),
    #[error(
        "{path} is in use by another process ({holder}); two control planes on one data \
         folder would overwrite each other's state: stop it, or give this one its own folder"
    )]
    InUse { path: PathBuf, holder: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FsError + '_ {
    move |error| FsError::Io {
        path: path.to_path_buf(),
        error,
    }
}

fn exposed(path: &Path, what: &'static str, fix: &'static str) -> Result<(), FsError> {
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(FsError::Exposed {
            path: path.to_path_buf(),
            what,
            mode,
            fix,
        });
    }
    Ok(())
}

/// Refuse a key or credential file that other users can access.
pub fn check_private_file(path: &Path) -> Result<(), FsError> {
    exposed(path, "a key or credential", "600")
}

/// Refuse a folder of keys and credentials that other users can access.
pub fn check_private_dir(path: &Path) -> Result<(), FsError> {
    exposed(path, "keys and credentials", "700")
}

/// Read a binary file that holds secrets, refusing one others can access.
pub fn read_secret_bytes(path: &Path) -> Result<Vec<u8>, FsError> {
    check_private_file(path)?;
    std::fs::read(path).map_err(io(path))
}

/// Read a key or credential file, refusing one that others can access.
pub fn read_secret(path: &Path) -> Result<String, FsError> {
    check_private_file(path)?;
    std::fs::read_to_string(path).map_err(io(path))
}

/// The folder for a component's keys and state: created with mode 0700
/// (parents as the umask says), or, when it exists, checked to be closed to
/// other users. Files in it that hold secrets are checked too.
pub fn private_dir(path: &Path, secret_files: &[&str]) -> Result<(), FsError> {
    if !path.exists() {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(path)
            .map_err(io(path))?;
        // The umask can only remove bits; make sure of the result.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(io(path))?;
    }
    if !path.is_dir() {
        return Err(FsError::NotDir(path.to_path_buf()));
    }
    check_private_dir(path)?;
    for f in secret_files {
        let p = path.join(f);
        if p.exists() {
            check_private_file(&p)?;
        }
    }
    Ok(())
}

/// A data folder held by this process alone, until it exits (an advisory
/// `flock` on `<folder>/lock`, which the kernel releases with the process,
/// even after SIGKILL).
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

/// Hold `dir` for this process, or say which process holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, FsError> {
    use std::io::{Read, Seek};
    let path = dir.join("lock");
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    if let Err(e) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        if e != rustix::io::Errno::WOULDBLOCK {
            return Err(FsError::Io {
                path,
                error: e.into(),
            });
        }
        let mut pid = String::new();
        let _ = file.read_to_string(&mut pid);
        let holder = match pid.trim() {
            "" => "a process that has not written its pid yet".to_string(),
            p => format!("pid {p}"),
        };
        return Err(FsError::InUse {
            path: dir.to_path_buf(),
            holder,
        });
    }
    file.set_len(0).map_err(io(&path))?;
    file.rewind().map_err(io(&path))?;
    writeln!(file, "{}", std::process::id()).map_err(io(&path))?;
    Ok(DirLock { _file: file })
}

/// Create an empty file with mode 0600 if it does not exist (so that a
/// library creating it later, e.g. SQLite, keeps that mode).
pub fn create_private_file(path: &Path) -> Result<(), FsError> {
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// Run blocking I/O (a file write with fsync, a SQLite call) without
/// stalling async tasks: on a multi-thread tokio runtime the worker first
/// hands its queued tasks to the rest of the pool (`block_in_place`);
/// elsewhere (plain threads, current-thread runtimes, tests) it just runs.
pub fn off_async<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Write `contents` to `path` so that a crash leaves either the old file or
/// the new one: write a temporary file (mode 0600), fsync it, rename it over
/// `path`, then fsync the folder so the rename itself is on disk. Off the
/// async threads (`off_async`).
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) -> std::io::Result<()> {
    off_async(|| write_private_now(path, contents.as_ref()))
}

fn write_private_now(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let with_path = |e: std::io::Error, p: &Path| {
        std::io::Error::new(e.kind(), format!("{}: {e}", p.display()))
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| with_path(e, &tmp))?;
    // A temporary file left by a crash keeps its old mode; fix it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| with_path(e, &tmp))?;
    f.write_all(contents).map_err(|e| with_path(e, &tmp))?;
    f.sync_all().map_err(|e| with_path(e, &tmp))?;
    std::fs::rename(&tmp, path).map_err(|e| with_path(e, path))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| with_path(e, dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn replaces_atomically_with_private_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("tern-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("state.json");
        super::write_private(&p, "one").unwrap();
        super::write_private(&p, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!p.with_extension("tmp").exists());
        let e = super::write_private(&dir.join("missing/x.json"), "x").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn private_dirs_and_files_are_closed_to_others() {
        use super::*;
        let base = std::env::temp_dir().join(format!("tern-fsperm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let dir = base.join("a/data");
        private_dir(&dir, &["key"]).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        // A key file others can read: refused, naming the fix.
        let key = dir.join("key");
        std::fs::write(&key, "secret").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = private_dir(&dir, &["key"]).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        let e = read_secret(&key).unwrap_err().to_string();
        assert!(e.contains("mode 0644"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret(&key).unwrap(), "secret");
        // Group access alone is enough to refuse.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = check_private_file(&key).unwrap_err().to_string();
        assert!(e.contains("mode 0640"), "{e}");
        // An existing folder open to others: refused.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = private_dir(&dir, &[]).unwrap_err().to_string();
        assert!(e.contains("chmod 700"), "{e}");
        // create_private_file keeps an existing file and makes new ones 0600.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let db = dir.join("db");
        create_private_file(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        std::fs::write(&db, "x").unwrap();
        create_private_file(&db).unwrap();
        assert_eq!(std::fs::read_to_string(&db).unwrap(), "x");
        // A file where the folder should be: said so, not "chmod".
        let e = private_dir(&db, &[]).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_data_folder_is_held_by_one_holder_at_a_time() {
        use super::*;
        let dir = std::env::temp_dir().join(format!("tern-fslock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        private_dir(&dir, &[]).unwrap();
        let first = lock_dir(&dir).unwrap();
        // flock holds per open file: a second open, even in this process,
        // is refused and told who holds the folder.
        let e = lock_dir(&dir).unwrap_err().to_string();
        assert!(
            e.contains("in use by another process")
                && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        let _again = lock_dir(&dir).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
