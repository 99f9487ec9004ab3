-- Every change of a product's counters raises its version in the same
-- transaction; StockChanged events carry it, and the stock cache keeps only
-- the highest version it has seen.
ALTER TABLE products ADD COLUMN version bigint NOT NULL DEFAULT 1;
