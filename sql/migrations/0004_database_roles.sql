-- PostgreSQL roles (DESIGN section 7). Created only when the migrating user
-- may create roles; otherwise a notice says so and the grants are skipped.
--
-- eslbridge_daemon: what `eslbridge run` needs and no more: write the call
--   tables and their events, read users/roles for the directory and the
--   authorizer, record last_login, append audit entries, keep rate limits, run
--   upkeep (partitions, summary refresh, retention) through SECURITY DEFINER
--   functions.
-- eslbridge_auditor: read-only: the statistics views, the audit log, and the
--   call tables as stored (ciphertext; decrypting needs the key). No write
--   anywhere, no users table (password hashes).
-- Both are NOLOGIN groups: grant them to login roles (GRANT eslbridge_daemon TO app).

DO $$
DECLARE
    may boolean;
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may FROM pg_roles WHERE rolname = current_user;
    IF NOT may THEN
        RAISE NOTICE 'current user % may not create roles: eslbridge_daemon and eslbridge_auditor skipped',
            current_user;
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eslbridge_daemon') THEN
        CREATE ROLE eslbridge_daemon NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eslbridge_auditor') THEN
        CREATE ROLE eslbridge_auditor NOLOGIN;
    END IF;

    EXECUTE format('GRANT CONNECT ON DATABASE %I TO eslbridge_daemon, eslbridge_auditor', current_database());
    GRANT USAGE ON SCHEMA public TO eslbridge_daemon, eslbridge_auditor;

    -- Daemon
    GRANT SELECT, INSERT, UPDATE, DELETE ON call_records, calls, call_events TO eslbridge_daemon;
    GRANT SELECT ON users, roles, permissions, system_config TO eslbridge_daemon;
    GRANT UPDATE (last_login) ON users TO eslbridge_daemon;
    GRANT INSERT, DELETE ON audit_logs TO eslbridge_daemon;
    GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limits TO eslbridge_daemon;
    GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO eslbridge_daemon;
    GRANT SELECT ON call_statistics, user_activity, daily_call_summary TO eslbridge_daemon;

    -- Auditor
    GRANT SELECT ON call_statistics, user_activity, daily_call_summary TO eslbridge_auditor;
    GRANT SELECT ON audit_logs, call_records, calls, call_events TO eslbridge_auditor;
END;
$$;

-- Upkeep needs table ownership (CREATE/DROP partition); run it as the owner.
ALTER FUNCTION create_month_partition(regclass, date) SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION ensure_partitions(integer, date) SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION drop_expired_partitions(regclass, interval) SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION maintain_partitions(integer, interval, interval) SECURITY DEFINER SET search_path = public, pg_temp;

-- Functions that change data are not for everyone (PostgreSQL grants EXECUTE to PUBLIC by default).
REVOKE EXECUTE ON FUNCTION create_month_partition(regclass, date), ensure_partitions(integer, date),
    drop_expired_partitions(regclass, interval), maintain_partitions(integer, interval, interval),
    refresh_daily_summary(), cleanup_old_call_events(integer), cleanup_old_audit_logs(integer),
    delete_user_data(uuid) FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eslbridge_daemon') THEN
        GRANT EXECUTE ON FUNCTION ensure_partitions(integer, date),
            drop_expired_partitions(regclass, interval), maintain_partitions(integer, interval, interval),
            refresh_daily_summary(), cleanup_old_call_events(integer), cleanup_old_audit_logs(integer)
            TO eslbridge_daemon;
    END IF;
END;
$$;
