//! Scratch directories for tests: fresh when made, removed when dropped (a failing test's too), so
//! repeated runs leave nothing behind in the system's temp directory.

use std::path::{Path, PathBuf};

pub struct Scratch(PathBuf);

impl Scratch {
    /// An empty directory named after `name` and this test process.
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("nuwa-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
