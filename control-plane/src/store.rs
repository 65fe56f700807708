//! Durable state: the [`Store`] trait, the records it holds, and [`RedbStore`], the embedded
//! default.
//!
//! The control plane keeps its working state in memory and writes every change through a store
//! as a batch of [`Op`]s applied atomically ([`Store::commit`]). At start it reads everything back
//! ([`Store::load`]). The trait is deliberately this narrow (a snapshot in, batches out) so that
//! another backend (a replicated SQL database) only has to store rows, not understand delivery.
//!
//! Why redb: it is pure Rust (no C toolchain, no JNI-like build pain), ACID with copy-on-write
//! B-trees and a checksummed double-buffered commit slot, so a crash at any point leaves the last
//! committed transaction intact; it is a single file under the data directory; and it is
//! actively maintained with a stable file format since 1.0. Its commit costs an fsync, which is
//! why the control plane batches concurrent writes into one transaction (group commit, see
//! `committer.rs`).

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// A user's groups and direct topics, with when (as a push-id position) each subscription
/// started, and the user's known devices.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub groups: Vec<String>,
    pub topics: Vec<String>,
    /// Subscription start per stream name (`g:NAME` / `t:NAME`): messages whose push id is
    /// greater are for this user.
    pub since: BTreeMap<String, u64>,
    pub devices: BTreeMap<String, DeviceRecord>,
}

/// A device of a user, known from a credential issue or a login.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRecord {
    /// Last push id when the device became known: older messages are not for it.
    pub registered_pos: u64,
    /// Last push id when the device last went offline (drives the REDELIVERY flag).
    pub offline_pos: u64,
}

/// A credential signing key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: u32,
    pub secret: [u8; 32],
    pub created_secs: u64,
    /// Latest expiry of a token signed with this key; a retired key is kept until then.
    pub max_expires_at: u64,
    /// Whether this is the key new tokens are signed with.
    pub current: bool,
    /// When (Unix seconds) it was withdrawn (`POST /v1/keys/{id}/withdraw`): gateways no longer
    /// get it and its secret is erased; the record stays so that the withdrawal is answered
    /// the same way again and its id is never reused. Absent in records written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_secs: Option<u64>,
}

/// Revoked credentials of one user: tokens issued before the given seconds are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationRecord {
    pub all_before: u64,
    pub devices: BTreeMap<String, u64>,
    /// Every credential these stamps revoke has expired by then (seconds): the latest expiry
    /// of any credential issued up to the latest stamp. The record is pruned after it. 0 in
    /// records stored before it existed (set when loaded).
    #[serde(default)]
    pub covers_until: u64,
}

/// A message stream: its name (`u:USER`, `g:GROUP`, `t:TOPIC`, `c`) and its last sequence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRecord {
    pub id: u32,
    pub name: String,
    pub head: u32,
}

/// A stored message (TTL > 0): stored once, whatever the number of recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub push_id: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub flags: u8,
    pub ttl_secs: u32,
    pub collapse_key: Option<String>,
    /// rkyv-archived `PushPayload`.
    pub payload: Vec<u8>,
}

/// Who a push was for, as the admin asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSpec {
    User(String),
    Users(Vec<String>),
    Group(String),
    Topic(String),
    Condition(String),
}

/// A push and its status counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRecord {
    pub id: u64,
    pub created_ms: u64,
    pub expires_ms: u64,
    pub ttl_secs: u32,
    pub target: TargetSpec,
    /// `(stream, seq)` per message; several for a `users` push (one per inbox).
    pub messages: Vec<(u32, u32)>,
    pub targeted: u64,
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    /// Replaced by a newer push with the same collapse key before every recipient acked.
    pub collapsed: bool,
    pub collapse_key: Option<String>,
    pub idempotency_key: Option<String>,
}

/// What one device has acknowledged of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorRecord {
    /// Every message up to here is acknowledged or not owed to this device.
    pub cursor: u32,
    /// Acknowledged sequences above `cursor`, sorted.
    pub above: Vec<u32>,
}

/// One change to durable state.
#[derive(Debug, Clone)]
pub enum Op {
    User(String, UserRecord),
    Group(String, Vec<String>),
    Key(KeyRecord),
    KeyRemoved(u32),
    Revocation(String, RevocationRecord),
    /// A user's revocation record pruned (every credential it covered has expired).
    RevocationRemoved(String),
    Stream(StreamRecord),
    Message(u32, u32, Option<MessageRecord>),
    Push(PushRecord),
    /// A push record past its retention (see the crate docs), with its idempotency key.
    PushRemoved(u64),
    /// The highest push id ever handed out, so ids stay monotonic once old pushes are pruned.
    LastPushId(u64),
    Cursor {
        user: String,
        device: String,
        stream: u32,
        cursor: CursorRecord,
    },
}

/// Everything a store holds, read at start.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub users: Vec<(String, UserRecord)>,
    pub groups: Vec<(String, Vec<String>)>,
    pub keys: Vec<KeyRecord>,
    pub revocations: Vec<(String, RevocationRecord)>,
    pub streams: Vec<StreamRecord>,
    pub messages: Vec<(u32, u32, MessageRecord)>,
    pub pushes: Vec<PushRecord>,
    pub cursors: Vec<(String, String, u32, CursorRecord)>,
    /// The last [`Op::LastPushId`] committed (0 if none): push ids continue above it.
    pub last_push_id: u64,
}

/// Why the store failed. Always the control plane's side (disk, corruption), never the caller's.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database: {0}")]
    Db(String),
    #[error("store record {what} is corrupt: {why}")]
    Corrupt { what: &'static str, why: String },
    /// The store file exists but holds nothing. redb would silently initialise a new database
    /// in it: new signing keys (every issued credential invalid) and no queues, so it is refused.
    #[error(
        "store file {} is empty; refusing to start a new database over it (new signing keys \
         would invalidate every issued credential) - delete it to start fresh",
        path.display()
    )]
    Empty { path: PathBuf },
    /// The store file is not a readable redb database (truncated, overwritten pages): redb
    /// reported corruption or panicked reading it.
    #[error(
        "store file {} is damaged ({why}); refusing to start on it - restore it from a backup, \
         or move it away to start a new, empty database",
        path.display()
    )]
    Damaged { path: PathBuf, why: String },
    /// The data directory or a store file could not be created, read or given private
    /// permissions.
    #[error("store path {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
}

impl StoreError {
    /// Whether the store's content is the problem (empty, damaged or undecodable), as opposed
    /// to the disk or the operating system: the binary exits with EX_DATAERR (65) for these and
    /// EX_IOERR (74) for the others.
    pub fn is_data_error(&self) -> bool {
        matches!(self, StoreError::Empty { .. } | StoreError::Damaged { .. } | StoreError::Corrupt { .. })
    }
}

fn dberr<E: Into<redb::Error>>(e: E) -> StoreError {
    match e.into() {
        // Corruption is worded by redb for its own developers; the path and what to do are
        // added where the file is known (`RedbStore::damaged`).
        redb::Error::Corrupted(why) => StoreError::Damaged { path: PathBuf::new(), why },
        other => StoreError::Db(other.to_string()),
    }
}

thread_local! {
    /// Set while this thread runs redb under [`quietly`].
    static IN_REDB: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, catching a panic. redb panics on some damaged files; that panic is reported as
/// [`StoreError::Damaged`], so the default hook's message and backtrace (which read like a
/// crash of Herald) are not printed for it. Panics elsewhere, on any thread, print as before.
fn quietly<T>(f: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_REDB.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
    IN_REDB.with(|c| c.set(true));
    let r = std::panic::catch_unwind(AssertUnwindSafe(f));
    IN_REDB.with(|c| c.set(false));
    r
}

/// The message of a caught panic, on one line (assertion messages span several).
fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    let text = match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => s,
        (_, Some(s)) => s.as_str(),
        _ => "panic",
    };
    text.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// Durable storage for the control plane's state.
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Reads everything (at start).
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Applies `ops` in order, atomically and durably: when this returns `Ok`, the changes
    /// survive a crash.
    fn commit(&self, ops: &[Op]) -> Result<(), StoreError>;
    /// Called after a failed commit, before the control plane reloads the store: drops whatever
    /// state the failure left (redb refuses every later transaction after an I/O error: "Previous
    /// I/O error occurred. Please close and re-open the database") and opens the store again. An
    /// error means "not yet": the control plane retries with backoff.
    fn reopen(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const GROUPS: TableDefinition<&str, &[u8]> = TableDefinition::new("groups");
const KEYS: TableDefinition<u32, &[u8]> = TableDefinition::new("keys");
const REVOCATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("revocations");
const STREAMS: TableDefinition<u32, &[u8]> = TableDefinition::new("streams");
const MESSAGES: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("messages");
const PUSHES: TableDefinition<u64, &[u8]> = TableDefinition::new("pushes");
const CURSORS: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("cursors");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_LAST_PUSH_ID: &str = "last_push_id";

/// The embedded default store: one redb file, `herald.redb`, in the data directory.
///
/// The directory is kept `0700` and the file `0600` (they hold the signing keys: anyone who can
/// read them can mint credentials); looser permissions found at start are tightened, with a
/// warning. An empty file is refused ([`StoreError::Empty`]), a damaged one too
/// ([`StoreError::Damaged`], including redb panics, which are caught).
#[derive(Debug)]
pub struct RedbStore {
    path: PathBuf,
    /// `None` between a failed reopen and the next one. Only the committer writes; `load` at
    /// start and after a reopen. The lock is taken once per transaction, not per record.
    db: RwLock<Option<Database>>,
}

impl RedbStore {
    /// Opens (or creates) the store in `dir`, creating the directory if needed.
    pub fn open(dir: &Path) -> Result<RedbStore, StoreError> {
        crate::perms::private_dir(dir)
            .map_err(|source| StoreError::Io { path: dir.to_path_buf(), source })?;
        let path = dir.join("herald.redb");
        let db = Self::open_file(&path)?;
        crate::perms::private_file(&path).map_err(|source| StoreError::Io { path: path.clone(), source })?;
        Ok(RedbStore { path, db: RwLock::new(Some(db)) })
    }

    fn open_file(path: &Path) -> Result<Database, StoreError> {
        match std::fs::metadata(path) {
            Ok(m) if m.len() == 0 => return Err(StoreError::Empty { path: path.to_path_buf() }),
            Ok(_) => {}
            // Created private, so that its first bytes (the signing keys) are never readable by
            // others; redb initialises an empty file it is given.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                create_private(path).map_err(|source| StoreError::Io { path: path.to_path_buf(), source })?
            }
            Err(source) => return Err(StoreError::Io { path: path.to_path_buf(), source }),
        }
        let damaged = |why| StoreError::Damaged { path: path.to_path_buf(), why };
        // redb panics on some damaged files (a truncated one: "assertion failed:
        // storage.raw_file_len()? >= header.layout().len()") instead of returning an error; a
        // panic here is a bad file, not a bug of ours.
        let opened = quietly(|| -> Result<Database, StoreError> {
            let db = Database::create(path).map_err(dberr)?;
            let txn = db.begin_write().map_err(dberr)?;
            {
                txn.open_table(USERS).map_err(dberr)?;
                txn.open_table(GROUPS).map_err(dberr)?;
                txn.open_table(KEYS).map_err(dberr)?;
                txn.open_table(REVOCATIONS).map_err(dberr)?;
                txn.open_table(STREAMS).map_err(dberr)?;
                txn.open_table(MESSAGES).map_err(dberr)?;
                txn.open_table(PUSHES).map_err(dberr)?;
                txn.open_table(CURSORS).map_err(dberr)?;
                txn.open_table(META).map_err(dberr)?;
            }
            txn.commit().map_err(dberr)?;
            Ok(db)
        });
        match opened {
            Ok(Ok(db)) => Ok(db),
            Ok(Err(StoreError::Damaged { why, .. })) => Err(damaged(why)),
            Ok(Err(e)) => Err(e),
            Err(panic) => Err(damaged(format!("redb panicked: {}", panic_text(&*panic)))),
        }
    }

    /// Runs `f` on the open database, turning redb's panics and corruption errors into
    /// [`StoreError::Damaged`] naming this file.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        let Some(db) = guard.as_ref() else {
            return Err(StoreError::Db("the store is closed after a failed reopen".into()));
        };
        match quietly(|| f(db)) {
            Ok(Err(StoreError::Damaged { why, .. })) => {
                Err(StoreError::Damaged { path: self.path.clone(), why })
            }
            Ok(r) => r,
            Err(panic) => Err(StoreError::Damaged {
                path: self.path.clone(),
                why: format!("redb panicked: {}", panic_text(&*panic)),
            }),
        }
    }
}

fn create_private(path: &Path) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    opts.open(path).map(drop)
}

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    // Serializing these plain records into memory cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn from_json<T: for<'a> Deserialize<'a>>(what: &'static str, b: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt { what, why: e.to_string() })
}

impl MessageRecord {
    /// Compact binary form: the payload is the bulk and is stored as is.
    pub fn to_bytes(&self) -> Vec<u8> {
        let key = self.collapse_key.as_deref().unwrap_or("");
        let mut out = Vec::with_capacity(34 + key.len() + self.payload.len());
        out.extend_from_slice(&self.push_id.to_le_bytes());
        out.extend_from_slice(&self.created_ms.to_le_bytes());
        out.extend_from_slice(&self.expires_ms.to_le_bytes());
        out.push(self.flags);
        out.extend_from_slice(&self.ttl_secs.to_le_bytes());
        out.push(u8::from(self.collapse_key.is_some()));
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(&self.payload);
        out
    }

    pub fn from_bytes(b: &[u8]) -> Result<MessageRecord, StoreError> {
        let corrupt = |why: &str| StoreError::Corrupt { what: "message", why: why.to_owned() };
        if b.len() < 34 {
            return Err(corrupt("short header"));
        }
        let u64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(x)
        };
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let key_len = u32_at(30) as usize;
        let key_end = 34usize
            .checked_add(key_len)
            .filter(|&e| e <= b.len())
            .ok_or_else(|| corrupt("collapse key overruns"))?;
        let collapse_key = if b[29] == 1 {
            Some(
                String::from_utf8(b[34..key_end].to_vec())
                    .map_err(|_| corrupt("collapse key is not UTF-8"))?,
            )
        } else {
            None
        };
        Ok(MessageRecord {
            push_id: u64_at(0),
            created_ms: u64_at(8),
            expires_ms: u64_at(16),
            flags: b[24],
            ttl_secs: u32_at(25),
            collapse_key,
            payload: b[key_end..].to_vec(),
        })
    }
}

impl Store for RedbStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.with_db(load_db)
    }

    fn commit(&self, ops: &[Op]) -> Result<(), StoreError> {
        self.with_db(|db| commit_db(db, ops))
    }

    fn reopen(&self) -> Result<(), StoreError> {
        let mut guard = self.db.write().unwrap_or_else(|p| p.into_inner());
        // The old handle must be gone first: redb refuses a second open of the same file.
        if let Some(old) = guard.take() {
            let _ = quietly(move || drop(old));
        }
        *guard = Some(Self::open_file(&self.path)?);
        Ok(())
    }
}

fn load_db(db: &Database) -> Result<Snapshot, StoreError> {
    let txn = db.begin_read().map_err(dberr)?;
    let mut s = Snapshot::default();
    for row in txn.open_table(USERS).map_err(dberr)?.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        s.users.push((k.value().to_owned(), from_json("user", v.value())?));
    }
    for row in txn.open_table(GROUPS).map_err(dberr)?.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        s.groups.push((k.value().to_owned(), from_json("group", v.value())?));
    }
    for row in txn.open_table(KEYS).map_err(dberr)?.iter().map_err(dberr)? {
        let (_, v) = row.map_err(dberr)?;
        s.keys.push(from_json("key", v.value())?);
    }
    for row in txn.open_table(REVOCATIONS).map_err(dberr)?.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        s.revocations.push((k.value().to_owned(), from_json("revocation", v.value())?));
    }
    for row in txn.open_table(STREAMS).map_err(dberr)?.iter().map_err(dberr)? {
        let (_, v) = row.map_err(dberr)?;
        s.streams.push(from_json("stream", v.value())?);
    }
    for row in txn.open_table(MESSAGES).map_err(dberr)?.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        let (stream, seq) = k.value();
        s.messages.push((stream, seq, MessageRecord::from_bytes(v.value())?));
    }
    for row in txn.open_table(PUSHES).map_err(dberr)?.iter().map_err(dberr)? {
        let (_, v) = row.map_err(dberr)?;
        s.pushes.push(from_json("push", v.value())?);
    }
    for row in txn.open_table(CURSORS).map_err(dberr)?.iter().map_err(dberr)? {
        let (k, v) = row.map_err(dberr)?;
        let (user, device, stream) = k.value();
        s.cursors.push((user.to_owned(), device.to_owned(), stream, from_json("cursor", v.value())?));
    }
    let meta = txn.open_table(META).map_err(dberr)?;
    s.last_push_id = meta.get(META_LAST_PUSH_ID).map_err(dberr)?.map_or(0, |v| v.value());
    Ok(s)
}

fn commit_db(db: &Database, ops: &[Op]) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(dberr)?;
    {
        let mut users = txn.open_table(USERS).map_err(dberr)?;
        let mut groups = txn.open_table(GROUPS).map_err(dberr)?;
        let mut keys = txn.open_table(KEYS).map_err(dberr)?;
        let mut revocations = txn.open_table(REVOCATIONS).map_err(dberr)?;
        let mut streams = txn.open_table(STREAMS).map_err(dberr)?;
        let mut messages = txn.open_table(MESSAGES).map_err(dberr)?;
        let mut pushes = txn.open_table(PUSHES).map_err(dberr)?;
        let mut cursors = txn.open_table(CURSORS).map_err(dberr)?;
        let mut meta = txn.open_table(META).map_err(dberr)?;
        for op in ops {
            match op {
                Op::User(name, rec) => {
                    users.insert(name.as_str(), json(rec).as_slice()).map_err(dberr)?;
                }
                Op::Group(name, topics) => {
                    groups.insert(name.as_str(), json(topics).as_slice()).map_err(dberr)?;
                }
                Op::Key(rec) => {
                    keys.insert(rec.id, json(rec).as_slice()).map_err(dberr)?;
                }
                Op::KeyRemoved(id) => {
                    keys.remove(*id).map_err(dberr)?;
                }
                Op::Revocation(user, rec) => {
                    revocations.insert(user.as_str(), json(rec).as_slice()).map_err(dberr)?;
                }
                Op::RevocationRemoved(user) => {
                    revocations.remove(user.as_str()).map_err(dberr)?;
                }
                Op::Stream(rec) => {
                    streams.insert(rec.id, json(rec).as_slice()).map_err(dberr)?;
                }
                Op::Message(stream, seq, Some(m)) => {
                    messages.insert((*stream, *seq), m.to_bytes().as_slice()).map_err(dberr)?;
                }
                Op::Message(stream, seq, None) => {
                    messages.remove((*stream, *seq)).map_err(dberr)?;
                }
                Op::Push(rec) => {
                    pushes.insert(rec.id, json(rec).as_slice()).map_err(dberr)?;
                }
                Op::PushRemoved(id) => {
                    pushes.remove(*id).map_err(dberr)?;
                }
                Op::LastPushId(id) => {
                    meta.insert(META_LAST_PUSH_ID, *id).map_err(dberr)?;
                }
                Op::Cursor { user, device, stream, cursor } => {
                    cursors
                        .insert((user.as_str(), device.as_str(), *stream), json(cursor).as_slice())
                        .map_err(dberr)?;
                }
            }
        }
    }
    txn.commit().map_err(dberr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_record_round_trips() {
        for key in [None, Some("k".to_owned()), Some(String::new())] {
            let m = MessageRecord {
                push_id: 9,
                created_ms: 1,
                expires_ms: 2,
                flags: 5,
                ttl_secs: 60,
                collapse_key: key,
                payload: vec![1, 2, 3],
            };
            assert_eq!(MessageRecord::from_bytes(&m.to_bytes()).unwrap(), m);
        }
        assert!(MessageRecord::from_bytes(&[0; 10]).is_err());
        let mut bad = vec![0u8; 34];
        bad[30] = 200;
        assert!(MessageRecord::from_bytes(&bad).is_err());
    }
}
