-- Directory cache invalidation (DESIGN section 5): the directory service LISTENs on
-- 'eslbridge_directory' and drops cached entries named by these notifications.
-- Payloads are JSON and never carry password hashes:
--   {"table": "users", "op": "INSERT|UPDATE|DELETE", "username": U, "realm": R,
--    "old_username": U0, "old_realm": R0}           (old_* only on UPDATE)
--   {"table": "users", "op": "TRUNCATE"}
--   {"table": "roles", "op": "UPDATE|DELETE", "role_id": ID}
-- NOTIFY is delivered at commit and deduplicated per transaction, so a bulk change
-- sends one message per distinct user.

CREATE OR REPLACE FUNCTION notify_directory_users() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    payload jsonb;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('eslbridge_directory', json_build_object('table', 'users', 'op', 'TRUNCATE')::text);
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        -- last_login changes on every registration: not a directory change, no message.
        IF (to_jsonb(OLD) - 'last_login' - 'updated_at') = (to_jsonb(NEW) - 'last_login' - 'updated_at') THEN
            RETURN NULL;
        END IF;
        payload := jsonb_build_object('table', 'users', 'op', TG_OP,
                                      'username', NEW.username, 'realm', NEW.realm,
                                      'old_username', OLD.username, 'old_realm', OLD.realm);
    ELSIF TG_OP = 'INSERT' THEN
        payload := jsonb_build_object('table', 'users', 'op', TG_OP, 'username', NEW.username, 'realm', NEW.realm);
    ELSE
        payload := jsonb_build_object('table', 'users', 'op', TG_OP, 'username', OLD.username, 'realm', OLD.realm);
    END IF;
    PERFORM pg_notify('eslbridge_directory', payload::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_directory_notify_trigger
    AFTER INSERT OR UPDATE OR DELETE ON users FOR EACH ROW EXECUTE FUNCTION notify_directory_users();
CREATE TRIGGER users_directory_notify_truncate_trigger
    AFTER TRUNCATE ON users FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_users();

-- A role's permissions become users' toll_allow: changing or deleting a role changes them.
CREATE OR REPLACE FUNCTION notify_directory_roles() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.permissions IS NOT DISTINCT FROM NEW.permissions AND OLD.name = NEW.name THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('eslbridge_directory',
                      json_build_object('table', 'roles', 'op', TG_OP, 'role_id', OLD.id)::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER roles_directory_notify_trigger
    AFTER UPDATE OR DELETE ON roles FOR EACH ROW EXECUTE FUNCTION notify_directory_roles();
