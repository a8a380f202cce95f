-- GDPR export and erase by party, not only by owner (DESIGN section 8; docs/AUDITORS.md).
--
-- A person takes part in a call as its owner (user_id) or as a party found through the blind
-- index: the caller or callee side whose *_hash equals one of the person's identity hashes
-- (HMAC of sip:USER@REALM, of USER as a number, ...). The blind-index key never reaches the
-- database, so callers compute the hashes and pass them as `hashes`; without them only
-- user_id-attributed rows are found (the seed's behaviour).
--
-- Erase rule (docs/AUDITORS.md "Erase"):
--   calls owned by the person: deleted (SIPCall). calls of another owner in which the person is
--   a party: the person's field (caller_id or destination_number) and its hash are removed.
--   call_records: kept for billing; the person's side (caller_* or callee_* ciphertext, hashes,
--   user agent) is removed, both sides when the row is theirs by user_id alone and no side can
--   be told; call_id (a SIP Call-ID often names the caller's host) becomes call_uuid.
--   call_events of those calls: deleted. rate_limits: deleted. audit_logs about them:
--   anonymised. users row: deleted.

-- An erased party leaves a calls row of another owner without a destination.
ALTER TABLE calls ALTER COLUMN destination_number_enc DROP NOT NULL;
ALTER TABLE calls ADD COLUMN erased_at timestamptz;  -- a party's fields removed by a GDPR erase

-- The CDR rows in which the person takes part, and on which side(s).
CREATE OR REPLACE FUNCTION gdpr_call_records(target uuid, hashes bytea[] DEFAULT NULL)
RETURNS TABLE (id uuid, start_time timestamptz, call_uuid varchar, caller_side boolean, callee_side boolean)
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.start_time, r.call_uuid,
           COALESCE(r.caller_hash = ANY (hashes) OR r.caller_number_hash = ANY (hashes), false),
           COALESCE(r.callee_hash = ANY (hashes) OR r.callee_number_hash = ANY (hashes), false)
      FROM call_records r
     WHERE r.user_id = target
        OR r.caller_hash = ANY (hashes) OR r.caller_number_hash = ANY (hashes)
        OR r.callee_hash = ANY (hashes) OR r.callee_number_hash = ANY (hashes)
$$;

-- The calls rows the person owns or takes part in. A calls row shares (call_uuid, start time)
-- with its CDR, so a side found in the CDR marks the same side here (caller_id may be a name,
-- which has no hash).
CREATE OR REPLACE FUNCTION gdpr_calls(target uuid, hashes bytea[] DEFAULT NULL)
RETURNS TABLE (id uuid, initiated_at timestamptz, call_uuid varchar, owned boolean,
               caller_side boolean, callee_side boolean)
LANGUAGE sql STABLE AS $$
    SELECT c.id, c.initiated_at, c.call_uuid, COALESCE(c.user_id = target, false),
           COALESCE(c.caller_id_hash = ANY (hashes), false) OR COALESCE(r.caller_side, false),
           COALESCE(c.destination_number_hash = ANY (hashes), false) OR COALESCE(r.callee_side, false)
      FROM calls c
      LEFT JOIN gdpr_call_records(target, hashes) r
        ON r.call_uuid = c.call_uuid AND r.start_time = c.initiated_at
     WHERE c.user_id = target
        OR c.caller_id_hash = ANY (hashes) OR c.destination_number_hash = ANY (hashes)
        OR r.caller_side OR r.callee_side
$$;

-- Strings that name the person in the audit log: the user's id, username, user@realm, email,
-- plus any the caller adds (e.g. the identity of someone who is no longer a user).
CREATE OR REPLACE FUNCTION gdpr_identities(target uuid, extra text[] DEFAULT NULL) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT array_remove(
        COALESCE(extra, '{}')
        || CASE WHEN target IS NULL THEN '{}'::text[] ELSE ARRAY[target::text] END
        || COALESCE((SELECT ARRAY[u.username::text, u.username || '@' || u.realm, u.email]
                       FROM users u WHERE u.id = target), '{}'),
        NULL)
$$;

-- Audit entries about the person: theirs by user_id, naming them in resource_id, or holding
-- one of their identities as a string anywhere in details. Earlier erase records are kept.
CREATE OR REPLACE FUNCTION gdpr_audit_logs(target uuid, identities text[])
RETURNS SETOF bigint LANGUAGE sql STABLE AS $$
    SELECT a.id
      FROM audit_logs a
     WHERE a.action <> 'gdpr.erase'
       AND (a.user_id = target
            OR a.resource_id = ANY (identities)
            OR jsonb_path_exists(a.details, '$.** ? (@ == $ids[*])',
                                 jsonb_build_object('ids', to_jsonb(identities))))
$$;

-- A personal field in an export: decrypted with encryption_key, or, without a key, the
-- ciphertext in hex for a client that decrypts itself (eslbridge gdpr export).
CREATE OR REPLACE FUNCTION gdpr_field(ciphertext bytea, encryption_key text) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT CASE WHEN ciphertext IS NULL THEN 'null'::jsonb
                WHEN encryption_key IS NULL THEN to_jsonb(encode(ciphertext, 'hex'))
                ELSE to_jsonb(try_decrypt(ciphertext, encryption_key)) END
$$;

DROP FUNCTION export_user_data(uuid, text);
CREATE FUNCTION export_user_data(target_user_id uuid, encryption_key text, hashes bytea[] DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    k text := encryption_key;
    user_data jsonb;
    call_data jsonb;
    cdr_data jsonb;
    event_data jsonb;
    audit_data jsonb;
BEGIN
    SELECT to_jsonb(u.*) - 'password_hash' - 'sip_ha1' INTO user_data
      FROM users u WHERE u.id = target_user_id;

    SELECT jsonb_agg(jsonb_build_object(
               'id', c.id,
               'call_uuid', c.call_uuid,
               'owned', g.owned,
               'caller_side', g.caller_side,
               'callee_side', g.callee_side,
               'destination_number', gdpr_field(c.destination_number_enc, k),
               'caller_id', gdpr_field(c.caller_id_enc, k),
               'enc_key_id', c.enc_key_id,
               'node', c.node,
               'status', c.status,
               'direction', c.direction,
               'initiated_at', c.initiated_at,
               'answered_at', c.answered_at,
               'ended_at', c.ended_at,
               'duration_seconds', c.duration_seconds,
               'cost_cents', c.cost_cents,
               'currency', c.currency,
               'codec', c.codec,
               'quality_score', c.quality_score,
               'disconnect_reason', c.disconnect_reason,
               'erased_at', c.erased_at) ORDER BY c.initiated_at, c.call_uuid)
      INTO call_data
      FROM calls c JOIN gdpr_calls(target_user_id, hashes) g ON g.id = c.id AND g.initiated_at = c.initiated_at;

    SELECT jsonb_agg(jsonb_build_object(
               'id', r.id,
               'call_uuid', r.call_uuid,
               'call_id', r.call_id,
               'node', r.node,
               'caller_side', g.caller_side,
               'callee_side', g.callee_side,
               'caller', gdpr_field(r.caller, k),
               'callee', gdpr_field(r.callee, k),
               'caller_ip', gdpr_field(r.caller_ip, k),
               'callee_ip', gdpr_field(r.callee_ip, k),
               'caller_sdp', gdpr_field(r.caller_sdp, k),
               'callee_sdp', gdpr_field(r.callee_sdp, k),
               'enc_key_id', r.enc_key_id,
               'caller_user_agent', r.caller_user_agent,
               'callee_user_agent', r.callee_user_agent,
               'direction', r.direction,
               'status', r.status,
               'start_time', r.start_time,
               'answer_time', r.answer_time,
               'end_time', r.end_time,
               'setup_duration_ms', r.setup_duration_ms,
               'call_duration_ms', r.call_duration_ms,
               'total_duration_ms', r.total_duration_ms,
               'disconnect_reason', r.disconnect_reason,
               'sip_response_code', r.sip_response_code,
               'codec', r.codec,
               'media_info', r.media_info,
               'erased_at', r.erased_at) ORDER BY r.start_time, r.call_uuid)
      INTO cdr_data
      FROM call_records r JOIN gdpr_call_records(target_user_id, hashes) g
        ON g.id = r.id AND g.start_time = r.start_time;

    SELECT jsonb_agg(jsonb_build_object(
               'call_uuid', e.call_uuid, 'seq', e.seq, 'event_type', e.event_type,
               'event_data', e.event_data, 'timestamp', e.timestamp)
               ORDER BY e.timestamp, e.call_uuid, e.seq)
      INTO event_data
      FROM call_events e
     WHERE e.call_uuid IN (SELECT g.call_uuid FROM gdpr_calls(target_user_id, hashes) g
                           UNION SELECT g.call_uuid FROM gdpr_call_records(target_user_id, hashes) g);

    SELECT jsonb_agg(jsonb_build_object(
               'id', a.id, 'action', a.action, 'resource_type', a.resource_type,
               'resource_id', a.resource_id, 'details', a.details, 'actor', a.actor,
               'timestamp', a.timestamp) ORDER BY a.id)
      INTO audit_data
      FROM audit_logs a
     WHERE a.id IN (SELECT gdpr_audit_logs(target_user_id, gdpr_identities(target_user_id)));

    RETURN jsonb_build_object(
        'user', user_data,
        'calls', COALESCE(call_data, '[]'::jsonb),
        'call_records', COALESCE(cdr_data, '[]'::jsonb),
        'call_events', COALESCE(event_data, '[]'::jsonb),
        'audit_logs', COALESCE(audit_data, '[]'::jsonb));
END;
$$;

-- The erase itself (rule at the top); returns what it changed, counts only.
CREATE OR REPLACE FUNCTION gdpr_erase(target uuid, hashes bytea[] DEFAULT NULL, extra_identities text[] DEFAULT NULL)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    ids text[] := gdpr_identities(target, extra_identities);
    n_events integer;
    n_calls_deleted integer;
    n_calls_erased integer;
    n_cdrs integer;
    n_rate integer;
    n_audit integer;
    n_users integer;
BEGIN
    DROP TABLE IF EXISTS _gdpr_cdrs, _gdpr_calls;
    CREATE TEMP TABLE _gdpr_cdrs ON COMMIT DROP AS SELECT * FROM gdpr_call_records(target, hashes);
    CREATE TEMP TABLE _gdpr_calls ON COMMIT DROP AS SELECT * FROM gdpr_calls(target, hashes);

    DELETE FROM call_events
     WHERE call_uuid IN (SELECT call_uuid FROM _gdpr_cdrs UNION SELECT call_uuid FROM _gdpr_calls);
    GET DIAGNOSTICS n_events = ROW_COUNT;

    DELETE FROM calls c USING _gdpr_calls g
     WHERE c.id = g.id AND c.initiated_at = g.initiated_at AND g.owned;
    GET DIAGNOSTICS n_calls_deleted = ROW_COUNT;

    UPDATE calls c
       SET caller_id_enc = CASE WHEN g.caller_side THEN NULL ELSE c.caller_id_enc END,
           caller_id_hash = CASE WHEN g.caller_side THEN NULL ELSE c.caller_id_hash END,
           destination_number_enc = CASE WHEN g.callee_side THEN NULL ELSE c.destination_number_enc END,
           destination_number_hash = CASE WHEN g.callee_side THEN NULL ELSE c.destination_number_hash END,
           erased_at = now()
      FROM _gdpr_calls g
     WHERE c.id = g.id AND c.initiated_at = g.initiated_at AND NOT g.owned;
    GET DIAGNOSTICS n_calls_erased = ROW_COUNT;

    UPDATE call_records r
       SET caller = CASE WHEN s.caller THEN NULL ELSE r.caller END,
           caller_hash = CASE WHEN s.caller THEN NULL ELSE r.caller_hash END,
           caller_number_hash = CASE WHEN s.caller THEN NULL ELSE r.caller_number_hash END,
           caller_ip = CASE WHEN s.caller THEN NULL ELSE r.caller_ip END,
           caller_sdp = CASE WHEN s.caller THEN NULL ELSE r.caller_sdp END,
           caller_user_agent = CASE WHEN s.caller THEN NULL ELSE r.caller_user_agent END,
           callee = CASE WHEN s.callee THEN NULL ELSE r.callee END,
           callee_hash = CASE WHEN s.callee THEN NULL ELSE r.callee_hash END,
           callee_number_hash = CASE WHEN s.callee THEN NULL ELSE r.callee_number_hash END,
           callee_ip = CASE WHEN s.callee THEN NULL ELSE r.callee_ip END,
           callee_sdp = CASE WHEN s.callee THEN NULL ELSE r.callee_sdp END,
           callee_user_agent = CASE WHEN s.callee THEN NULL ELSE r.callee_user_agent END,
           user_id = CASE WHEN r.user_id = target THEN NULL ELSE r.user_id END,
           call_id = r.call_uuid,
           erased_at = now()
      FROM (SELECT g.id, g.start_time,
                   g.caller_side OR NOT (g.caller_side OR g.callee_side) AS caller,
                   g.callee_side OR NOT (g.caller_side OR g.callee_side) AS callee
              FROM _gdpr_cdrs g) s
     WHERE r.id = s.id AND r.start_time = s.start_time;
    GET DIAGNOSTICS n_cdrs = ROW_COUNT;

    DELETE FROM rate_limits WHERE user_id = target;
    GET DIAGNOSTICS n_rate = ROW_COUNT;

    -- Keep the audit trail, without the person (compliance).
    UPDATE audit_logs
       SET user_id = NULL,
           resource_id = CASE WHEN resource_id = ANY (ids) THEN NULL ELSE resource_id END,
           details = jsonb_build_object('anonymized', true),
           ip_address = NULL, user_agent = NULL
     WHERE id IN (SELECT gdpr_audit_logs(target, ids));
    GET DIAGNOSTICS n_audit = ROW_COUNT;

    DELETE FROM users WHERE id = target;
    GET DIAGNOSTICS n_users = ROW_COUNT;

    DROP TABLE _gdpr_cdrs, _gdpr_calls;
    RETURN jsonb_build_object(
        'users_deleted', n_users, 'calls_deleted', n_calls_deleted, 'calls_erased', n_calls_erased,
        'call_records_erased', n_cdrs, 'call_events_deleted', n_events, 'rate_limits_deleted', n_rate,
        'audit_logs_anonymised', n_audit);
END;
$$;

-- The seed's function, now also by party when given hashes; records the erase in the audit log
-- (eslbridge gdpr erase calls gdpr_erase and writes its own entry with the OS user).
DROP FUNCTION delete_user_data(uuid);
CREATE FUNCTION delete_user_data(target_user_id uuid, hashes bytea[] DEFAULT NULL) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    result jsonb := gdpr_erase(target_user_id, hashes);
BEGIN
    INSERT INTO audit_logs (action, resource_type, resource_id, details, actor)
    VALUES ('gdpr.erase', 'user', target_user_id::text, result || '{"via": "delete_user_data"}', 'sql');
    RETURN true;
END;
$$;

REVOKE EXECUTE ON FUNCTION gdpr_erase(uuid, bytea[], text[]), delete_user_data(uuid, bytea[]) FROM PUBLIC;
