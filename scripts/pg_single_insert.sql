-- pgbench script of the single-event baseline in scripts/bench.sh: what the
-- old service did per event, one INSERT into the raw events table per
-- transaction (pgbench runs each script execution as its own autocommit
-- statement). The service's schema, so the same table and indexes; no
-- event_ids registry, no rollups.
\set user_number random(1, 200)
INSERT INTO events (id, ts, event_type, user_id, session_id, properties, created_at)
VALUES (gen_random_uuid(), (extract(epoch FROM clock_timestamp()) * 1000)::bigint, 'order.placed',
        'user-' || :user_number, 'sess-0-user-' || :user_number || '-0',
        '{"order_id":"ORD-0-0000000001","symbol":"ADAUSDT","side":"BUY","order_type":"LIMIT","strategy_id":"strat-arbitrage-03","price":0.44141,"quantity":1806.51921,"latency_ms":15.682}',
        (extract(epoch FROM clock_timestamp()) * 1000)::bigint);
