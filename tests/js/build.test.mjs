// A simulated build observed end to end through the real @supabase/realtime-js: the session is
// created over REST, the orchestrator (the hub's simulator) writes the timeline through the store
// (SQL inserts into build_events when the hub runs on Postgres), and browsers follow
// `build:<sessionId>`: the owner with its own token, a share-link holder with the read-only
// token it gets in exchange for the share token. Both must see every timeline event once, in
// order, and the architect's presence moving.
//
// Runs on the in-memory default, and on Postgres too when the test command provides one
// (HUB_JS_DATABASE_URL, set by scripts/test).

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'

import { mintToken, startHub } from './helpers/hub.mjs'
import { closeAllClients, newClient, onBroadcast, onPresence, subscribe } from './helpers/client.mjs'

/** The timeline of a saas build without analytics, as the simulator writes it (seed 004 §6). */
const FIRST = 'plan_created'
const LAST = 'build_succeeded'

const backends = [['memory', null]]
if (process.env.HUB_JS_DATABASE_URL) backends.push(['postgres', process.env.HUB_JS_DATABASE_URL])

for (const [backend, databaseUrl] of backends) {
  describe(`simulated build on ${backend}`, () => {
    let hub
    before(async () => {
      const env = databaseUrl ? { DATABASE_URL: databaseUrl } : {}
      hub = await startHub({ args: ['--simulate-step-delay', '60ms'], env })
    })
    after(async () => {
      await closeAllClients()
      await hub?.stop()
    })

    async function rest(path, { method = 'GET', token, body } = {}) {
      const headers = { 'content-type': 'application/json' }
      if (token) headers.authorization = `Bearer ${token}`
      const res = await fetch(`${hub.httpUrl}${path}`, {
        method,
        headers,
        body: body && JSON.stringify(body),
      })
      const text = await res.text()
      return { status: res.status, body: text ? JSON.parse(text) : null }
    }

    for (const vsn of ['1.0.0', '2.0.0']) {
      test(`vsn ${vsn}: owner and share-link viewer follow the timeline and the architect`, async (t) => {
        const owner = crypto.randomUUID()
        const ownerToken = mintToken({ sub: owner })
        const created = await rest('/sessions', {
          method: 'POST',
          token: ownerToken,
          body: { vibeText: 'a saas for invoices', template: 'saas', options: {} },
        })
        assert.equal(created.status, 201, JSON.stringify(created.body))
        const { sessionId, shareToken } = created.body
        const exchanged = await rest('/sessions/token', { method: 'POST', body: { shareToken } })
        assert.equal(exchanged.status, 200, JSON.stringify(exchanged.body))
        const viewerToken = exchanged.body.accessToken

        // Both join from the start of the timeline; the build is already running.
        const watch = async (token, name) => {
          const client = newClient(hub, { vsn, token, t, name })
          const ch = client.channel(`build:${sessionId}`, {
            config: { broadcast: { resume: { since: '0' } }, presence: { enabled: true } },
          })
          const events = onBroadcast(ch, '*', `${name}: timeline`)
          const presence = onPresence(ch, `${name}: presence`)
          await subscribe(ch)
          return { client, ch, events, presence }
        }
        const ownerView = await watch(ownerToken, 'owner')
        const viewer = await watch(viewerToken, 'share-link viewer')

        for (const view of [ownerView, viewer]) {
          await view.events.waitFor((m) => m.event === LAST, `${LAST} on ${view.events.name}`, 20_000)
          await view.events.waitFor(
            (m) => m.event === 'status' && m.payload.status === 'succeeded',
            'status succeeded',
            5000
          )
          const seen = view.events.items
          const offsets = seen.map((m) => Number(m.meta.cursor.split(':')[1]))
          assert.deepEqual(
            offsets,
            offsets.map((_, i) => i + 1),
            `${view.events.name}: offsets 1..n exactly once, in order`
          )
          const timeline = seen.filter((m) => m.event !== 'status').map((m) => m.event)
          assert.equal(timeline[0], FIRST)
          assert.equal(timeline.at(-1), LAST)
          for (const m of seen.filter((m) => m.event !== 'status')) {
            assert.equal(m.payload.session_id, sessionId)
            assert.equal(m.payload.type, m.event)
          }
          // The architect moved while the viewer watched: at least one presence join of the
          // architect key with its seed-004 §5.1 payload.
          const join = await view.presence.waitFor(
            (e) => e.event === 'join' && e.key === 'architect',
            'architect presence join',
            5000
          )
          const meta = join.newPresences[0]
          assert.equal(meta.actor, 'architect')
          assert.equal(typeof meta.step, 'string')
          assert.ok(meta.progress >= 0 && meta.progress <= 1)
        }

        // The REST timeline is the same sequence the channel carried.
        const rows = await rest(`/events?session_id=${sessionId}`, { token: ownerToken })
        assert.equal(rows.status, 200)
        assert.deepEqual(
          rows.body.map((e) => e.type),
          ownerView.events.items.filter((m) => m.event !== 'status').map((m) => m.event)
        )

        // The share-link token reads but may not write.
        const refused = await viewer.ch.send({ type: 'broadcast', event: 'note', payload: {} })
        assert.ok(['ok', 'error'].includes(refused)) // no ack configured: resolves locally
        const stranger = newClient(hub, { vsn, token: mintToken({ sub: crypto.randomUUID() }), t, name: 'stranger' })
        const strangerCh = stranger.channel(`build:${sessionId}`)
        await assert.rejects(subscribe(strangerCh), /Unauthorized: You do not have permissions to read/)
      })
    }
  })
}
