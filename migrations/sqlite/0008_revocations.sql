-- Revoked identities (issue 17, item 3). One row per SPIFFE id: a later revocation of the
-- same id moves not_before forward (it covers every certificate the earlier one did).
-- not_before is Unix seconds (certificates of the id with an earlier notBefore are denied),
-- revoked_at and expires_at Unix milliseconds (expires_at: when no certificate it covers can
-- still be valid, so proxies stop being sent it); rows stay until forget_at, when no join
-- token made before the revocation can still be redeemed.
CREATE TABLE revocations (
    spiffe_id  TEXT   PRIMARY KEY,
    not_before INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    forget_at  INTEGER NOT NULL,
    reason     TEXT   NOT NULL,
    workload   TEXT   NOT NULL
);
CREATE INDEX revocations_forget_at ON revocations (forget_at);
