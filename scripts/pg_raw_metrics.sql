-- Raw equivalent of GET /api/v1/metrics?metric_name=orders.latency_ms&interval=1m
-- (last 24 h): per minute count, sum, min, max, mean, p50/p95/p99 of the
-- latency_ms property of order.* events. psql variable :now_ms.
SELECT ts / 60000 * 60000 AS bucket_start, count(*), sum(latency), min(latency), max(latency), avg(latency),
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency)
FROM (SELECT ts, (properties::jsonb ->> 'latency_ms')::float8 AS latency
      FROM events
      WHERE ts BETWEEN :now_ms - 86400000 AND :now_ms AND event_type LIKE 'order.%') AS orders
WHERE latency IS NOT NULL
GROUP BY 1 ORDER BY 1;
