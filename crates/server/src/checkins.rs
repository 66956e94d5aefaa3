//! Check-ins are answered from memory and written behind: the newest check-in of each device
//! waits here and a background task writes them all in one transaction every second. A
//! check-in therefore never waits for the database's write lock, whatever else is writing,
//! and readers of the device list see the buffered value (read-your-writes).

use std::collections::HashMap;
use std::sync::Mutex;

use ringfence_store::{CheckinRecord, DeviceStore};

#[derive(Default)]
pub struct CheckinBuffer {
    pending: Mutex<HashMap<String, CheckinRecord>>,
}

impl CheckinBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CheckinRecord>> {
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep the newest check-in of the device (one entry per device: bounded by the fleet).
    pub fn record(&self, checkin: CheckinRecord) {
        self.lock().insert(checkin.device_id.clone(), checkin);
    }

    /// The buffered check-in of a device not yet written.
    pub fn get(&self, device_id: &str) -> Option<CheckinRecord> {
        self.lock().get(device_id).cloned()
    }

    /// Write every buffered check-in in one transaction. On failure they are kept (unless a
    /// newer one arrived meanwhile) for the next flush.
    pub async fn flush(&self, store: &impl DeviceStore) -> ringfence_store::Result<usize> {
        let batch: Vec<CheckinRecord> = {
            let mut pending = self.lock();
            if pending.is_empty() {
                return Ok(0);
            }
            pending.drain().map(|(_, c)| c).collect()
        };
        match store.record_checkins(&batch).await {
            Ok(()) => Ok(batch.len()),
            Err(e) => {
                let mut pending = self.lock();
                for c in batch {
                    pending.entry(c.device_id.clone()).or_insert(c);
                }
                Err(e)
            }
        }
    }
}
