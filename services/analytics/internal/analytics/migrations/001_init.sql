-- The score of each confirmed order: computed once by the live consumer
-- group, never by a rebuild.
CREATE TABLE order_scores (
	order_id    uuid PRIMARY KEY,
	customer_id uuid NOT NULL,
	score       integer NOT NULL CHECK (score BETWEEN 0 AND 1000),
	event_id    uuid NOT NULL,
	score_time  timestamptz NOT NULL DEFAULT now()
);

-- Rebuilds of the projections; at most one runs at a time.
CREATE TABLE rebuilds (
	rebuild_id     uuid PRIMARY KEY,
	state          text NOT NULL CHECK (state IN ('RUNNING', 'SWAPPED', 'FAILED')),
	-- The schema the new projections are built in while running.
	schema_name    text NOT NULL,
	-- The consumer group that replays the events.
	consumer_group text NOT NULL,
	from_time      timestamptz,
	events_applied bigint NOT NULL DEFAULT 0,
	lag            bigint NOT NULL DEFAULT 0,
	start_time     timestamptz NOT NULL DEFAULT now(),
	finish_time    timestamptz,
	error          text NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX rebuilds_one_running ON rebuilds ((true)) WHERE state = 'RUNNING';

-- The live projections. A rebuild creates a schema of tables like these
-- (CREATE TABLE ... LIKE live.x INCLUDING ALL) and swaps it in as "live".
CREATE SCHEMA live;

-- The events each set of projections has applied: a rebuild's tables get
-- events from the replay and from the live group, each applied once.
CREATE TABLE live.applied (
	event_id uuid PRIMARY KEY
);

-- What the projections know per order (see projection.go).
CREATE TABLE live.orders (
	order_id    uuid PRIMARY KEY,
	customer_id uuid NOT NULL,
	confirmed   boolean NOT NULL,
	cancelled   boolean NOT NULL,
	reason      text NOT NULL,
	lines       jsonb NOT NULL,
	total_minor bigint NOT NULL
);

-- Aggregates are kept in shards (the event's partition, or -1 for
-- registrations) that readers sum: each partition's consumer updates only
-- its own rows, so partitions applied in parallel never wait for each
-- other's locks.
CREATE TABLE live.outcomes (
	outcome       text NOT NULL,
	reason        text NOT NULL,
	shard         integer NOT NULL,
	orders        bigint NOT NULL,
	revenue_minor bigint NOT NULL,
	PRIMARY KEY (outcome, reason, shard)
);

CREATE TABLE live.sku_sales (
	sku           text NOT NULL,
	shard         integer NOT NULL,
	units         bigint NOT NULL,
	revenue_minor bigint NOT NULL,
	PRIMARY KEY (sku, shard)
);

CREATE TABLE live.customers (
	customer_id      uuid NOT NULL,
	shard            integer NOT NULL,
	orders_confirmed bigint NOT NULL,
	orders_cancelled bigint NOT NULL,
	spent_minor      bigint NOT NULL,
	PRIMARY KEY (customer_id, shard)
);
