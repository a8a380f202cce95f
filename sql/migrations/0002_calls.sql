-- Call tables (DESIGN sections 6-8): YakYak's CDR (call_records) and SIPCall's
-- encrypted calls (calls), both partitioned by month on their start time, and
-- the lifecycle log (call_events).
--
-- Personal data (numbers, SIP URIs, caller ID, IPs, SDPs) is stored as OpenPGP
-- symmetric messages (bytea) written by eslbridge; pgp_sym_decrypt reads them.
-- *_hash columns hold HMAC-SHA256 blind indexes for equality search.
-- enc_key_id names the keyring key a row is encrypted with; stage (1 started,
-- 2 answered, 3 finished) keeps replays from moving a row backwards.

CREATE TABLE call_records (
    id                 uuid NOT NULL DEFAULT gen_random_uuid(),
    call_uuid          varchar(255) NOT NULL,        -- root leg UUID (FreeSWITCH)
    node               varchar(255) NOT NULL,        -- FreeSWITCH node name
    call_id            varchar(255) NOT NULL,        -- SIP Call-ID of the A-leg
    caller             bytea,                        -- encrypted SIP URI; NULL once erased (GDPR)
    callee             bytea,
    caller_hash        bytea,                        -- blind index of the normalised caller URI
    callee_hash        bytea,
    caller_number_hash bytea,                        -- blind index of the normalised caller number
    callee_number_hash bytea,
    caller_ip          bytea,
    callee_ip          bytea,
    direction          varchar(50) NOT NULL CHECK (direction IN ('Inbound', 'Outbound', 'Internal')),
    start_time         timestamptz NOT NULL,
    answer_time        timestamptz,
    end_time           timestamptz,
    setup_duration_ms  integer,
    call_duration_ms   integer,
    total_duration_ms  integer,
    status             varchar(50) NOT NULL CHECK (status IN
                           ('Active', 'Completed', 'Failed', 'Busy', 'NoAnswer', 'Cancelled', 'Rejected')),
    disconnect_reason  text,
    codec              varchar(50),
    caller_sdp         bytea,
    callee_sdp         bytea,
    caller_user_agent  text,
    callee_user_agent  text,
    media_info         jsonb,
    sip_response_code  integer,
    user_id            uuid REFERENCES users (id) ON DELETE SET NULL,
    enc_key_id         integer NOT NULL,
    reconciled         boolean NOT NULL DEFAULT false,
    stage              smallint NOT NULL DEFAULT 1,
    erased_at          timestamptz,                  -- personal fields removed by a GDPR erase
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, start_time),
    -- YakYak's UNIQUE(call_id): a SIP Call-ID is not unique across nodes, the root UUID is.
    CONSTRAINT call_records_call_uuid_key UNIQUE (call_uuid, start_time)
) PARTITION BY RANGE (start_time);
CREATE TABLE call_records_default PARTITION OF call_records DEFAULT;
CREATE INDEX idx_call_records_call_id ON call_records (call_id);
CREATE INDEX idx_call_records_caller ON call_records (caller_hash);
CREATE INDEX idx_call_records_callee ON call_records (callee_hash);
CREATE INDEX idx_call_records_caller_number ON call_records (caller_number_hash);
CREATE INDEX idx_call_records_callee_number ON call_records (callee_number_hash);
CREATE INDEX idx_call_records_direction ON call_records (direction);
CREATE INDEX idx_call_records_status ON call_records (status);
CREATE INDEX idx_call_records_start_time ON call_records (start_time);
CREATE INDEX idx_call_records_answer_time ON call_records (answer_time);
CREATE INDEX idx_call_records_end_time ON call_records (end_time);
CREATE INDEX idx_call_records_created_at ON call_records (created_at);
CREATE INDEX idx_call_records_user_id ON call_records (user_id);
CREATE INDEX idx_call_records_enc_key_id ON call_records (enc_key_id);
CREATE TRIGGER update_call_records_updated_at_trigger
    BEFORE UPDATE ON call_records FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE calls (
    id                      uuid NOT NULL DEFAULT gen_random_uuid(),
    user_id                 uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    destination_number_enc  bytea NOT NULL,
    caller_id_enc           bytea,
    destination_number_hash bytea,
    caller_id_hash          bytea,
    call_uuid               varchar(255) NOT NULL,   -- FreeSWITCH root leg UUID
    node                    varchar(255),
    status                  varchar(50) NOT NULL DEFAULT 'initiated' CHECK (status IN
                                ('initiated', 'ringing', 'answered', 'completed', 'busy',
                                 'no_answer', 'cancelled', 'rejected', 'failed')),
    direction               varchar(20) NOT NULL DEFAULT 'outbound'
                                CHECK (direction IN ('inbound', 'outbound', 'internal')),
    initiated_at            timestamptz NOT NULL DEFAULT now(),
    answered_at             timestamptz,
    ended_at                timestamptz,
    duration_seconds        integer,
    cost_cents              integer,
    currency                varchar(3) DEFAULT 'USD',
    codec                   varchar(50),
    quality_score           numeric(3, 2) CHECK (quality_score IS NULL OR quality_score BETWEEN 1 AND 5),
    disconnect_reason       varchar(100),
    enc_key_id              integer NOT NULL,
    reconciled              boolean NOT NULL DEFAULT false,
    stage                   smallint NOT NULL DEFAULT 1,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, initiated_at),
    CONSTRAINT calls_call_uuid_key UNIQUE (call_uuid, initiated_at)
) PARTITION BY RANGE (initiated_at);
CREATE TABLE calls_default PARTITION OF calls DEFAULT;
CREATE INDEX idx_calls_user_id ON calls (user_id);
CREATE INDEX idx_calls_status ON calls (status);
CREATE INDEX idx_calls_initiated_at ON calls (initiated_at);
CREATE INDEX idx_calls_call_uuid ON calls (call_uuid);
CREATE INDEX idx_calls_destination_hash ON calls (destination_number_hash);
CREATE INDEX idx_calls_caller_id_hash ON calls (caller_id_hash);
CREATE INDEX idx_calls_enc_key_id ON calls (enc_key_id);
CREATE TRIGGER update_calls_updated_at_trigger
    BEFORE UPDATE ON calls FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- SIPCall's call_events referenced calls(id); calls is partitioned, so the
-- reference carries the partition key. Calls without a local user have no
-- calls row: their events are found by call_uuid (call_id stays NULL).
CREATE TABLE call_events (
    id                bigserial PRIMARY KEY,
    call_id           uuid,
    call_initiated_at timestamptz,
    call_uuid         varchar(255) NOT NULL,
    node              varchar(255),
    seq               bigint NOT NULL,   -- the correlator derives it from UUIDs and Event-Sequence
    event_type        varchar(50) NOT NULL,
    event_data        jsonb,
    timestamp         timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (call_id, call_initiated_at) REFERENCES calls (id, initiated_at) ON DELETE CASCADE,
    -- Replaying the same lifecycle entry lands on the same row.
    CONSTRAINT call_events_idempotency_key UNIQUE (call_uuid, event_type, seq)
);
CREATE INDEX idx_call_events_call_id ON call_events (call_id);
CREATE INDEX idx_call_events_call_uuid ON call_events (call_uuid);
CREATE INDEX idx_call_events_type ON call_events (event_type);
CREATE INDEX idx_call_events_timestamp ON call_events (timestamp);

-- Monthly partitions. Rows already sitting in the default partition for the
-- new month are moved into it, so creating a partition late never fails.
CREATE OR REPLACE FUNCTION create_month_partition(parent regclass, month date)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    lo   date := date_trunc('month', month)::date;
    hi   date := (date_trunc('month', month) + interval '1 month')::date;
    base text := (SELECT relname FROM pg_class WHERE oid = parent);
    part text := format('%s_y%sm%s', base, to_char(lo, 'YYYY'), to_char(lo, 'MM'));
    keycol text := pg_get_partkeydef(parent);
    col  text;
    moved integer;
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN NULL;
    END IF;
    col := substring(keycol FROM '\((\w+)\)');
    EXECUTE format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', parent);
    EXECUTE format('CREATE TEMP TABLE _moving (LIKE %s)', parent);
    EXECUTE format('WITH m AS (DELETE FROM %I WHERE %I >= %L AND %I < %L RETURNING *)
                    INSERT INTO _moving SELECT * FROM m',
                   base || '_default', col, lo::timestamptz, col, hi::timestamptz);
    GET DIAGNOSTICS moved = ROW_COUNT;
    EXECUTE format('CREATE TABLE %I PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
                   part, parent, lo::timestamptz, hi::timestamptz);
    IF moved > 0 THEN
        EXECUTE format('INSERT INTO %s SELECT * FROM _moving', parent);
    END IF;
    DROP TABLE _moving;
    RETURN part;
END;
$$;

-- Creates this month's and the next months_ahead months' partitions of both
-- call tables; returns the names it created.
CREATE OR REPLACE FUNCTION ensure_partitions(months_ahead integer DEFAULT 3, from_month date DEFAULT NULL)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    start date := date_trunc('month', COALESCE(from_month, (now() AT TIME ZONE 'UTC')::date))::date;
    parent regclass;
    i integer;
    made text;
BEGIN
    FOREACH parent IN ARRAY ARRAY['call_records'::regclass, 'calls'::regclass] LOOP
        FOR i IN 0..months_ahead LOOP
            made := create_month_partition(parent, (start + make_interval(months => i))::date);
            IF made IS NOT NULL THEN
                RETURN NEXT made;
            END IF;
        END LOOP;
    END LOOP;
END;
$$;

-- Drops monthly partitions of both call tables whose whole range ended more
-- than keep ago (retention by dropping whole partitions); returns their names.
CREATE OR REPLACE FUNCTION drop_expired_partitions(parent regclass, keep interval)
RETURNS SETOF text LANGUAGE plpgsql AS $$
DECLARE
    r record;
    upper_bound timestamptz;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS part, c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = parent
    LOOP
        CONTINUE WHEN r.bound = 'DEFAULT';
        upper_bound := substring(r.bound FROM 'TO \(''([^'']+)''\)')::timestamptz;
        IF upper_bound <= now() - keep THEN
            -- call_events references calls: delete through the partition so
            -- ON DELETE CASCADE clears those events, then detach and drop.
            IF EXISTS (SELECT 1 FROM pg_constraint WHERE confrelid = parent AND contype = 'f') THEN
                EXECUTE format('DELETE FROM %s', r.part);
                EXECUTE format('ALTER TABLE %s DETACH PARTITION %s', parent, r.part);
            END IF;
            EXECUTE format('DROP TABLE %s', r.part);
            RETURN NEXT r.relname::text;
        END IF;
    END LOOP;
END;
$$;

-- One call for the daemon's upkeep timer: partitions ahead, expired ones dropped.
CREATE OR REPLACE FUNCTION maintain_partitions(months_ahead integer DEFAULT 3,
                                               call_records_keep interval DEFAULT NULL,
                                               calls_keep interval DEFAULT NULL)
RETURNS SETOF text LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY SELECT 'created ' || p FROM ensure_partitions(months_ahead) AS p;
    IF call_records_keep IS NOT NULL THEN
        RETURN QUERY SELECT 'dropped ' || p FROM drop_expired_partitions('call_records', call_records_keep) AS p;
    END IF;
    IF calls_keep IS NOT NULL THEN
        RETURN QUERY SELECT 'dropped ' || p FROM drop_expired_partitions('calls', calls_keep) AS p;
    END IF;
END;
$$;

SELECT ensure_partitions(3);
