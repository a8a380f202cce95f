-- PostgreSQL roles and their privileges (DESIGN section 7), as one re-runnable
-- function: this migration calls it, and `eslbridge db grant` calls it again
-- later (as a superuser or a user with CREATEROLE) to create missing roles or
-- repair drifted privileges. It revokes what the three roles hold on
-- eslbridge's objects, then grants exactly what each job needs:
--
-- eslbridge_daemon: `eslbridge run` and `check-config`: write the call tables
--   and their events, keep rate limits, read users (never password_hash; the
--   directory needs sip_ha1) and roles, record last_login, append audit rows
--   (INSERT ... RETURNING id needs SELECT on id), run upkeep (partitions,
--   summary refresh, retention) and read schema_migrations.
-- eslbridge_admin: every admin command: users and roles, GDPR export and
--   erase, key rotation, retention, migration status.
-- eslbridge_auditor: read-only: the statistics views, the audit log, roles,
--   and the call tables as stored (ciphertext). Never the users table.
--
-- None owns anything, so none can drop or alter a table. All are NOLOGIN
-- groups: grant them to login roles (`eslbridge db grant --daemon-login NAME`).
-- When the caller may not create a missing role, a WARNING says so (the
-- migration runner prints it) and the other roles still get their grants.

CREATE OR REPLACE FUNCTION eslbridge_grant_roles() RETURNS SETOF text
LANGUAGE plpgsql SET search_path = public, pg_temp AS $$
DECLARE
    daemon CONSTANT text := 'eslbridge_daemon';
    admin CONSTANT text := 'eslbridge_admin';
    auditor CONSTANT text := 'eslbridge_auditor';
    tables CONSTANT text := 'permissions, roles, users, call_records, calls, call_events, system_config, '
                            'audit_logs, rate_limits, schema_migrations, call_statistics, user_activity, '
                            'daily_call_summary';
    may_create boolean;
    r text;
    present text[] := '{}';
    missing text[] := '{}';
    user_columns text;
    f regprocedure;
    own_functions regprocedure[];
BEGIN
    SELECT rolsuper OR rolcreaterole INTO may_create FROM pg_roles WHERE rolname = current_user;
    FOREACH r IN ARRAY ARRAY[daemon, admin, auditor] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            IF NOT may_create THEN
                missing := missing || r;
                CONTINUE;
            END IF;
            EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            RETURN NEXT format('created role %s', r);
        END IF;
        present := present || r;
    END LOOP;
    IF cardinality(missing) > 0 THEN
        RAISE WARNING 'user % may not create roles: % not created; run `eslbridge db grant` as a superuser '
            '(or a user with CREATEROLE) to create them', current_user, array_to_string(missing, ', ');
        RETURN NEXT format('could not create %s', array_to_string(missing, ', '));
    END IF;

    -- eslbridge's own functions: extension members (pgcrypto) belong to whoever installed them, and
    -- granting on those would only warn.
    SELECT coalesce(array_agg(p.oid::regprocedure), '{}') INTO own_functions
      FROM pg_proc p
     WHERE p.pronamespace = 'public'::regnamespace
       AND NOT EXISTS (SELECT 1 FROM pg_depend d
                        WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e');
    FOREACH r IN ARRAY present LOOP
        EXECUTE format('REVOKE ALL ON %s FROM %I', tables, r);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM %I', r);
        FOREACH f IN ARRAY own_functions LOOP
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM %I', f, r);
        END LOOP;
        EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', r);
        -- Only the database's owner may; PUBLIC holds CONNECT and TEMPORARY by default anyway.
        IF pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE') THEN
            EXECUTE format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', current_database(), r);
        END IF;
    END LOOP;

    IF daemon = ANY (present) THEN
        SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO user_columns
          FROM pg_attribute
         WHERE attrelid = 'users'::regclass AND attnum > 0 AND NOT attisdropped AND attname <> 'password_hash';
        GRANT SELECT, INSERT, UPDATE, DELETE ON call_records, calls, call_events, rate_limits TO eslbridge_daemon;
        EXECUTE format('GRANT SELECT (%s) ON users TO eslbridge_daemon', user_columns);
        GRANT UPDATE (last_login) ON users TO eslbridge_daemon;
        GRANT SELECT ON roles, permissions, system_config, schema_migrations TO eslbridge_daemon;
        GRANT SELECT (id, "timestamp"), INSERT, DELETE ON audit_logs TO eslbridge_daemon;
        GRANT SELECT ON call_statistics, user_activity, daily_call_summary TO eslbridge_daemon;
        GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO eslbridge_daemon;
        GRANT EXECUTE ON FUNCTION ensure_partitions(integer, date), expired_partitions(regclass, interval),
            drop_expired_partitions(regclass, interval), maintain_partitions(integer, interval, interval),
            refresh_daily_summary(), cleanup_old_call_events(integer), cleanup_old_audit_logs(integer)
            TO eslbridge_daemon;
        RETURN NEXT 'granted eslbridge_daemon its privileges';
    END IF;

    IF admin = ANY (present) THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON users, roles, call_records, calls, call_events, audit_logs,
            rate_limits, system_config TO eslbridge_admin;
        GRANT SELECT ON permissions, schema_migrations, call_statistics, user_activity, daily_call_summary
            TO eslbridge_admin;
        GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO eslbridge_admin;
        FOREACH f IN ARRAY own_functions LOOP
            CONTINUE WHEN f = 'eslbridge_grant_roles()'::regprocedure;
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO eslbridge_admin', f);
        END LOOP;
        RETURN NEXT 'granted eslbridge_admin its privileges';
    END IF;

    IF auditor = ANY (present) THEN
        GRANT SELECT ON call_statistics, user_activity, daily_call_summary, audit_logs, call_records, calls,
            call_events, roles, permissions TO eslbridge_auditor;
        RETURN NEXT 'granted eslbridge_auditor its privileges';
    END IF;
END;
$$;

REVOKE EXECUTE ON FUNCTION eslbridge_grant_roles() FROM PUBLIC;

SELECT eslbridge_grant_roles();
