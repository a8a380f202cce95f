-- Data hygiene (DESIGN sections 5 and 8).
--
-- 1. users.username and users.realm end up in ESL commands (xml_flush_cache) and in the directory's
-- XML, so the database enforces what `eslbridge users` allows (eslbridge/users.py USERNAME_RE,
-- REALM_RE: a lower-case host name of at most 253 characters). Without it, a row written by any
-- other client (`\n\nbgapi system id` as a username, say) reached FreeSWITCH as a command.
-- A row that breaks the rule stops the migration, named by id, instead of being changed silently.

DO $$
DECLARE
    bad record;
BEGIN
    SELECT id,
           CASE WHEN username !~ '^[A-Za-z0-9_+*~][A-Za-z0-9._+*~-]{0,63}$' THEN 'username' ELSE 'realm' END
               AS what
      INTO bad
      FROM users
     WHERE username !~ '^[A-Za-z0-9_+*~][A-Za-z0-9._+*~-]{0,63}$'
        OR realm !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$'
        OR length(realm) > 253
     ORDER BY id
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'users row id=% has a % that eslbridge users would refuse; fix or delete that row, then migrate again',
            bad.id, bad.what;
    END IF;
END
$$;

ALTER TABLE users
    ADD CONSTRAINT users_username_format CHECK (username ~ '^[A-Za-z0-9_+*~][A-Za-z0-9._+*~-]{0,63}$'),
    ADD CONSTRAINT users_realm_format CHECK (
        realm ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$'
        AND length(realm) <= 253);

-- 2. call_records.call_id held the SIP Call-ID in plaintext (`1-16590@127.0.0.1` names the caller's
-- host). The Call-ID is now an OpenPGP message (call_id_enc, under enc_key_id like the other
-- personal columns) with a blind index (call_id_hash, kind `call_id`, see eslbridge/blindindex.py)
-- for equality search; YakYak's call_id column keeps its type and NOT NULL and holds the call's
-- UUID, and its index moves to the hash. Call-IDs already stored cannot be encrypted here (the key
-- never reaches the database): they are replaced by the call's UUID, as a GDPR erase does.
ALTER TABLE call_records ADD COLUMN call_id_enc bytea, ADD COLUMN call_id_hash bytea;
UPDATE call_records SET call_id = call_uuid WHERE call_id IS DISTINCT FROM call_uuid;
DROP INDEX idx_call_records_call_id;
CREATE INDEX idx_call_records_call_id_hash ON call_records (call_id_hash);

-- A GDPR erase (gdpr_erase) turns call_id into the call's UUID and sets erased_at: the encrypted
-- Call-ID and its hash go with it.
CREATE OR REPLACE FUNCTION erase_call_id() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.call_id_enc := NULL;
    NEW.call_id_hash := NULL;
    RETURN NEW;
END;
$$;
CREATE TRIGGER erase_call_id_trigger
    BEFORE UPDATE ON call_records FOR EACH ROW
    WHEN (NEW.erased_at IS NOT NULL AND NEW.erased_at IS DISTINCT FROM OLD.erased_at)
    EXECUTE FUNCTION erase_call_id();

-- The export gives the SIP Call-ID (decrypted with the key given, else its ciphertext in hex for
-- eslbridge to open) where it gave the plaintext column; otherwise unchanged from 0007.
CREATE OR REPLACE FUNCTION export_user_data(target_user_id uuid, encryption_key text, hashes bytea[] DEFAULT NULL)
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
               'call_id', gdpr_field(r.call_id_enc, k),
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
