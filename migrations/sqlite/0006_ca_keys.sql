-- The mesh CA as a root and an online intermediate (issue 17, item 11). Private keys are
-- stored sealed (AES-256-GCM under the key-encryption key, --ca-key-encryption-key), never in
-- clear. The root signs only intermediates; the intermediate (at most one year) signs SVIDs.
-- A store from before this migration keeps its single plaintext CA in certificate_authority
-- until the control plane starts with a key-encryption key: it then seals that CA as the root
-- here, issues an intermediate from it, and deletes the plaintext row.
CREATE TABLE ca_keys (
    role       TEXT    PRIMARY KEY CHECK (role IN ('root', 'intermediate')),
    cert_pem   TEXT    NOT NULL,
    key_sealed TEXT    NOT NULL,
    created_at BIGINT  NOT NULL
);
