-- Money invariant, per customer: top-ups - captures + refunds = balance >= 0.
CREATE TABLE accounts (
	customer_id   uuid PRIMARY KEY,
	balance_minor bigint NOT NULL DEFAULT 0 CHECK (balance_minor >= 0),
	currency      text NOT NULL DEFAULT 'USD',
	create_time   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE payments (
	payment_id   uuid PRIMARY KEY,
	customer_id  uuid NOT NULL REFERENCES accounts,
	order_id     uuid,
	kind         text NOT NULL CHECK (kind IN ('TOP_UP', 'CAPTURE', 'REFUND')),
	amount_minor bigint NOT NULL CHECK (amount_minor > 0),
	create_time  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX payments_customer_idx ON payments (customer_id, create_time DESC);
-- At most one capture per order, whatever is redelivered.
CREATE UNIQUE INDEX payments_one_capture_idx ON payments (order_id) WHERE kind = 'CAPTURE';
