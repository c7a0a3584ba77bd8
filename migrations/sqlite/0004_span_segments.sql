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
    id       INTEGER PRIMARY KEY,
    start_ns BIGINT  NOT NULL UNIQUE,
    inserted BIGINT  NOT NULL
);
INSERT INTO span_segments (id, start_ns, inserted)
    VALUES (0, -9223372036854775808, (SELECT count(*) FROM spans));

-- SQLite cannot change a primary key in place: rebuild the table (stored spans kept, all in
-- segment 0).
CREATE TABLE spans_segmented (
    trace_id           TEXT     NOT NULL,
    span_id            TEXT     NOT NULL,
    parent_span_id     TEXT     NOT NULL,
    kind               TEXT     NOT NULL CHECK (kind IN ('CLIENT', 'SERVER')),
    -- From the reporting proxy's certificate, never from the span.
    namespace          TEXT     NOT NULL,
    service            TEXT     NOT NULL,
    peer_service       TEXT     NOT NULL,
    peer_identity      TEXT     NOT NULL,
    name               TEXT     NOT NULL,
    route              TEXT     NOT NULL,
    start_ns           BIGINT   NOT NULL,
    duration_ns        BIGINT   NOT NULL,
    status_code        INTEGER  NOT NULL,
    error              TEXT     NOT NULL,
    -- status_code >= 500 or a proxy-made error; a column so that it can be indexed.
    is_error           INTEGER  NOT NULL,
    attempt            INTEGER  NOT NULL,
    request_bytes      BIGINT   NOT NULL,
    response_bytes     BIGINT   NOT NULL,
    quic_connection_id TEXT     NOT NULL,
    endpoint           TEXT     NOT NULL,
    -- SPIFFE id of the proxy that reported the span.
    reporter           TEXT     NOT NULL,
    -- The span_segments row whose start-time range holds start_ns.
    segment            INTEGER  NOT NULL,
    -- Serves GetTrace (one probe per segment) and makes a re-sent span harmless.
    PRIMARY KEY (segment, trace_id, span_id)
);
INSERT INTO spans_segmented
    SELECT trace_id, span_id, parent_span_id, kind, namespace, service, peer_service,
           peer_identity, name, route, start_ns, duration_ns, status_code, error, is_error,
           attempt, request_bytes, response_bytes, quic_connection_id, endpoint, reporter, 0
    FROM spans;
DROP TABLE spans;
ALTER TABLE spans_segmented RENAME TO spans;
-- "traces of service X in the last 15 minutes", newest first.
CREATE INDEX spans_service_start ON spans (service, start_ns);
-- "... with errors": errored spans are few, so this index stays small.
CREATE INDEX spans_errors_start ON spans (start_ns) WHERE is_error;
-- Searches without a service, and the sweeper's age and count cut-offs.
CREATE INDEX spans_start ON spans (start_ns);
