//! A session's heartbeat: servers drop sessions they have not heard from (SkyRL after 300 s),
//! and a step can wait on one long call, so a thread of its own says the session is alive every
//! ten seconds until the session ends.

use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::time::Duration;

use serde_json::json;

use super::client::Client;

const EVERY: Duration = Duration::from_secs(10);

pub struct Heartbeat {
    /// Dropped with the heartbeat: the thread sees the channel close and ends.
    _stop: Sender<()>,
}

impl Heartbeat {
    pub fn start(client: Arc<Client>, session: String) -> Heartbeat {
        let (stop, stopped) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(EVERY) {
                // A missed beat is not an error of the run: the next call says if the session
                // is gone.
                let _ = client.post_json("session_heartbeat", json!({ "session_id": session }));
            }
        });
        Heartbeat { _stop: stop }
    }
}
