-- Root rotation (issue 17, item 11): `quiverctl ca rotate` puts a new root and intermediate in
-- ca_keys and keeps the old root here, certificate only (it signs nothing any more), so the
-- trust bundle is old root + new root until `quiverctl ca retire` deletes it.
CREATE TABLE ca_retiring_roots (
    cert_pem   TEXT    PRIMARY KEY,
    created_at BIGINT  NOT NULL
);

-- The SVIDs the control plane issued (Join, Renew) and that have not been renewed since: what
-- `quiverctl ca retire` counts to say who still holds a certificate from a retiring root. A
-- Renew deletes the row of the certificate it was called with; rows past not_after go.
CREATE TABLE svids (
    fingerprint TEXT    PRIMARY KEY,
    spiffe_id   TEXT    NOT NULL,
    root        TEXT    NOT NULL,
    not_after   BIGINT  NOT NULL
);
CREATE INDEX svids_root ON svids (root);
