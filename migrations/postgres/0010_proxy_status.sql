-- What each registered proxy runs, as it last reported it (KeepAlive), and the newest
-- snapshot a Watch stream pushed to its identity. Not resources: a report moves no version
-- and wakes no watcher. Kept in the store so that every replica can answer for proxies
-- connected to any replica. Rows go with their workload (deregister, lapsed lease).
-- Times are Unix milliseconds, except cert_expires_at (Unix seconds; 0 when not reported).
CREATE TABLE proxy_status (
    namespace        TEXT    NOT NULL,
    workload         TEXT    NOT NULL,
    spiffe_id        TEXT    NOT NULL,
    service          TEXT    NOT NULL,
    proxy_version    TEXT    NOT NULL,
    applied_version  BIGINT  NOT NULL,
    applied_at       BIGINT  NOT NULL,
    refused_version  BIGINT  NOT NULL,
    refused_reason   TEXT    NOT NULL,
    cert_expires_at  BIGINT  NOT NULL,
    last_seen        BIGINT  NOT NULL,
    latest_version   BIGINT  NOT NULL,
    latest_since     BIGINT  NOT NULL,
    -- The encoded ProxySnapshot pushed at snapshot_version (empty: none kept yet).
    snapshot_version BIGINT  NOT NULL DEFAULT 0,
    snapshot         BYTEA    NOT NULL DEFAULT '',
    PRIMARY KEY (namespace, workload)
);
CREATE INDEX proxy_status_identity ON proxy_status (spiffe_id, service);
