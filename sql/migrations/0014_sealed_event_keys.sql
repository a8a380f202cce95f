-- call_events rows that carry sealed personal data (event_data members `personal` and
-- `enc_key_id`, written by the outbound authorizer; eslbridge/sealed.py): `keys status` counts
-- them per key and `keys rotate` re-seals the rows under an old key in batches. Both look them
-- up through this index instead of scanning every event of every call. The key id is indexed as
-- text, so no event_data content can make an insert fail on a cast.
CREATE INDEX idx_call_events_sealed_key ON call_events ((event_data->>'enc_key_id'))
    WHERE event_data ? 'personal';
