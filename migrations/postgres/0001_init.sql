-- Users: `number` is the id's number (USER0042 -> 42); an identity column never hands out
-- a number twice, even to replicas racing on it.
CREATE TABLE users (
    number     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       TEXT   NOT NULL,
    email      TEXT   NOT NULL,
    -- Lower-cased email: uniqueness ignores case, and the database enforces it across
    -- every replica.
    email_key  TEXT   NOT NULL UNIQUE,
    phone      TEXT   NOT NULL,
    status     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE INDEX users_status ON users (status, number);

CREATE TABLE orders (
    order_id      TEXT             PRIMARY KEY,
    user_id       TEXT             NOT NULL,
    -- The items as JSON (an order is written once and read whole).
    items         TEXT             NOT NULL,
    total_amount  DOUBLE PRECISION NOT NULL,
    status        TEXT             NOT NULL,
    cancel_reason TEXT             NOT NULL DEFAULT '',
    created_at    BIGINT           NOT NULL,
    updated_at    BIGINT           NOT NULL
);

-- CreateOrder idempotency keys, per user.
CREATE TABLE order_keys (
    user_id  TEXT NOT NULL,
    key      TEXT NOT NULL,
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    PRIMARY KEY (user_id, key)
);

-- Live updates across replicas: every status change, whoever writes it, is announced on
-- the channel `jisu_order_changes` (payload: the order id) when its transaction commits.
CREATE FUNCTION jisu_announce_order_change() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('jisu_order_changes', NEW.order_id);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER orders_announce_change
    AFTER UPDATE OF status ON orders
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION jisu_announce_order_change();
