-- Leases of registered workloads. Kept apart from `resources` so that a keep-alive (every
-- few seconds per proxy) writes no new version and wakes no watcher; only registering,
-- deregistering and a lapsed lease (deleted by the sweeper) change the Workload resource.
CREATE TABLE workload_leases (
    namespace  TEXT   NOT NULL,
    name       TEXT   NOT NULL,
    spiffe_id  TEXT   NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
);
CREATE INDEX workload_leases_expires_at ON workload_leases (expires_at);
