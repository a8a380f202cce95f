-- SIPCall's supporting tables, analytics views, retention and GDPR functions.

CREATE TABLE system_config (
    id           serial PRIMARY KEY,
    config_key   varchar(255) UNIQUE NOT NULL,
    config_value jsonb NOT NULL,
    description  text,
    is_encrypted boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_system_config_key ON system_config (config_key);
CREATE TRIGGER update_system_config_updated_at_trigger
    BEFORE UPDATE ON system_config FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE audit_logs (
    id            bigserial PRIMARY KEY,
    user_id       uuid REFERENCES users (id) ON DELETE SET NULL,  -- the user the entry is about
    action        varchar(100) NOT NULL,
    resource_type varchar(50),
    resource_id   varchar(255),
    details       jsonb,
    ip_address    inet,
    user_agent    text,
    actor         text,                                  -- OS user of an admin command, or the daemon
    db_user       text NOT NULL DEFAULT session_user,
    timestamp     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_audit_logs_user_id ON audit_logs (user_id);
CREATE INDEX idx_audit_logs_action ON audit_logs (action);
CREATE INDEX idx_audit_logs_timestamp ON audit_logs (timestamp);

CREATE TABLE rate_limits (
    id                      serial PRIMARY KEY,
    user_id                 uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    endpoint                varchar(255) NOT NULL,
    request_count           integer NOT NULL DEFAULT 0,
    max_requests            integer,                      -- NULL: no limit for this user and endpoint
    window_start            timestamptz NOT NULL DEFAULT now(),
    window_duration_minutes integer NOT NULL DEFAULT 60
);
CREATE INDEX idx_rate_limits_user_endpoint ON rate_limits (user_id, endpoint);
CREATE UNIQUE INDEX idx_rate_limits_user_endpoint_key ON rate_limits (user_id, endpoint);
CREATE INDEX idx_rate_limits_window ON rate_limits (window_start);

CREATE VIEW call_statistics AS
SELECT date_trunc('day', initiated_at) AS call_date,
       count(*) AS total_calls,
       count(CASE WHEN status = 'completed' THEN 1 END) AS completed_calls,
       avg(duration_seconds) AS avg_duration,
       sum(cost_cents) AS total_cost_cents,
       avg(quality_score) AS avg_quality
  FROM calls
 GROUP BY date_trunc('day', initiated_at)
 ORDER BY call_date DESC;

CREATE VIEW user_activity AS
SELECT u.id,
       u.display_name,
       count(c.id) AS total_calls,
       max(c.initiated_at) AS last_call,
       sum(c.cost_cents) AS total_cost_cents,
       avg(c.quality_score) AS avg_quality
  FROM users u
  LEFT JOIN calls c ON u.id = c.user_id
 GROUP BY u.id, u.display_name;

CREATE MATERIALIZED VIEW daily_call_summary AS
SELECT date_trunc('day', initiated_at) AS call_date,
       count(*) AS total_calls,
       count(CASE WHEN status = 'completed' THEN 1 END) AS completed_calls,
       round(avg(duration_seconds)) AS avg_duration,
       sum(cost_cents) AS total_cost_cents
  FROM calls
 GROUP BY date_trunc('day', initiated_at);
CREATE UNIQUE INDEX idx_daily_call_summary_date ON daily_call_summary (call_date);

-- SECURITY DEFINER: refreshing needs the view's owner; the daemon only gets EXECUTE.
CREATE OR REPLACE FUNCTION refresh_daily_summary() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    REFRESH MATERIALIZED VIEW CONCURRENTLY daily_call_summary;
END;
$$;

-- SIPCall's retention functions; the window is a parameter (defaults as the seed).
CREATE OR REPLACE FUNCTION cleanup_old_call_events(keep_days integer DEFAULT 90) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    deleted_count integer;
BEGIN
    DELETE FROM call_events WHERE timestamp < now() - make_interval(days => keep_days);
    GET DIAGNOSTICS deleted_count = ROW_COUNT;
    RETURN deleted_count;
END;
$$;

CREATE OR REPLACE FUNCTION cleanup_old_audit_logs(keep_days integer DEFAULT 365) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    deleted_count integer;
BEGIN
    DELETE FROM audit_logs WHERE timestamp < now() - make_interval(days => keep_days);
    GET DIAGNOSTICS deleted_count = ROW_COUNT;
    RETURN deleted_count;
END;
$$;

-- GDPR export (SIPCall), extended to the CDR rows attributed to the user.
-- Personal fields are decrypted with decrypt_data (pgcrypto); rows written
-- under another key than encryption_key come back NULL rather than failing.
CREATE OR REPLACE FUNCTION try_decrypt(encrypted_data bytea, key text) RETURNS text
LANGUAGE plpgsql AS $$
BEGIN
    IF encrypted_data IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN decrypt_data(encrypted_data, key);
EXCEPTION WHEN external_routine_invocation_exception OR external_routine_exception OR data_exception OR undefined_function THEN
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION export_user_data(target_user_id uuid, encryption_key text) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    user_data jsonb;
    call_data jsonb;
    cdr_data jsonb;
    event_data jsonb;
BEGIN
    SELECT to_jsonb(u.*) - 'password_hash' - 'sip_ha1' INTO user_data
      FROM users u WHERE u.id = target_user_id;

    SELECT jsonb_agg(jsonb_build_object(
               'id', c.id,
               'call_uuid', c.call_uuid,
               'destination_number', try_decrypt(c.destination_number_enc, encryption_key),
               'caller_id', try_decrypt(c.caller_id_enc, encryption_key),
               'status', c.status,
               'direction', c.direction,
               'initiated_at', c.initiated_at,
               'answered_at', c.answered_at,
               'ended_at', c.ended_at,
               'duration_seconds', c.duration_seconds,
               'cost_cents', c.cost_cents) ORDER BY c.initiated_at)
      INTO call_data
      FROM calls c WHERE c.user_id = target_user_id;

    SELECT jsonb_agg(jsonb_build_object(
               'call_uuid', r.call_uuid,
               'call_id', r.call_id,
               'caller', try_decrypt(r.caller, encryption_key),
               'callee', try_decrypt(r.callee, encryption_key),
               'caller_ip', try_decrypt(r.caller_ip, encryption_key),
               'callee_ip', try_decrypt(r.callee_ip, encryption_key),
               'direction', r.direction,
               'status', r.status,
               'start_time', r.start_time,
               'answer_time', r.answer_time,
               'end_time', r.end_time,
               'total_duration_ms', r.total_duration_ms) ORDER BY r.start_time)
      INTO cdr_data
      FROM call_records r WHERE r.user_id = target_user_id;

    SELECT jsonb_agg(jsonb_build_object(
               'call_uuid', e.call_uuid, 'event_type', e.event_type,
               'event_data', e.event_data, 'timestamp', e.timestamp) ORDER BY e.timestamp, e.seq)
      INTO event_data
      FROM call_events e
     WHERE e.call_uuid IN (SELECT call_uuid FROM calls WHERE user_id = target_user_id
                           UNION SELECT call_uuid FROM call_records WHERE user_id = target_user_id);

    RETURN jsonb_build_object(
        'user', user_data,
        'calls', COALESCE(call_data, '[]'::jsonb),
        'call_records', COALESCE(cdr_data, '[]'::jsonb),
        'call_events', COALESCE(event_data, '[]'::jsonb));
END;
$$;

-- GDPR erase (SIPCall), extended: CDR rows attributed to the user keep their
-- billing facts but lose every personal field.
CREATE OR REPLACE FUNCTION delete_user_data(target_user_id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM call_events
     WHERE call_id IN (SELECT id FROM calls WHERE user_id = target_user_id)
        OR call_uuid IN (SELECT call_uuid FROM calls WHERE user_id = target_user_id);

    DELETE FROM calls WHERE user_id = target_user_id;

    UPDATE call_records
       SET caller = NULL, callee = NULL, caller_hash = NULL, callee_hash = NULL,
           caller_number_hash = NULL, callee_number_hash = NULL,
           caller_ip = NULL, callee_ip = NULL, caller_sdp = NULL, callee_sdp = NULL,
           caller_user_agent = NULL, callee_user_agent = NULL,
           user_id = NULL, erased_at = now()
     WHERE user_id = target_user_id;

    DELETE FROM rate_limits WHERE user_id = target_user_id;

    -- Keep the audit trail, without the person (compliance).
    UPDATE audit_logs
       SET user_id = NULL, details = jsonb_build_object('anonymized', true),
           ip_address = NULL, user_agent = NULL
     WHERE user_id = target_user_id;

    DELETE FROM users WHERE id = target_user_id;
    RETURN true;
END;
$$;

-- pgcrypto is optional: the seed's encrypt_data/decrypt_data exist only where
-- the extension can be created (eslbridge itself encrypts in Python).
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pgcrypto;
    EXCEPTION WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
        RAISE NOTICE 'pgcrypto is not available (%); encrypt_data/decrypt_data are not created', SQLERRM;
        RETURN;
    END;
    EXECUTE $f$
        CREATE OR REPLACE FUNCTION encrypt_data(data text, key text) RETURNS bytea
        LANGUAGE plpgsql AS $b$
        BEGIN
            RETURN pgp_sym_encrypt(data, key, 'cipher-algo=aes256, s2k-digest-algo=sha256');
        END;
        $b$
    $f$;
    EXECUTE $f$
        CREATE OR REPLACE FUNCTION decrypt_data(encrypted_data bytea, key text) RETURNS text
        LANGUAGE plpgsql AS $b$
        BEGIN
            RETURN pgp_sym_decrypt(encrypted_data, key);
        END;
        $b$
    $f$;
END;
$$;
