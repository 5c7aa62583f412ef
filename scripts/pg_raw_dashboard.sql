-- Raw equivalent of GET /api/v1/dashboard/metrics over the events table:
-- order counts, filled notional and latency quantiles of the last hour,
-- distinct users and strategies of the last 5 minutes, events of the last
-- complete minute. psql variable :now_ms (windows end at the next minute,
-- as in src/query/dashboard.rs).
WITH hour AS (
    SELECT ts, event_type, user_id, properties::jsonb AS p FROM events
    WHERE ts >= (:now_ms / 60000 + 1) * 60000 - 3600000 AND ts < (:now_ms / 60000 + 1) * 60000
)
SELECT count(*) FILTER (WHERE event_type = 'order.placed') AS orders_placed,
       count(*) FILTER (WHERE event_type = 'order.filled') AS orders_filled,
       count(*) FILTER (WHERE event_type = 'order.rejected') AS orders_rejected,
       count(*) FILTER (WHERE event_type = 'order.canceled') AS orders_canceled,
       sum((p ->> 'price')::float8 * (p ->> 'quantity')::float8) FILTER (WHERE event_type = 'order.filled') AS total_volume,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY (p ->> 'latency_ms')::float8)
           FILTER (WHERE event_type LIKE 'order.%') AS latency_quantiles,
       count(DISTINCT user_id) FILTER (WHERE ts >= (:now_ms / 60000 + 1) * 60000 - 300000) AS active_users,
       count(DISTINCT p ->> 'strategy_id') FILTER (WHERE ts >= (:now_ms / 60000 + 1) * 60000 - 300000) AS active_strategies,
       count(*) FILTER (WHERE ts >= (:now_ms / 60000 - 1) * 60000 AND ts < (:now_ms / 60000) * 60000) AS last_complete_minute
FROM hour;
