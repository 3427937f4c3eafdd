//! Small, durable file writes for state the control planes keep on disk.

use std::io::Write;
use std::path::Path;

/// Write `contents` to `path` so that a crash leaves either the old file or
/// the new one: write a temporary file (mode 0600), fsync it, rename it over
/// `path`, then fsync the folder so the rename itself is on disk.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
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
    f.write_all(contents.as_bytes())
        .map_err(|e| with_path(e, &tmp))?;
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
}
