-- Span segments: spans are grouped by start time into segments of about --trace-max-spans / 8
-- spans, and the key that finds a trace's spans (and makes a re-sent span harmless) leads
-- with the segment. Trace ids are random, so with (trace_id, span_id) as the key a commit
-- of N spans touched about N different pages of one index as large as the whole store;
-- now it touches pages of the newest segment's part only, and retention deletes the oldest
-- segment as one contiguous range. See docs/observability.md, "How it is stored".
--
-- Segment `id` holds the spans that started in [start_ns, the next segment's start_ns).
-- `inserted` counts spans stored into it since it opened (a new segment opens when the
-- newest one has enough).
CREATE TABLE span_segments (
    id       BIGINT PRIMARY KEY,
    start_ns BIGINT NOT NULL UNIQUE,
    inserted BIGINT NOT NULL
);
INSERT INTO span_segments (id, start_ns, inserted)
    VALUES (0, -9223372036854775808, (SELECT count(*) FROM spans));

-- Stored spans are kept, all in segment 0. The span_segments row whose start-time range
-- holds start_ns.
ALTER TABLE spans ADD COLUMN segment BIGINT NOT NULL DEFAULT 0;
ALTER TABLE spans ALTER COLUMN segment DROP DEFAULT;
-- Serves GetTrace (one probe per segment) and makes a re-sent span harmless.
ALTER TABLE spans DROP CONSTRAINT spans_pkey;
ALTER TABLE spans ADD PRIMARY KEY (segment, trace_id, span_id);
