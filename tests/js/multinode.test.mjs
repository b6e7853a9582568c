// Two hub processes on one Redis, driven by the unmodified @supabase/realtime-js: a broadcast
// sent on node A reaches a member on node B once (and the sender itself when it asked for
// `self`), with the same meta.cursor on both; presence tracked on A shows up in B's
// presenceState(); a client resumes on B from a cursor it got on A.
//
// Needs Redis: runs when the test command provides one (HUB_JS_REDIS_URL, set by scripts/test),
// and is skipped otherwise. Topics are unique per test, so the database needs no flushing.

import { after, before, describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import {
  VERSIONS,
  closeAllClients,
  newClient,
  onBroadcast,
  onPresence,
  subscribe,
} from './helpers/client.mjs'
import { parseCursor } from './helpers/wire.mjs'
import { uniqueName } from './helpers/wait.mjs'

const redisUrl = process.env.HUB_JS_REDIS_URL

describe('two hub nodes on Redis', { skip: redisUrl ? false : 'HUB_JS_REDIS_URL is not set' }, () => {
  let a
  let b
  before(async () => {
    ;[a, b] = await Promise.all([
      startHub({ env: { REDIS_URL: redisUrl } }),
      startHub({ env: { REDIS_URL: redisUrl } }),
    ])
  })
  after(async () => {
    await closeAllClients()
    await Promise.all([a?.stop(), b?.stop()])
  })

  for (const vsn of VERSIONS) {
    describe(`vsn ${vsn}`, () => {
      test('a broadcast on A reaches B once, and the sender with self, with one cursor', async (t) => {
        const topic = uniqueName('multi-bcast')
        const alice = newClient(a, { vsn, t, name: 'alice on A' })
        const bob = newClient(b, { vsn, t, name: 'bob on B' })
        const aCh = alice.channel(topic, { config: { broadcast: { self: true, ack: true } } })
        const bCh = bob.channel(topic)
        const aGot = onBroadcast(aCh, '*', 'alice broadcasts')
        const bGot = onBroadcast(bCh, '*', 'bob broadcasts')
        await Promise.all([subscribe(aCh), subscribe(bCh)])

        for (let i = 0; i < 3; i++) {
          assert.equal(await aCh.send({ type: 'broadcast', event: 'hello', payload: { i } }), 'ok')
        }
        const atB = await bGot.waitForCount(() => true, 3, 'three broadcasts at bob on B')
        const atA = await aGot.waitForCount(() => true, 3, 'alice\'s own three broadcasts')
        assert.deepEqual(atB.map((m) => m.payload.i), [0, 1, 2])
        assert.deepEqual(atA.map((m) => m.payload.i), [0, 1, 2])
        assert.deepEqual(
          atB.map((m) => m.meta.cursor),
          atA.map((m) => m.meta.cursor),
          'both nodes deliver the same cursors'
        )
        const offsets = atB.map((m) => parseCursor(m.meta.cursor).offset)
        assert.deepEqual(offsets, [offsets[0], offsets[0] + 1, offsets[0] + 2])

        // A sentinel: for both members it is the fourth message, so nothing came twice.
        assert.equal(await aCh.send({ type: 'broadcast', event: 'end', payload: {} }), 'ok')
        for (const [who, log] of [['alice', aGot], ['bob', bGot]]) {
          const end = await log.waitFor((m) => m.event === 'end', `the sentinel at ${who}`)
          assert.equal(parseCursor(end.meta.cursor).offset, offsets[2] + 1, who)
          assert.equal(log.length, 4, `${who} got each message once`)
        }
      })

      test('presence tracked on A appears in presenceState() on B and leaves with it', async (t) => {
        const topic = uniqueName('multi-presence')
        const alice = newClient(a, { vsn, t, name: 'alice on A' })
        const bob = newClient(b, { vsn, t, name: 'bob on B' })
        const aCh = alice.channel(topic, { config: { presence: { key: 'alice' } } })
        const bCh = bob.channel(topic, { config: { presence: { key: 'bob' } } })
        const bEvents = onPresence(bCh, 'presence at bob on B')
        await Promise.all([subscribe(aCh), subscribe(bCh)])
        assert.equal(await aCh.track({ name: 'alice' }), 'ok')
        await bEvents.waitFor((e) => e.event === 'join' && e.key === 'alice', 'alice joining at bob')
        await bEvents.waitFor(
          (e) => e.event === 'sync' && bCh.presenceState().alice,
          'bob syncs with alice'
        )
        assert.deepEqual(
          bCh.presenceState().alice.map(({ presence_ref, ...rest }) => rest),
          [{ name: 'alice' }]
        )
        assert.equal(await aCh.untrack(), 'ok')
        await bEvents.waitFor((e) => e.event === 'leave' && e.key === 'alice', 'alice leaving at bob')
      })

      test('a client resumes on B from a cursor it got on A', async (t) => {
        const topic = uniqueName('multi-resume')
        const pubC = newClient(a, { vsn, t, name: 'publisher on A' })
        const pub = pubC.channel(topic, { config: { broadcast: { ack: true } } })
        const readerA = newClient(a, { vsn, t, name: 'reader on A' })
        const rCh = readerA.channel(topic)
        const seen = onBroadcast(rCh, '*', 'reader on A broadcasts')
        await Promise.all([subscribe(pub), subscribe(rCh)])
        for (let i = 0; i < 5; i++) {
          assert.equal(await pub.send({ type: 'broadcast', event: 'm', payload: { i } }), 'ok')
        }
        const onA = await seen.waitForCount(() => true, 5, 'five messages on A')
        const since = onA[1].meta.cursor

        const resumer = newClient(b, { vsn, t, name: 'resumer on B' })
        const ch = resumer.channel(topic, { config: { broadcast: { resume: { since } } } })
        const got = onBroadcast(ch, '*', 'resumer broadcasts')
        await subscribe(ch)
        await got.waitForCount(() => true, 3, 'the three missed messages, replayed on B')
        assert.equal(await pub.send({ type: 'broadcast', event: 'm', payload: { i: 5 } }), 'ok')
        const all = await got.waitForCount(() => true, 4, 'replay then live on B')
        assert.deepEqual(all.map((m) => m.payload.i), [2, 3, 4, 5])
        assert.deepEqual(
          all.slice(0, 3).map((m) => m.meta.cursor),
          onA.slice(2).map((m) => m.meta.cursor),
          'the same cursors as on A'
        )
        assert.deepEqual(all.map((m) => m.meta.replayed === true), [true, true, true, false])
      })
    })
  }
})
