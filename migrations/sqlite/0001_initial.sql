-- Quiver control-plane store (SQLite).
-- One global version counter orders every write; resources hold the current objects (protobuf
-- bodies), changes is the ordered change feed that watchers on every replica read.

CREATE TABLE quiver_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER  NOT NULL
);
INSERT INTO quiver_version (id, version) VALUES (1, 0);

CREATE TABLE resources (
    kind             TEXT   NOT NULL,
    namespace        TEXT   NOT NULL,
    name             TEXT   NOT NULL,
    resource_version INTEGER NOT NULL,
    body             BLOB   NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (kind, namespace, name)
);

CREATE TABLE changes (
    resource_version INTEGER PRIMARY KEY,
    op               TEXT   NOT NULL CHECK (op IN ('CREATE', 'UPDATE', 'DELETE')),
    kind             TEXT   NOT NULL,
    namespace        TEXT   NOT NULL,
    name             TEXT   NOT NULL,
    body             BLOB   NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);

CREATE TABLE api_tokens (
    id          TEXT   PRIMARY KEY,
    token_hash  TEXT   NOT NULL UNIQUE,
    role        TEXT   NOT NULL CHECK (role IN ('admin', 'viewer')),
    description TEXT   NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE join_tokens (
    id              TEXT    PRIMARY KEY,
    token_hash      TEXT    NOT NULL UNIQUE,
    namespace       TEXT    NOT NULL,
    service_account TEXT    NOT NULL,
    expires_at      INTEGER  NOT NULL,
    max_uses        INTEGER NOT NULL,
    uses            INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER  NOT NULL
);

CREATE TABLE certificate_authority (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    cert_pem   TEXT    NOT NULL,
    key_pem    TEXT    NOT NULL,
    created_at INTEGER  NOT NULL
);
