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

-- The export gives the SIP Call-ID where it gave the plaintext column: decrypted with the key
-- given, else its ciphertext in hex for eslbridge to open. 0007's function computes the rest.
ALTER FUNCTION export_user_data(uuid, text, bytea[]) RENAME TO export_user_data_0007;
CREATE FUNCTION export_user_data(target_user_id uuid, encryption_key text, hashes bytea[] DEFAULT NULL)
RETURNS jsonb LANGUAGE sql AS $$
    SELECT CASE WHEN jsonb_typeof(d->'call_records') IS DISTINCT FROM 'array' THEN d
                ELSE jsonb_set(d, '{call_records}', COALESCE((
                    SELECT jsonb_agg(r || jsonb_build_object('call_id', gdpr_field(c.call_id_enc, encryption_key))
                                     ORDER BY e.ord)
                      FROM jsonb_array_elements(d->'call_records') WITH ORDINALITY AS e(r, ord)
                      LEFT JOIN call_records c ON c.id = (e.r->>'id')::uuid), '[]'::jsonb)) END
      FROM (SELECT export_user_data_0007(target_user_id, encryption_key, hashes) AS d) x
$$;
