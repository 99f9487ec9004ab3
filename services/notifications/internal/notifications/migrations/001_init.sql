-- Exactly one notification per causing event (event_id is unique).
CREATE TABLE notifications (
	seq             bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
	notification_id uuid PRIMARY KEY,
	customer_id     uuid NOT NULL,
	-- What it is about: the customer (WELCOME) or the order.
	about           uuid NOT NULL,
	kind            text NOT NULL CHECK (kind IN ('WELCOME', 'ORDER_CONFIRMED', 'ORDER_CANCELLED')),
	subject         text NOT NULL,
	body            text NOT NULL,
	event_id        uuid NOT NULL UNIQUE,
	create_time     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX notifications_customer_idx ON notifications (customer_id, seq);
