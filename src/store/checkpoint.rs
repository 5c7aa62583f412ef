//! WAL checkpoints of the embedded store, off the commit path.
//!
//! SQLite's own automatic checkpoint runs inside the commit that crosses
//! its threshold, so the committer copies the WAL into the database (and
//! fsyncs both) while every submitter waits: a sixth of its time under
//! batch ingest. The writer connection turns it off, and a thread with a
//! connection of its own checkpoints instead:
//!
//! - every [`CHECKPOINT_PERIOD`], a passive checkpoint, which copies what
//!   was committed so far without waiting for (or stopping) the writer or
//!   the readers;
//! - once the WAL holds `restart_frames` frames, a restarting one. Passive
//!   checkpoints alone never let a busy writer start the WAL over (it does
//!   so only when it finds every frame copied at the start of a
//!   transaction), so the file would grow as long as ingest goes on. The
//!   restart holds the writer only while it copies the frames the passive
//!   ones have not yet copied, and waits at most [`RESTART_WAIT`] for
//!   readers; if it cannot finish, the next round tries again.
//!
//! Durability is unchanged: a checkpoint fsyncs the WAL before copying it
//! and the database before the WAL is reused (`synchronous = NORMAL`).

use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use rusqlite::Connection;

use super::StoreError;

/// How often the WAL is copied into the database.
pub const CHECKPOINT_PERIOD: Duration = Duration::from_millis(100);

/// WAL frames (pages) after which a checkpoint restarts the WAL: 64 MiB of
/// 4 KiB pages.
pub const RESTART_FRAMES: i64 = 16_384;

/// Longest wait of a restarting checkpoint for the writer and the readers.
const RESTART_WAIT: Duration = Duration::from_secs(1);

/// The checkpointing thread of one store; it stops when this is dropped.
pub struct Checkpointer {
    _stop: mpsc::Sender<()>,
}

/// What one checkpoint round did: the WAL's frames, and whether it was
/// started over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub frames: i64,
    pub restarted: bool,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (in WAL mode, whose
    /// writer has `wal_autocheckpoint = 0`).
    pub fn start(path: &Path, restart_frames: i64) -> Result<Checkpointer, StoreError> {
        let connection = Connection::open(path)?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.busy_timeout(RESTART_WAIT)?;
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("analytics-checkpoint".into())
            .spawn(move || {
                // Runs until the store (the sender) is gone.
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_PERIOD) {
                    if let Err(error) = checkpoint(&connection, restart_frames) {
                        tracing::warn!(%error, "SQLite checkpoint failed; retrying");
                    }
                }
            })
            .map_err(|error| {
                StoreError::Unavailable(format!("cannot start the checkpoint thread: {error}"))
            })?;
        Ok(Checkpointer { _stop: stop })
    }
}

/// One round: a passive checkpoint, and a restarting one when the WAL has
/// reached `restart_frames`.
pub fn checkpoint(connection: &Connection, restart_frames: i64) -> Result<Round, StoreError> {
    // A passive checkpoint is never busy: it copies what it can.
    let (_, frames) = wal_checkpoint(connection, "PASSIVE")?;
    let restarted = frames >= restart_frames && {
        // Busy: a reader or the writer outlasted the wait; the next round
        // tries again.
        let (busy, _) = wal_checkpoint(connection, "RESTART")?;
        !busy
    };
    Ok(Round { frames, restarted })
}

/// Runs `PRAGMA wal_checkpoint(mode)`; answers whether it could not finish
/// (busy) and the frames in the WAL.
fn wal_checkpoint(connection: &Connection, mode: &str) -> Result<(bool, i64), StoreError> {
    let (busy, frames): (i64, i64) =
        connection.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
    Ok((busy != 0, frames))
}
