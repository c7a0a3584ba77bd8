-- Service virtual IPs: each Service holds one address of the control plane's range from its
-- creation until its deletion. The primary key on the address is what keeps two Services
-- (applied at once on two replicas) from sharing one.
CREATE TABLE service_addresses (
    address   TEXT NOT NULL PRIMARY KEY,
    namespace TEXT NOT NULL,
    name      TEXT NOT NULL,
    UNIQUE (namespace, name)
);
