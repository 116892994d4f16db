//! The run report written at the end of [`super::Trainer::run`] ([`crate::report`]).

use std::path::PathBuf;

use super::setup::Trainer;

impl Trainer {
    /// Writes `report.html` and its PNG curves into the output folder. A report that cannot be
    /// written is a warning: the run it describes has finished and saved its checkpoints.
    pub fn write_run_report(&self) -> Option<PathBuf> {
        // dry runs (validate-only) and the ranks other than the first write no logs
        self.logger.as_ref()?;
        match crate::report::write_report(&self.out_dir) {
            Ok(files) => {
                self.say(&format!("report: {}", files.html.display()));
                Some(files.html)
            }
            Err(e) => {
                eprintln!("warning: the run report was not written: {e}");
                None
            }
        }
    }
}
