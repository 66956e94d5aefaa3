//! Check-ins are answered from memory and written behind: the newest check-in of each device
//! waits here and a background task writes them all in one transaction every second. A
//! check-in therefore never waits for the database's write lock, whatever else is writing,
//! and readers of the device list see the buffered value (read-your-writes).

use std::collections::HashMap;
use std::sync::Mutex;

use ringfence_store::{CheckinRecord, DeviceStore};

#[derive(Default)]
pub struct CheckinBuffer {
    inner: Mutex<Buffered>,
}

#[derive(Default)]
struct Buffered {
    /// Waiting for the next flush.
    pending: HashMap<String, CheckinRecord>,
    /// Being written by the current flush: still what readers see until it commits.
    writing: HashMap<String, CheckinRecord>,
}

impl CheckinBuffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Buffered> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keep the newest check-in of the device (one entry per device: bounded by the fleet).
    pub fn record(&self, checkin: CheckinRecord) {
        self.lock().pending.insert(checkin.device_id.clone(), checkin);
    }

    /// The buffered check-in of a device not yet written.
    pub fn get(&self, device_id: &str) -> Option<CheckinRecord> {
        let buffered = self.lock();
        buffered.pending.get(device_id).or_else(|| buffered.writing.get(device_id)).cloned()
    }

    /// Write every buffered check-in, in transactions of at most 500. On failure they are
    /// kept (unless a newer one arrived meanwhile) for the next flush.
    pub async fn flush(&self, store: &(impl DeviceStore + ?Sized)) -> ringfence_store::Result<usize> {
        let batch: Vec<CheckinRecord> = {
            let mut buffered = self.lock();
            if buffered.pending.is_empty() {
                return Ok(0);
            }
            let taken = std::mem::take(&mut buffered.pending);
            buffered.writing = taken.clone();
            taken.into_values().collect()
        };
        let mut result = Ok(batch.len());
        for chunk in batch.chunks(500) {
            if let Err(e) = store.record_checkins(chunk).await {
                result = Err(e);
                break;
            }
        }
        let mut buffered = self.lock();
        let writing = std::mem::take(&mut buffered.writing);
        if result.is_err() {
            for (id, c) in writing {
                buffered.pending.entry(id).or_insert(c);
            }
        }
        result
    }
}
