-- Audit shipping: how far each chain of the trail has been delivered to each collector
-- (`sink` names the collector). A chain is delivered in order, so one position says it all.
CREATE TABLE audit_ship_cursors (
    sink       TEXT   NOT NULL,
    chain      TEXT   NOT NULL,
    chain_seq  BIGINT NOT NULL,
    hash       TEXT   NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (sink, chain)
);
