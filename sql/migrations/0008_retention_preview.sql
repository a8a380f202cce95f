-- Retention preview (eslbridge retention run --dry-run): which monthly partitions
-- drop_expired_partitions would drop, with their ranges so rows can be counted through the
-- parent (partitions carry no grants of their own). drop_expired_partitions now uses it, so the
-- preview and the drop can never disagree.

CREATE OR REPLACE FUNCTION expired_partitions(parent regclass, keep interval)
RETURNS TABLE (partition regclass, lower_bound timestamptz, upper_bound timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT p.part, p.lo, p.hi
      FROM (SELECT c.oid::regclass AS part,
                   substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz AS lo,
                   substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz AS hi
              FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = parent AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT') p
     WHERE p.hi <= now() - keep
     ORDER BY p.lo
$$;

CREATE OR REPLACE FUNCTION drop_expired_partitions(parent regclass, keep interval)
RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT e.partition, (SELECT relname FROM pg_class WHERE oid = e.partition) AS relname
               FROM expired_partitions(parent, keep) e
    LOOP
        -- call_events references calls: delete through the partition so
        -- ON DELETE CASCADE clears those events, then detach and drop.
        IF EXISTS (SELECT 1 FROM pg_constraint WHERE confrelid = parent AND contype = 'f') THEN
            EXECUTE format('DELETE FROM %s', r.partition);
            EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, r.partition);
        END IF;
        EXECUTE format('DROP TABLE %s', r.partition);
        RETURN NEXT r.relname::text;
    END LOOP;
END;
$$;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eslbridge_daemon') THEN
        GRANT EXECUTE ON FUNCTION expired_partitions(regclass, interval) TO eslbridge_daemon;
    END IF;
END;
$$;
