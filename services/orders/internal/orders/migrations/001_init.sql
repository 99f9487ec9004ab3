-- An order and its saga state, changed together in one transaction with the
-- saga's commands (outbox).
CREATE TABLE orders (
	order_id       uuid PRIMARY KEY,
	customer_id    uuid NOT NULL,
	status         text NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
	failure_reason text NOT NULL DEFAULT '',
	total_minor    bigint NOT NULL DEFAULT 0 CHECK (total_minor >= 0),
	currency       text NOT NULL DEFAULT 'USD',
	-- RESERVING: waiting for inventory; CHARGING: waiting for payments;
	-- DONE: terminal. saga_deadline is the current step's deadline.
	saga_step      text NOT NULL CHECK (saga_step IN ('RESERVING', 'CHARGING', 'DONE')),
	saga_deadline  timestamptz,
	-- Bumped on every change (WatchOrder compares whole orders, not this).
	version        bigint NOT NULL DEFAULT 1,
	create_time    timestamptz NOT NULL DEFAULT now(),
	update_time    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX orders_customer_idx ON orders (customer_id, create_time DESC, order_id DESC);
CREATE INDEX orders_deadline_idx ON orders (saga_deadline) WHERE saga_deadline IS NOT NULL;

CREATE TABLE order_items (
	order_id         uuid NOT NULL REFERENCES orders,
	line             int NOT NULL,
	sku              text NOT NULL,
	quantity         bigint NOT NULL CHECK (quantity BETWEEN 1 AND 1000),
	unit_price_minor bigint,
	PRIMARY KEY (order_id, line)
);
