CREATE TABLE customers (
	customer_id uuid PRIMARY KEY,
	email       text NOT NULL,
	name        text NOT NULL,
	create_time timestamptz NOT NULL DEFAULT now()
);
-- Emails are compared case-insensitively: one registration per address.
CREATE UNIQUE INDEX customers_email_idx ON customers (lower(email));
