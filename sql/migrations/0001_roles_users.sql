-- Roles and users: YakYak's users/roles merged with SIPCall's users (DESIGN section 7).

CREATE OR REPLACE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- The permission strings of YakYak's documentation, so a role can only hold real ones.
CREATE TABLE permissions (
    name        varchar(100) PRIMARY KEY CHECK (name ~ '^[a-z_]+:[a-z_]+$'),
    description text NOT NULL
);

INSERT INTO permissions (name, description) VALUES
    ('user:read', 'View user information'),
    ('user:create', 'Create new users'),
    ('user:update', 'Update user information'),
    ('user:delete', 'Delete users'),
    ('user:manage_roles', 'Assign roles to users'),
    ('call:read', 'View call information'),
    ('call:create', 'Initiate calls'),
    ('call:terminate', 'Terminate active calls'),
    ('call:transfer', 'Transfer calls'),
    ('cdr:read', 'View call detail records'),
    ('cdr:export', 'Export CDR data'),
    ('cdr:delete', 'Delete CDR records'),
    ('system:config', 'Modify system configuration'),
    ('system:monitor', 'Access monitoring and metrics'),
    ('system:audit', 'View audit logs'),
    ('conference:create', 'Create conference rooms'),
    ('conference:manage', 'Manage conference settings'),
    ('conference:moderate', 'Moderate conferences'),
    ('voicemail:access', 'Access voicemail'),
    ('voicemail:manage', 'Manage voicemail settings');

CREATE TABLE roles (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        varchar(255) NOT NULL UNIQUE,
    description text,
    permissions text[] NOT NULL DEFAULT '{}',
    is_system   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX idx_roles_is_system ON roles (is_system);
CREATE TRIGGER update_roles_updated_at_trigger
    BEFORE UPDATE ON roles FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- System roles can be neither deleted nor demoted; every permission must be a known one.
CREATE OR REPLACE FUNCTION guard_roles() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unknown text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.is_system THEN
            RAISE EXCEPTION 'role "%" is a system role and cannot be deleted', OLD.name
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.is_system AND NOT NEW.is_system THEN
        RAISE EXCEPTION 'role "%" is a system role and stays one', OLD.name
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT p INTO unknown FROM unnest(NEW.permissions) AS p
     WHERE p NOT IN (SELECT name FROM permissions) LIMIT 1;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'unknown permission "%"', unknown USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NEW;
END;
$$;
CREATE TRIGGER guard_roles_trigger
    BEFORE INSERT OR UPDATE OR DELETE ON roles FOR EACH ROW EXECUTE FUNCTION guard_roles();

-- Default roles (YakYak). Which role gets what is documented in docs/ROLES.md.
INSERT INTO roles (name, description, permissions, is_system) VALUES
    ('administrator', 'Full system access with all permissions',
     ARRAY(SELECT name FROM permissions ORDER BY name), true),
    ('user', 'Standard user with basic call permissions',
     ARRAY['call:create', 'call:read', 'call:transfer', 'conference:create',
           'voicemail:access', 'voicemail:manage'], true),
    ('operator', 'Call center operator with call management permissions',
     ARRAY['user:read', 'call:create', 'call:read', 'call:terminate', 'call:transfer',
           'cdr:read', 'cdr:export', 'conference:create', 'conference:manage',
           'conference:moderate', 'voicemail:access', 'system:monitor'], true);

CREATE TABLE users (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- YakYak
    username             varchar(255) NOT NULL,
    password_hash        varchar(255) NOT NULL,          -- bcrypt, cost 12
    sip_ha1              varchar(255),                   -- MD5(username:realm:password)
    realm                varchar(255) NOT NULL,
    display_name         varchar(255),
    email                varchar(255),
    enabled              boolean NOT NULL DEFAULT true,
    role_id              uuid REFERENCES roles (id) ON DELETE SET NULL,
    -- SIPCall
    nextcloud_user_id    varchar(255) UNIQUE,
    permissions          jsonb NOT NULL DEFAULT '{"can_call": true, "is_admin": false}',
    privacy_consent      boolean NOT NULL DEFAULT false,
    privacy_consent_date timestamptz,
    last_login           timestamptz,                    -- last successful SIP registration
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    -- A SIP identity is user@realm, so YakYak's UNIQUE(username) is per realm here.
    CONSTRAINT users_username_realm_key UNIQUE (username, realm),
    CONSTRAINT users_sip_ha1_format CHECK (sip_ha1 IS NULL OR sip_ha1 ~ '^[0-9a-f]{32}$')
);
CREATE INDEX idx_users_realm ON users (realm);
CREATE INDEX idx_users_enabled ON users (enabled);
CREATE INDEX idx_users_role_id ON users (role_id);
CREATE INDEX idx_users_nextcloud_id ON users (nextcloud_user_id);
CREATE INDEX idx_users_email ON users (email);
CREATE TRIGGER update_users_updated_at_trigger
    BEFORE UPDATE ON users FOR EACH ROW EXECUTE FUNCTION set_updated_at();
