//! Every file the project writes (checkpoints, masks, overlays, CSV, JSON, run
//! state) goes through here: the bytes go to a temporary file in the destination's
//! folder, are flushed, and the temporary file is renamed over the destination, so
//! a crash or a full disk never leaves a partial file behind, and readers see the
//! old file or the new one, never half of either.
//!
//! A new file gets the permissions the user's umask gives (`0o666 & !umask`, like
//! any program that calls `open(2)`), not the `0o600` of a temporary file; a file
//! that is replaced keeps its permissions. [`OutputGuard`] refuses to write onto a
//! file that the same command reads.
//!
//! ```
//! use samus_core::atomic_write::{write_atomic, OutputGuard};
//!
//! # fn main() -> Result<(), samus_core::atomic_write::WriteError> {
//! let dir = std::env::temp_dir().join(format!("samus-atomic-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).map_err(|e| samus_core::atomic_write::WriteError::Io { path: dir.clone(), source: e })?;
//! let input = dir.join("scan.png");
//! write_atomic(&input, b"not really a PNG")?;
//! let guard = OutputGuard::new([&input]);
//! assert!(guard.write(&input, b"overwrite").is_err());
//! guard.write(&dir.join("mask.png"), b"fine")?;
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a file could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// The operating system refused (folder missing, disk full, no permission).
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file that was being written.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The output is also an input of the same command.
    #[error("refusing to write {}: it is also an input of this command (choose another output path)", path.display())]
    OntoInput {
        /// The output path, as given.
        path: PathBuf,
    },
    /// The destination exists and is write-protected: it is left alone, as `cp`
    /// and editors do.
    #[error("refusing to replace {}: it is write-protected (make it writable or choose another path)", path.display())]
    ReadOnly {
        /// The write-protected file.
        path: PathBuf,
    },
    /// The content could not be produced (an encoder failed).
    #[error("cannot write {}: {message}", path.display())]
    Encode {
        /// The file that was being written.
        path: PathBuf,
        /// What the encoder said.
        message: String,
    },
}

/// Writes `bytes` to `path` atomically (see the module docs).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |file| file.write_all(bytes))
}

/// Writes whatever `write` produces to `path` atomically (see the module docs).
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
) -> Result<(), WriteError> {
    let io = |source| WriteError::Io {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().readonly()) {
        return Err(WriteError::ReadOnly {
            path: path.to_path_buf(),
        });
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".samus-").suffix(".tmp");
    if let Some(permissions) = target_permissions(path) {
        builder.permissions(permissions);
    }
    let mut tmp = builder.tempfile_in(dir).map_err(io)?;
    {
        let mut buffered = std::io::BufWriter::new(tmp.as_file_mut());
        write(&mut buffered).map_err(io)?;
        buffered.flush().map_err(io)?;
    }
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// The permissions the written file should have: those of the file it replaces,
/// else `0o666` (narrowed by the umask when the file is created).
#[cfg(unix)]
fn target_permissions(path: &Path) -> Option<std::fs::Permissions> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Some(meta.permissions()),
        _ => Some(std::fs::Permissions::from_mode(0o666)),
    }
}

#[cfg(not(unix))]
fn target_permissions(_path: &Path) -> Option<std::fs::Permissions> {
    None
}

/// The inputs of one command: [`OutputGuard::check`] refuses an output path that
/// names one of them (also through another spelling, a symbolic link or `..`).
#[derive(Debug, Clone, Default)]
pub struct OutputGuard {
    inputs: Vec<PathBuf>,
}

impl OutputGuard {
    /// A guard for these input files (those that do not exist are ignored).
    pub fn new<P: AsRef<Path>>(inputs: impl IntoIterator<Item = P>) -> Self {
        let mut guard = Self::default();
        for input in inputs {
            guard.add_input(input.as_ref());
        }
        guard
    }

    /// Adds one more input file.
    pub fn add_input(&mut self, input: &Path) {
        if let Ok(canonical) = std::fs::canonicalize(input) {
            if canonical.is_file() && !self.inputs.contains(&canonical) {
                self.inputs.push(canonical);
            }
        }
    }

    /// Fails with [`WriteError::OntoInput`] when `output` is one of the inputs.
    pub fn check(&self, output: &Path) -> Result<(), WriteError> {
        if self.inputs.is_empty() {
            return Ok(());
        }
        if let Some(canonical) = canonical_output(output) {
            if self.inputs.contains(&canonical) {
                return Err(WriteError::OntoInput {
                    path: output.to_path_buf(),
                });
            }
        }
        Ok(())
    }

    /// [`OutputGuard::check`], then [`write_atomic`].
    pub fn write(&self, output: &Path, bytes: &[u8]) -> Result<(), WriteError> {
        self.check(output)?;
        write_atomic(output, bytes)
    }

    /// [`OutputGuard::check`], then [`write_atomic_with`].
    pub fn write_with(
        &self,
        output: &Path,
        write: impl FnOnce(&mut std::io::BufWriter<&mut std::fs::File>) -> std::io::Result<()>,
    ) -> Result<(), WriteError> {
        self.check(output)?;
        write_atomic_with(output, write)
    }
}

/// The canonical path `output` would have: the file itself when it exists, else its
/// canonical folder joined with its name.
fn canonical_output(output: &Path) -> Option<PathBuf> {
    if let Ok(canonical) = std::fs::canonicalize(output) {
        return Some(canonical);
    }
    let name = output.file_name()?;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(std::fs::canonicalize(dir).ok()?.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "samus-atomic-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = scratch("replace");
        let path = dir.join("a.csv");
        write_atomic(&path, b"first version, longer").unwrap();
        write_atomic(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.csv")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_write_keeps_the_old_file() {
        let dir = scratch("failed");
        let path = dir.join("state.json");
        write_atomic(&path, b"old").unwrap();
        let err = write_atomic_with(&path, |f| {
            f.write_all(b"half")?;
            Err(std::io::Error::other("encoder failed"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("state.json"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn new_files_follow_the_umask_and_replaced_files_keep_their_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("mode");
        let path = dir.join("mask.png");
        write_atomic(&path, b"x").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        // SAFETY: umask only reads and sets this process's file-creation mask; it is
        // set back at once to the value it returned.
        let umask = unsafe {
            let old = libc_umask(0o022);
            libc_umask(old);
            old
        };
        assert_eq!(mode, 0o666 & !umask, "mode {mode:o}, umask {umask:o}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&path, b"y").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        // A write-protected file is refused and left as it was.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        let err = write_atomic(&path, b"z").unwrap_err();
        assert!(matches!(err, WriteError::ReadOnly { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"y");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o444);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[cfg(unix)]
    extern "C" {
        #[link_name = "umask"]
        fn libc_umask(mask: u32) -> u32;
    }

    #[test]
    fn the_guard_refuses_inputs_under_any_spelling() {
        let dir = scratch("guard");
        let input = dir.join("scan.png");
        write_atomic(&input, b"image").unwrap();
        let guard = OutputGuard::new([&input]);
        let other_spelling = dir.join(".").join("scan.png");
        for path in [&input, &other_spelling] {
            let err = guard.write(path, b"mask").unwrap_err();
            assert!(matches!(err, WriteError::OntoInput { .. }), "{err}");
        }
        assert_eq!(std::fs::read(&input).unwrap(), b"image");
        guard.write(&dir.join("scan_mask.png"), b"mask").unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
