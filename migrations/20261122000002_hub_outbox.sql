-- The hub's outbox: every durable message, written inside the publisher's own transaction.
--
-- Cursor model (DESIGN §4): each topic numbers its messages 1, 2, 3, … (`seq`) under a row lock
-- on hub.topics, held until the publishing transaction commits. Two transactions publishing to
-- one topic therefore commit in `seq` order, so readers never see a later message of a topic
-- before an earlier one. `id` orders the whole outbox for the feed; NOTIFY only wakes the feed
-- (it never carries the payload, so payloads are not limited to NOTIFY's 8000 bytes).
create schema if not exists hub;

create table if not exists hub.meta (
  key text primary key,
  value text not null
);

-- Names this database's history: cursors from another database (or a recreated one) are
-- recognised as not recoverable instead of pointing into a different numbering.
insert into hub.meta (key, value)
values ('epoch', 'pg' || encode(gen_random_bytes(5), 'hex'))
on conflict (key) do nothing;

create table if not exists hub.topics (
  topic text not null,
  private boolean not null default false,
  seq bigint not null,
  primary key (topic, private)
);

create table if not exists hub.outbox (
  id bigserial primary key,
  topic text not null,
  private boolean not null default false,
  seq bigint not null,
  event text not null,
  -- JSON payloads; binary payloads (client broadcasts of raw bytes) go in payload_bytes.
  payload jsonb,
  payload_bytes bytea,
  -- "<node>:<connection>" of a publishing WebSocket client, so that node can honour `self`.
  origin text,
  -- For topics whose history lives in another broker (chat streams, rooms: memory or Redis),
  -- the node that claimed the row and re-published it there, exactly once.
  forwarded_by text,
  created_at timestamptz not null default now()
);

create index if not exists outbox_topic_seq_idx on hub.outbox (topic, private, seq);
create index if not exists outbox_created_at_idx on hub.outbox (created_at);
-- Rows a new forwarding leader still has to forward (see store/src/pg/feed.rs).
create index if not exists outbox_unforwarded_idx on hub.outbox (id)
  where forwarded_by is null and topic not like 'build:%';

-- The full form used by the hub itself.
create or replace function hub.publish_from(
  p_topic text, p_event text, p_payload jsonb, p_private boolean,
  p_origin text, p_payload_bytes bytea default null
) returns bigint
language plpgsql
as $$
declare
  v_seq bigint;
begin
  if p_topic is null or length(p_topic) = 0 then
    raise exception 'hub.publish: topic must not be empty';
  end if;
  if p_event is null or length(p_event) = 0 or octet_length(p_event) > 255 then
    raise exception 'hub.publish: event must be 1 to 255 bytes';
  end if;
  insert into hub.topics as t (topic, private, seq)
  values (p_topic, coalesce(p_private, false), 1)
  on conflict (topic, private) do update set seq = t.seq + 1
  returning t.seq into v_seq;
  insert into hub.outbox (topic, private, seq, event, payload, payload_bytes, origin)
  values (
    p_topic, coalesce(p_private, false), v_seq, p_event,
    case when p_payload_bytes is null then coalesce(p_payload, '{}'::jsonb) end,
    p_payload_bytes, p_origin
  );
  -- One wake-up per transaction: identical notifications in one transaction are merged.
  perform pg_notify('hub_outbox', '');
  return v_seq;
end;
$$;

-- What backend services call inside their transactions, e.g.
--   select hub.publish('chat:42', 'token', '{"text":"Hel"}');
-- Returns the message's offset in its topic.
create or replace function hub.publish(
  p_topic text, p_event text, p_payload jsonb, p_private boolean default false
) returns bigint
language sql
as $$
  select hub.publish_from(p_topic, p_event, p_payload, p_private, null, null);
$$;

-- Timestamps in published payloads are UTC with microseconds, whatever the writer's TimeZone,
-- so every publisher (and the in-memory store) renders them alike.
create or replace function hub.utc_text(ts timestamptz)
returns text
language sql
immutable
as $$
  select to_char(ts at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"');
$$;

-- Every timeline row is published on build:<session_id>, in the writer's transaction. The
-- trigger never makes the orchestrator's insert fail on the hub's account: rows without a
-- session are not published, and a type that cannot be an event name is sent as `build_event`
-- (the payload keeps the real type).
create or replace function hub.publish_build_event()
returns trigger
language plpgsql
as $$
begin
  if new.session_id is null then
    return new;
  end if;
  perform hub.publish(
    'build:' || new.session_id::text,
    case when new.type = '' or octet_length(new.type) > 255 then 'build_event' else new.type end,
    jsonb_build_object(
      'id', new.id,
      'session_id', new.session_id,
      'ts', hub.utc_text(new.ts),
      'type', new.type,
      'message', new.message,
      'payload', new.payload
    )
  );
  return new;
end;
$$;

drop trigger if exists build_events_publish on public.build_events;
create trigger build_events_publish
after insert on public.build_events
for each row execute function hub.publish_build_event();

-- Status changes (and the initial status) are published as `status` events.
create or replace function hub.publish_session_status()
returns trigger
language plpgsql
as $$
begin
  if tg_op = 'INSERT' or new.status is distinct from old.status then
    perform hub.publish(
      'build:' || new.id::text,
      'status',
      jsonb_build_object(
        'id', new.id,
        'status', new.status,
        'error', new.error,
        'updated_at', hub.utc_text(new.updated_at)
      )
    );
  end if;
  return new;
end;
$$;

drop trigger if exists build_sessions_publish_status on public.build_sessions;
create trigger build_sessions_publish_status
after insert or update of status on public.build_sessions
for each row execute function hub.publish_session_status();
