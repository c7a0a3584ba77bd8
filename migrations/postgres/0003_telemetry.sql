-- Spans and per-edge request statistics reported by proxies (ReportTelemetry), kept for the
-- trace search, the waterfall view and the service graph. Not resources: writing them moves
-- no version and wakes no watcher. Rows are deleted by the telemetry sweeper (age and count).
-- Times are Unix nanoseconds.
CREATE TABLE spans (
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
    is_error           BOOLEAN  NOT NULL,
    attempt            INTEGER  NOT NULL,
    request_bytes      BIGINT   NOT NULL,
    response_bytes     BIGINT   NOT NULL,
    quic_connection_id TEXT     NOT NULL,
    endpoint           TEXT     NOT NULL,
    -- SPIFFE id of the proxy that reported the span.
    reporter           TEXT     NOT NULL,
    -- The primary key serves GetTrace (trace_id prefix) and makes a re-sent batch harmless.
    PRIMARY KEY (trace_id, span_id)
);
-- "traces of service X in the last 15 minutes", newest first.
CREATE INDEX spans_service_start ON spans (service, start_ns);
-- "... with errors": errored spans are few, so this index stays small.
CREATE INDEX spans_errors_start ON spans (start_ns) WHERE is_error;
-- Searches without a service, and the sweeper's age and count cut-offs.
CREATE INDEX spans_start ON spans (start_ns);

CREATE TABLE edge_stats (
    id                  BIGSERIAL PRIMARY KEY,
    namespace           TEXT   NOT NULL,
    source_service      TEXT   NOT NULL,
    destination_service TEXT   NOT NULL,
    interval_start_ns   BIGINT NOT NULL,
    interval_end_ns     BIGINT NOT NULL,
    requests            BIGINT NOT NULL,
    errors              BIGINT NOT NULL,
    -- Counts per LATENCY_BOUNDS_MS bucket, comma separated (14 numbers).
    latency_buckets     TEXT   NOT NULL,
    reporter            TEXT   NOT NULL
);
CREATE INDEX edge_stats_end ON edge_stats (interval_end_ns);
