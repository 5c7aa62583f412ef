-- Raw equivalent of GET /api/v1/events/stats (default range: the last 24 h,
-- both ends inclusive) over the events table. psql variable :now_ms.
SELECT event_type, count(*) FROM events
WHERE ts BETWEEN :now_ms - 86400000 AND :now_ms
GROUP BY 1;
