-- Span blocks: each batch a proxy reports is stored as one block, its spans encoded together
-- (protobuf quiver.v1.Span, repeated) with a summary that lets reads skip it: start-time
-- range, services, errored spans, longest duration, and a Bloom filter of its trace ids.
-- A span as a row with four index entries cost the control plane 5-10 us of CPU; a block
-- costs two rows per batch. See docs/observability.md, "How it is stored".
CREATE TABLE span_blocks (
    id              BIGSERIAL PRIMARY KEY,
    -- From the reporting proxy's certificate, never from the spans.
    namespace       TEXT    NOT NULL,
    -- SPIFFE id of the proxy that reported the batch.
    reporter        TEXT    NOT NULL,
    -- Earliest and latest span start in the block (Unix ns).
    start_min       BIGINT  NOT NULL,
    start_max       BIGINT  NOT NULL,
    spans           BIGINT  NOT NULL,
    -- Errored spans (5xx or a proxy-made error).
    errors          BIGINT  NOT NULL,
    max_duration_ns BIGINT  NOT NULL,
    -- The distinct services of its spans, sorted, one per line.
    services        TEXT    NOT NULL,
    -- SHA-256 of the reporter and every trace and span id: a batch sent twice is stored once.
    digest          BYTEA   NOT NULL UNIQUE,
    bloom           BYTEA   NOT NULL
);
-- Searches (newest first, by time range) and age retention.
CREATE INDEX span_blocks_start_max ON span_blocks (start_max);
-- The encoded spans, apart from the summaries: a search reads many summaries and few bodies,
-- and summaries stay small rows packed together (SQLite keeps a large value's tail on
-- overflow pages; Postgres moves it to TOAST).
CREATE TABLE span_block_bodies (
    block_id BIGINT  PRIMARY KEY REFERENCES span_blocks (id) ON DELETE CASCADE,
    body     BYTEA   NOT NULL
);

-- Spans stored before this migration are moved into blocks by the control plane in the
-- background after it starts (SQL cannot encode them), then this table is dropped.
ALTER TABLE spans RENAME TO spans_legacy;
DROP TABLE span_segments;
