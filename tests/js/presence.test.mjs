// Presence: track/untrack replies, presence_state on every join, presence_diff on track, update,
// untrack, leave, disconnect; identical re-track no-op; server-assigned keys; disabled members.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import {
  VERSIONS,
  newClient,
  subscribe,
  onPresence,
  onBroadcast,
  rawConn,
  statusLog,
} from './helpers/client.mjs'
import { uniqueName } from './helpers/wait.mjs'

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

let hub
before(async () => {
  hub = await startHub()
})
after(async () => {
  await hub?.stop()
})

function strip(p) {
  const { presence_ref, ...rest } = p
  return rest
}

const isJoin = (key) => (e) => e.event === 'join' && e.key === key
const isLeave = (key) => (e) => e.event === 'leave' && e.key === key

for (const vsn of VERSIONS) {
  describe(`vsn ${vsn}: presence`, () => {
    /** A member with presence listening enabled; `key` '' means server-assigned. */
    async function member(t, topic, name, { key = name, listen = true, enabled } = {}) {
      const c = newClient(hub, { vsn, t, name })
      const presence = { key }
      if (enabled !== undefined) presence.enabled = enabled
      const ch = c.channel(topic, { config: { presence } })
      const events = listen ? onPresence(ch, `${name} presence events`) : null
      const broadcasts = onBroadcast(ch, '*', `${name} broadcasts`)
      await subscribe(ch)
      return { c, ch, events, broadcasts, name }
    }

    test('track() resolves ok; other members see the join and presenceState() fills', async (t) => {
      const topic = uniqueName('track')
      const alice = await member(t, topic, 'alice')
      const bob = await member(t, topic, 'bob')
      assert.equal(await alice.ch.track({ name: 'alice', n: 1 }), 'ok')
      const push = alice.c.spy.frames.find((f) => f.dir === 'out' && f.event === 'presence')
      assert.equal(push.payload.event, 'track')
      const reply = alice.c.spy.frames.find((f) => f.dir === 'in' && f.event === 'phx_reply' && f.ref === push.ref)
      assert.equal(reply?.payload.status, 'ok', 'track got an ok reply')

      const join = await bob.events.waitFor(isJoin('alice'), 'bob sees alice join')
      assert.equal(join.newPresences.length, 1)
      assert.deepEqual(strip(join.newPresences[0]), { name: 'alice', n: 1 })
      assert.equal(typeof join.newPresences[0].presence_ref, 'string')
      await bob.events.waitFor((e) => e.event === 'sync' && bob.ch.presenceState().alice, 'bob sync with alice')
      assert.deepEqual(bob.ch.presenceState().alice.map(strip), [{ name: 'alice', n: 1 }])
      const diff = bob.c.spy.frames.find((f) => f.dir === 'in' && f.event === 'presence_diff')
      assert.ok(diff, 'presence_diff frame')
      assert.deepEqual(Object.keys(diff.payload).sort(), ['joins', 'leaves'])
    })

    test('presence_state on join lists the members already in the room', async (t) => {
      const topic = uniqueName('state')
      const alice = await member(t, topic, 'alice')
      await alice.ch.track({ name: 'alice' })
      const bob = await member(t, topic, 'bob')
      await bob.ch.track({ name: 'bob' })

      const carolC = newClient(hub, { vsn, t, name: 'carol' })
      const carolCh = carolC.channel(topic, { config: { presence: { key: 'carol' } } })
      const carolEvents = onPresence(carolCh, 'carol presence events')
      await subscribe(carolCh)
      await carolEvents.waitFor(
        () => carolCh.presenceState().alice && carolCh.presenceState().bob,
        'carol presence state has alice and bob'
      )
      const state = carolC.spy.frames.find((f) => f.dir === 'in' && f.event === 'presence_state')
      assert.ok(state, 'presence_state frame received')
      const join = carolC.spy.frames.find((f) => f.dir === 'out' && f.event === 'phx_join')
      if (vsn === '2.0.0') assert.equal(state.join_ref, join.ref, 'presence_state carries the join_ref')
      assert.deepEqual(Object.keys(state.payload).sort(), ['alice', 'bob'])
      for (const key of ['alice', 'bob']) {
        const metas = state.payload[key].metas
        assert.equal(metas.length, 1)
        assert.equal(metas[0].name, key)
        assert.equal(typeof metas[0].phx_ref, 'string')
      }
      assert.deepEqual(carolCh.presenceState().alice.map(strip), [{ name: 'alice' }])
    })

    test('an empty room sends an empty presence_state', async (t) => {
      const topic = uniqueName('empty-room')
      const alice = await member(t, topic, 'alice')
      const state = await alice.c.spy.frames.waitFor((f) => f.dir === 'in' && f.event === 'presence_state', 'presence_state')
      assert.deepEqual(state.payload, {})
      await alice.events.waitFor((e) => e.event === 'sync', 'first sync')
    })

    test('re-track with a changed payload: one join + one leave for the key, new presence_ref', async (t) => {
      const topic = uniqueName('update')
      const alice = await member(t, topic, 'alice')
      const bob = await member(t, topic, 'bob')
      assert.equal(await alice.ch.track({ status: 'online' }), 'ok')
      const first = await bob.events.waitFor(isJoin('alice'), 'first join of alice')
      const from = bob.events.length
      assert.equal(await alice.ch.track({ status: 'away' }), 'ok')
      const join = await bob.events.waitFor(isJoin('alice'), 'update join of alice', undefined, { from })
      const leave = await bob.events.waitFor(isLeave('alice'), 'update leave of alice', undefined, { from })
      assert.deepEqual(join.newPresences.map(strip), [{ status: 'away' }])
      assert.deepEqual(leave.leftPresences.map(strip), [{ status: 'online' }])
      assert.notEqual(join.newPresences[0].presence_ref, first.newPresences[0].presence_ref, 'presence_ref changes')
      assert.equal(leave.leftPresences[0].presence_ref, first.newPresences[0].presence_ref)

      // Sentinel: carol's join arrives after any further diff for alice would have.
      const carol = await member(t, topic, 'carol')
      await carol.ch.track({ status: 'here' })
      await bob.events.waitFor(isJoin('carol'), 'bob sees carol')
      const aliceEvents = bob.events.items.slice(from).filter((e) => e.key === 'alice')
      assert.equal(aliceEvents.filter((e) => e.event === 'join').length, 1, 'exactly one join')
      assert.equal(aliceEvents.filter((e) => e.event === 'leave').length, 1, 'exactly one leave')
      assert.deepEqual(bob.ch.presenceState().alice.map(strip), [{ status: 'away' }])
    })

    test('re-track with an identical payload is a no-op (no join/leave)', async (t) => {
      const topic = uniqueName('same')
      const alice = await member(t, topic, 'alice')
      const bob = await member(t, topic, 'bob')
      await alice.ch.track({ status: 'online', n: 1 })
      await bob.events.waitFor(isJoin('alice'), 'alice join')
      const from = bob.events.length
      assert.equal(await alice.ch.track({ status: 'online', n: 1 }), 'ok')
      // Sentinel: a later diff from carol; alice's (absent) diff would have come first.
      const carol = await member(t, topic, 'carol')
      await carol.ch.track({ status: 'here' })
      await bob.events.waitFor(isJoin('carol'), 'bob sees carol')
      const aliceEvents = bob.events.items.slice(from).filter((e) => e.key === 'alice')
      assert.deepEqual(aliceEvents, [], 'identical re-track produced presence events')
    })

    test('untrack() resolves ok and others see the leave', async (t) => {
      const topic = uniqueName('untrack')
      const alice = await member(t, topic, 'alice')
      const bob = await member(t, topic, 'bob')
      await alice.ch.track({ name: 'alice' })
      await bob.events.waitFor(isJoin('alice'), 'alice join')
      assert.equal(await alice.ch.untrack(), 'ok')
      const leave = await bob.events.waitFor(isLeave('alice'), 'alice leave after untrack')
      assert.deepEqual(leave.leftPresences.map(strip), [{ name: 'alice' }])
      await bob.events.waitFor((e) => e.event === 'sync' && !bob.ch.presenceState().alice, 'alice gone from state')
    })

    test('unsubscribe() makes the member leave', async (t) => {
      const topic = uniqueName('unsub')
      const alice = await member(t, topic, 'alice')
      const bob = await member(t, topic, 'bob')
      await alice.ch.track({ name: 'alice' })
      await bob.events.waitFor(isJoin('alice'), 'alice join')
      assert.equal(await alice.ch.unsubscribe(), 'ok')
      await bob.events.waitFor(isLeave('alice'), 'alice leave after unsubscribe')
      await bob.events.waitFor((e) => e.event === 'sync' && !bob.ch.presenceState().alice, 'alice gone from state')
    })

    test('client.disconnect() makes the member leave', async (t) => {
      const topic = uniqueName('disc')
      const alice = await member(t, topic, 'alice')
      const bob = await member(t, topic, 'bob')
      await alice.ch.track({ name: 'alice' })
      await bob.events.waitFor(isJoin('alice'), 'alice join')
      await alice.c.disconnect()
      await bob.events.waitFor(isLeave('alice'), 'alice leave after disconnect')
    })

    test('an abruptly lost socket makes the member leave', async (t) => {
      const topic = uniqueName('lost')
      const alice = await member(t, topic, 'alice')
      const bob = await member(t, topic, 'bob')
      await alice.ch.track({ name: 'alice' })
      await bob.events.waitFor(isJoin('alice'), 'alice join')
      rawConn(alice.c).terminate()
      await bob.events.waitFor(isLeave('alice'), 'alice leave after socket loss')
    })

    test('an empty key gets a server-assigned UUID key, different per member', async (t) => {
      const topic = uniqueName('nokey')
      const observer = await member(t, topic, 'observer')
      const a = await member(t, topic, 'anon-a', { key: '' })
      const b = await member(t, topic, 'anon-b', { key: '' })
      await a.ch.track({ who: 'a' })
      await b.ch.track({ who: 'b' })
      const joins = await observer.events.waitForCount((e) => e.event === 'join', 2, 'two anonymous joins')
      const keyA = joins.find((e) => e.newPresences[0].who === 'a').key
      const keyB = joins.find((e) => e.newPresences[0].who === 'b').key
      assert.match(keyA, UUID_RE)
      assert.match(keyB, UUID_RE)
      assert.notEqual(keyA, keyB)
    })

    test('members with presence disabled receive no presence_state / presence_diff', async (t) => {
      const topic = uniqueName('disabled')
      const quiet = await member(t, topic, 'quiet', { listen: false, enabled: false })
      const join = quiet.c.spy.frames.find((f) => f.dir === 'out' && f.event === 'phx_join')
      assert.equal(join.payload.config.presence.enabled, false)
      const bob = await member(t, topic, 'bob')
      const alice = await member(t, topic, 'alice')
      await alice.ch.track({ name: 'alice' })
      await bob.events.waitFor(isJoin('alice'), 'bob sees alice')
      // Sentinel: a broadcast alice sends after her track reaches the quiet member afterwards.
      await alice.ch.send({ type: 'broadcast', event: 'after-track', payload: {} })
      await quiet.broadcasts.waitFor((m) => m.event === 'after-track', 'quiet member gets the broadcast')
      // Bounded absence check on top of the sentinel.
      await quiet.c.spy.frames.expectNone(
        (f) => f.dir === 'in' && (f.event === 'presence_diff' || f.event === 'presence_state'),
        'presence frame at a member with presence disabled',
        300
      )
    })

    test('a member that tracks without listening is still seen by others', async (t) => {
      const topic = uniqueName('silent-tracker')
      const bob = await member(t, topic, 'bob')
      const ghost = await member(t, topic, 'ghost', { listen: false, enabled: false })
      assert.equal(await ghost.ch.track({ name: 'ghost' }), 'ok')
      await bob.events.waitFor(isJoin('ghost'), 'bob sees the non-listening tracker')
    })

    test('config presence.enabled without a listener still gets presence_state', async (t) => {
      const topic = uniqueName('enabled-flag')
      const alice = await member(t, topic, 'alice')
      await alice.ch.track({ name: 'alice' })
      const x = await member(t, topic, 'x', { listen: false, enabled: true })
      await x.c.spy.frames.waitFor((f) => f.dir === 'in' && f.event === 'presence_state', 'presence_state for enabled:true')
      assert.deepEqual(x.ch.presenceState().alice?.map(strip), [{ name: 'alice' }])
    })

    test('presence on a private channel is separate from the public channel of the same name', async (t) => {
      const topic = uniqueName('pres-priv')
      const mk = async (name, priv) => {
        const c = newClient(hub, { vsn, t, name })
        const ch = c.channel(topic, { config: { private: priv, presence: { key: name } } })
        const events = onPresence(ch, `${name} presence events`)
        await subscribe(ch)
        return { c, ch, events }
      }
      const pubA = await mk('pub-a', false)
      const pubB = await mk('pub-b', false)
      const privA = await mk('priv-a', true)
      const privB = await mk('priv-b', true)
      await privA.ch.track({ side: 'private' })
      await pubA.ch.track({ side: 'public' })
      await privB.events.waitFor(isJoin('priv-a'), 'private member sees the private track')
      await pubB.events.waitFor(isJoin('pub-a'), 'public member sees the public track')
      assert.deepEqual(Object.keys(pubB.ch.presenceState()), ['pub-a'])
      assert.deepEqual(Object.keys(privB.ch.presenceState()), ['priv-a'])
      assert.equal(pubB.events.filter(isJoin('priv-a')).length, 0, 'private presence leaked to a public member')
      assert.equal(privB.events.filter(isJoin('pub-a')).length, 0, 'public presence leaked to a private member')
    })

    test('presence_state is sent again after a rejoin, and diffs keep flowing', async (t) => {
      const topic = uniqueName('rejoin')
      const c = newClient(hub, { vsn, t, name: 'alice', reconnectAfterMs: () => 100 })
      const ch = c.channel(topic, { config: { presence: { key: 'alice' } } })
      const events = onPresence(ch, 'alice presence events')
      await subscribe(ch)
      await c.spy.frames.waitFor((f) => f.dir === 'in' && f.event === 'presence_state', 'first presence_state')
      rawConn(c).terminate()
      await statusLog(ch).waitForCount((s) => s.status === 'SUBSCRIBED', 2, 'rejoin')
      const joins = c.spy.frames.filter((f) => f.dir === 'out' && f.event === 'phx_join')
      assert.equal(joins.length, 2)
      const second = await c.spy.frames.waitFor(
        (f) => f.dir === 'in' && f.event === 'presence_state' && f.socket === 1,
        'presence_state after the rejoin'
      )
      if (vsn === '2.0.0') assert.equal(second.join_ref, joins[1].ref)
      const bob = await member(t, topic, 'bob')
      await bob.ch.track({ name: 'bob' })
      await events.waitFor(isJoin('bob'), 'alice sees bob after her rejoin')
      assert.deepEqual(ch.presenceState().bob.map(strip), [{ name: 'bob' }])
    })
  })
}
