-- Where the topics ended once the rebuild was visible to the live group:
-- the replay has caught up, and the rebuild can be swapped in, once its
-- group has finished every event before these ends (transport.Ends, as
-- JSON). Set by the first rebuilder to look at the running rebuild.
ALTER TABLE rebuilds ADD COLUMN ends jsonb;

-- Whether the replay's consumer group has been removed from the broker
-- (and its inbox rows deleted) after the rebuild finished: a group left
-- behind would hold back the trimming of Redis streams.
ALTER TABLE rebuilds ADD COLUMN group_deleted boolean NOT NULL DEFAULT false;
