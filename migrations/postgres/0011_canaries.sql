-- Canary analysis: edge statistics carry the subset of the destination the requests were
-- routed to (what a canary's checks are judged by), and one lease per driven object (a
-- canary), so that exactly one control-plane replica drives it; another takes over when
-- the holder stops renewing. Times are Unix milliseconds.
ALTER TABLE edge_stats ADD COLUMN destination_subset TEXT NOT NULL DEFAULT '';

CREATE TABLE controller_leases (
    -- What is driven, e.g. "Canary/shop/reviews".
    name       TEXT   PRIMARY KEY,
    -- The replica that drives it.
    holder     TEXT   NOT NULL,
    expires_at BIGINT NOT NULL
);
