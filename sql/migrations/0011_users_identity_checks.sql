-- users.username and users.realm end up in ESL commands (xml_flush_cache) and in the directory's
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
