//! A run owns its directory: one process at a time holds it, and what a killed process left
//! half-written there is cleared when the next one takes it.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// An exclusive hold on a run directory for as long as it lives. The lock is the kernel's
/// (`flock`), so it goes with the process however it ends: a killed run never leaves a stale
/// lock behind. The file records the holder's pid for the message another run gets.
pub struct RunDirLock {
    _file: File,
    pub dir: PathBuf,
}

impl RunDirLock {
    /// Creates `dir` if needed and takes it, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        Self::acquire_for(
            dir,
            "another mm-train run",
            "choose another output_dir (--output-dir)",
        )
    }

    /// [`RunDirLock::acquire`] for a directory that `holder` (what the message calls the
    /// process that has it) works in; `instead` says what else the user can do.
    pub fn acquire_for(dir: &Path, holder_kind: &str, instead: &str) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                bail!(
                    "{} is in use by {holder_kind}{holder}; wait for it to finish or {instead}",
                    dir.display()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        Ok(Self {
            _file: file,
            dir: dir.to_path_buf(),
        })
    }

    /// Removes what an interrupted writer left in `subdir` of the run: hidden `.NAME.tmp*`
    /// files and directories of atomic writes that never reached their rename. Only a lock
    /// holder may do this, since nobody else can be writing them. Returns what was removed.
    pub fn remove_stale_temps(&self, subdir: &str) -> Result<Vec<PathBuf>> {
        let dir = self.dir.join(subdir);
        let Ok(entries) = fs::read_dir(&dir) else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if !(name.starts_with('.') && name.contains(".tmp")) {
                continue;
            }
            let path = entry.path();
            let result = match entry.file_type() {
                Ok(t) if t.is_dir() => fs::remove_dir_all(&path),
                _ => fs::remove_file(&path),
            };
            result.with_context(|| format!("removing stale {}", path.display()))?;
            removed.push(path);
        }
        Ok(removed)
    }
}
