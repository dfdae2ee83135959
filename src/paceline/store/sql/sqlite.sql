-- paceline store, SQLite flavour. One file per job; WAL so `status` reads while a run writes.
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- seq is the order items were read in; id is the source's stable id.
-- data is the source record until the item is done, then NULL (it may hold what should not
-- stay); NULL too for a source line that was not a valid item (failed with its line).
CREATE TABLE IF NOT EXISTS items (
    seq        INTEGER PRIMARY KEY,
    id         TEXT NOT NULL UNIQUE,
    data       TEXT,
    priority   REAL NOT NULL DEFAULT 0,
    status     TEXT NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    not_before REAL,
    last_error TEXT,
    line       INTEGER,
    lease      TEXT,
    wrote      INTEGER,  -- 1 when the done item's task returned a row for the sink
    updated_at REAL,
    src_offset INTEGER   -- where reading the source meets the item again
);
CREATE INDEX IF NOT EXISTS items_pending ON items (priority DESC, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS items_retry ON items (not_before) WHERE status = 'retry';
CREATE INDEX IF NOT EXISTS items_failed ON items (updated_at) WHERE status = 'failed';
CREATE INDEX IF NOT EXISTS items_running ON items (lease) WHERE status = 'running';

-- Counters kept in step with every status change, so status answers without a table scan.
CREATE TABLE IF NOT EXISTS counts (
    status TEXT PRIMARY KEY,
    n      INTEGER NOT NULL
);
INSERT OR IGNORE INTO counts (status, n) VALUES
    ('pending', 0), ('running', 0), ('retry', 0), ('done', 0), ('failed', 0), ('skipped', 0);

-- How far the source has been read; committed with the items read up to there.
CREATE TABLE IF NOT EXISTS source_state (
    one       INTEGER PRIMARY KEY CHECK (one = 1),
    "offset"  INTEGER NOT NULL,
    line      INTEGER NOT NULL,
    exhausted INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS duplicates (
    line       INTEGER NOT NULL,
    id         TEXT NOT NULL,
    first_line INTEGER,
    PRIMARY KEY (line, id)
);

-- One row per worker process (on SQLite, one worker is one run).
CREATE TABLE IF NOT EXISTS runs (
    run_id      TEXT PRIMARY KEY,
    pid         INTEGER NOT NULL,
    host        TEXT NOT NULL,
    started_at  REAL NOT NULL,
    heartbeat   REAL NOT NULL,
    finished_at REAL,
    state       TEXT NOT NULL,
    stats       TEXT
);

CREATE TABLE IF NOT EXISTS sink_state (
    one   INTEGER PRIMARY KEY CHECK (one = 1),
    value TEXT
);

-- Keys are stored by fingerprint and shown masked; the secret never reaches this file.
CREATE TABLE IF NOT EXISTS keys (
    fingerprint  TEXT PRIMARY KEY,
    masked       TEXT NOT NULL,
    requests     INTEGER NOT NULL DEFAULT 0,
    tokens       INTEGER NOT NULL DEFAULT 0,
    rate_limited INTEGER NOT NULL DEFAULT 0,
    errors       INTEGER NOT NULL DEFAULT 0,
    state        TEXT NOT NULL DEFAULT 'ready',
    until        REAL,
    reason       TEXT,
    info         TEXT,
    updated_at   REAL
);

-- Claim budgets: items taken per run (--max-items) and per local day (--per-day).
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    n    INTEGER NOT NULL
);

-- Daily quota spent per key group and day window, so a restart knows what is left today.
CREATE TABLE IF NOT EXISTS key_days (
    fingerprint TEXT NOT NULL,
    day_start   REAL NOT NULL,
    unit        TEXT NOT NULL,
    used        REAL NOT NULL,
    PRIMARY KEY (fingerprint, day_start, unit)
);
