-- Control-plane tables of seed 004 §2 that the hub serves: build sessions and their timelines.
-- (spec_chunks and drift_alerts need pgvector and belong to the orchestrator, not the hub.)
create extension if not exists pgcrypto;

create table if not exists public.build_sessions (
  id uuid primary key default gen_random_uuid(),
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  status text check (status in ('queued', 'running', 'succeeded', 'failed', 'canceled')),
  template text not null,
  vibe_text text not null,
  options jsonb default '{}'::jsonb,
  plan jsonb,
  environment jsonb,
  outputs jsonb,
  error text,
  created_by uuid,
  -- The seed writes encode(…, 'base64url'), which only Postgres 18 knows; this is the same
  -- token spelled for older servers (24 random bytes, URL-safe base64, no padding needed).
  share_token text not null default translate(encode(gen_random_bytes(24), 'base64'), '+/', '-_')
);

create index if not exists build_sessions_created_at_idx on public.build_sessions (created_at desc);
create unique index if not exists build_sessions_share_token_uidx on public.build_sessions (share_token);

create or replace function public.set_updated_at()
returns trigger
language plpgsql
as $$
begin
  new.updated_at = now();
  return new;
end;
$$;

drop trigger if exists build_sessions_set_updated_at on public.build_sessions;
create trigger build_sessions_set_updated_at
before update on public.build_sessions
for each row execute function public.set_updated_at();

create table if not exists public.build_events (
  id uuid primary key default gen_random_uuid(),
  session_id uuid references public.build_sessions(id) on delete cascade,
  ts timestamptz default now(),
  type text not null,
  message text not null,
  payload jsonb default '{}'::jsonb
);

create index if not exists build_events_session_ts_idx on public.build_events (session_id, ts asc);

alter table public.build_sessions enable row level security;
alter table public.build_events enable row level security;
