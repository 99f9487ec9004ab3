-- Stock invariant, per SKU: initial + adjustments = available + reserved + sold.
CREATE TABLE products (
	sku         text PRIMARY KEY,
	name        text NOT NULL,
	price_minor bigint NOT NULL CHECK (price_minor >= 0),
	currency    text NOT NULL,
	initial     bigint NOT NULL CHECK (initial >= 0),
	adjustments bigint NOT NULL DEFAULT 0,
	available   bigint NOT NULL CHECK (available >= 0),
	reserved    bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
	sold        bigint NOT NULL DEFAULT 0 CHECK (sold >= 0),
	create_time timestamptz NOT NULL DEFAULT now(),
	CHECK (initial + adjustments = available + reserved + sold)
);

-- One row per order line: RESERVED -> COMMITTED -> RELEASED (restocked), or
-- RESERVED -> RELEASED.
CREATE TABLE reservations (
	order_id         uuid NOT NULL,
	sku              text NOT NULL REFERENCES products,
	quantity         bigint NOT NULL CHECK (quantity > 0),
	unit_price_minor bigint NOT NULL,
	state            text NOT NULL CHECK (state IN ('RESERVED', 'COMMITTED', 'RELEASED')),
	update_time      timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (order_id, sku)
);
