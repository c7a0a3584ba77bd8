-- API tokens expire (issue 17, item 4). 9223372036854775807 (i64::MAX ms) means never:
-- tokens created before expiry existed keep working until revoked.
ALTER TABLE api_tokens ADD COLUMN expires_at INTEGER NOT NULL DEFAULT 9223372036854775807;
