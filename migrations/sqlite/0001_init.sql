-- Users: `number` is the id's number (USER0042 -> 42); AUTOINCREMENT never reuses one.
CREATE TABLE users (
    number     INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL,
    email      TEXT    NOT NULL,
    -- Lower-cased email: uniqueness ignores case.
    email_key  TEXT    NOT NULL UNIQUE,
    phone      TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE INDEX users_status ON users (status, number);

CREATE TABLE orders (
    order_id      TEXT    PRIMARY KEY,
    user_id       TEXT    NOT NULL,
    -- The items as JSON (an order is written once and read whole).
    items         TEXT    NOT NULL,
    total_amount  REAL    NOT NULL,
    status        TEXT    NOT NULL,
    cancel_reason TEXT    NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

-- CreateOrder idempotency keys, per user.
CREATE TABLE order_keys (
    user_id  TEXT NOT NULL,
    key      TEXT NOT NULL,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    PRIMARY KEY (user_id, key)
);
