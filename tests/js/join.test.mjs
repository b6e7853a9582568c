// Channel join / leave: config merging, postgres_changes binding echo, leave, duplicate joins,
// the per-connection channel limit, topic validation, public vs private topics.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import {
  VERSIONS,
  newClient,
  subscribe,
  subscribeStatus,
  onBroadcast,
  ping,
  statusLog,
} from './helpers/client.mjs'
import { RawSocket } from './helpers/raw.mjs'
import { uniqueName } from './helpers/wait.mjs'

let hub
before(async () => {
  hub = await startHub()
})
after(async () => {
  await hub?.stop()
})

for (const vsn of VERSIONS) {
  describe(`vsn ${vsn}: join and leave`, () => {
    test('join with the default config is answered ok with the same ref/join_ref', async (t) => {
      const c = newClient(hub, { vsn, t })
      const topic = uniqueName('join')
      const ch = c.channel(topic)
      await subscribe(ch)
      const join = c.spy.frames.find((f) => f.dir === 'out' && f.event === 'phx_join')
      assert.deepEqual(join.payload.config, {
        broadcast: { ack: false, self: false },
        presence: { key: '', enabled: false },
        postgres_changes: [],
        private: false,
      })
      const reply = c.spy.frames.find((f) => f.dir === 'in' && f.event === 'phx_reply' && f.ref === join.ref)
      assert.ok(reply, 'join reply present')
      assert.equal(reply.topic, `realtime:${topic}`)
      assert.equal(reply.payload.status, 'ok')
      if (vsn === '2.0.0') assert.equal(reply.join_ref, join.ref)
      else if (reply.hasJoinRef) assert.equal(reply.join_ref, join.ref)
      const pc = reply.payload.response?.postgres_changes
      assert.ok(pc === undefined || (Array.isArray(pc) && pc.length === 0), `postgres_changes was ${JSON.stringify(pc)}`)
    })

    test('postgres_changes bindings are echoed in order with numeric ids', async (t) => {
      const c = newClient(hub, { vsn, t })
      const ch = c.channel(uniqueName('pg'))
      const bindings = [
        { event: 'INSERT', schema: 'public', table: 'todos' },
        { event: '*', schema: 'public', table: 'todos', filter: 'id=eq.1' },
        { event: 'DELETE', schema: 'public' },
        { event: 'UPDATE', schema: 'private', table: 'notes', filter: 'owner=eq.abc' },
      ]
      for (const b of bindings) ch.on('postgres_changes', b, () => {})
      await subscribe(ch)
      const registered = ch.bindings.postgres_changes
      assert.equal(registered.length, bindings.length)
      for (const [i, b] of registered.entries()) {
        assert.equal(typeof b.id, 'number', `binding ${i} id ${JSON.stringify(b.id)} must be a number`)
        assert.ok(Number.isInteger(b.id), `binding ${i} id must be an integer`)
        assert.equal(b.filter.event, bindings[i].event)
      }
      const join = c.spy.frames.find((f) => f.dir === 'out' && f.event === 'phx_join')
      const reply = c.spy.frames.find((f) => f.dir === 'in' && f.ref === join.ref)
      const echoed = reply.payload.response.postgres_changes
      assert.equal(echoed.length, bindings.length)
      for (const [i, b] of bindings.entries()) {
        assert.equal(echoed[i].event, b.event)
        assert.equal(echoed[i].schema, b.schema)
        assert.equal(echoed[i].table ?? undefined, b.table)
        assert.equal(echoed[i].filter ?? undefined, b.filter)
      }
      // No change events are ever sent.
      assert.equal(c.spy.incoming({ event: 'postgres_changes' }).length, 0)
    })

    test('a missing ack/self in the broadcast config defaults to false (shallow merge)', async (t) => {
      const topic = uniqueName('merge')
      const a = newClient(hub, { vsn, t, name: 'sender' })
      const b = newClient(hub, { vsn, t, name: 'receiver' })
      // The user's broadcast object replaces the client default, so the join carries neither key.
      const chA = a.channel(topic, { config: { broadcast: { replication_ready: false } } })
      const chB = b.channel(topic)
      const atA = onBroadcast(chA)
      const atB = onBroadcast(chB)
      await subscribe(chA)
      await subscribe(chB)
      const join = a.spy.frames.find((f) => f.dir === 'out' && f.event === 'phx_join')
      assert.deepEqual(join.payload.config.broadcast, { replication_ready: false })

      assert.equal(await chA.send({ type: 'broadcast', event: 'm', payload: { n: 1 } }), 'ok')
      await atB.waitFor((m) => m.payload.n === 1, 'receiver gets m1')
      // Causal barrier: b answers, a receives the answer; a copy of m1 for a would have been
      // queued on a's connection before that answer.
      await chB.send({ type: 'broadcast', event: 'm', payload: { n: 2 } })
      await atA.waitFor((m) => m.payload.n === 2, 'sender gets the answer m2')
      assert.equal(atA.filter((m) => m.payload.n === 1).length, 0, 'self defaults to false')
      await ping(a)
      const push = a.spy.frames.find((f) => f.dir === 'out' && f.event === 'broadcast')
      const replies = a.spy.frames.filter((f) => f.dir === 'in' && f.event === 'phx_reply' && f.ref === push.ref)
      assert.equal(replies.length, 0, 'ack defaults to false: no reply to the broadcast push')
    })

    test('unsubscribe sends phx_leave, gets an ok reply, and stops delivery', async (t) => {
      const topic = uniqueName('leave')
      const leaver = newClient(hub, { vsn, t, name: 'leaver' })
      const stayer = newClient(hub, { vsn, t, name: 'stayer' })
      const pub = newClient(hub, { vsn, t, name: 'publisher' })
      const chL = leaver.channel(topic)
      const chS = stayer.channel(topic)
      const chP = pub.channel(topic)
      const atS = onBroadcast(chS)
      await Promise.all([subscribe(chL), subscribe(chS), subscribe(chP)])

      assert.equal(await chL.unsubscribe(), 'ok')
      const leave = leaver.spy.frames.find((f) => f.dir === 'out' && f.event === 'phx_leave')
      assert.ok(leave, 'phx_leave sent')
      const reply = await leaver.spy.frames.waitFor(
        (f) => f.dir === 'in' && f.event === 'phx_reply' && f.ref === leave.ref,
        'reply to phx_leave'
      )
      assert.equal(reply.payload.status, 'ok')

      await chP.send({ type: 'broadcast', event: 'after-leave', payload: { n: 1 } })
      await atS.waitFor((m) => m.event === 'after-leave', 'stayer gets the post-leave broadcast')
      // Bounded absence check (the only way to prove non-delivery): the stayer already has it.
      await leaver.spy.frames.expectNone(
        (f) => f.dir === 'in' && f.topic === `realtime:${topic}` && f.event === 'broadcast',
        'broadcast frame delivered to a member that left',
        300
      )
    })

    test('a topic with an empty name is refused with TopicNameRequired', async (t) => {
      const c = newClient(hub, { vsn, t })
      const ch = c.channel('')
      assert.equal(ch.topic, 'realtime:')
      const first = await subscribeStatus(ch)
      assert.equal(first.status, 'CHANNEL_ERROR')
      assert.equal(first.message, 'TopicNameRequired: You must provide a topic name')
      await c.removeChannel(ch)
    })

    test('at most 100 channels per connection: the 101st gets ChannelRateLimitReached', async (t) => {
      const c = newClient(hub, { vsn, t })
      const base = uniqueName('many')
      const chans = Array.from({ length: 100 }, (_, i) => c.channel(`${base}-${i}`))
      await Promise.all(chans.map((ch) => subscribe(ch, { timeout: 10_000 })))

      const extra = c.channel(`${base}-extra`)
      const first = await subscribeStatus(extra)
      assert.equal(first.status, 'CHANNEL_ERROR')
      assert.equal(first.message, 'ChannelRateLimitReached: Too many channels')
      const join = c.spy.frames.find((f) => f.dir === 'out' && f.event === 'phx_join' && f.topic === extra.topic)
      const reply = c.spy.frames.find((f) => f.dir === 'in' && f.ref === join.ref && f.event === 'phx_reply')
      assert.deepEqual(reply.payload, {
        status: 'error',
        response: { reason: 'ChannelRateLimitReached: Too many channels' },
      })
      // Stop the client's automatic rejoin of the refused channel, free a slot, join again.
      await c.removeChannel(extra)
      assert.equal(await chans[0].unsubscribe(), 'ok')
      await subscribe(c.channel(`${base}-after-free`))
    })

    test('public and private channels with the same name are distinct topics', async (t) => {
      const name = uniqueName('pubpriv')
      const mk = (label, priv) => {
        const c = newClient(hub, { vsn, t, name: label })
        const ch = c.channel(name, { config: { private: priv } })
        return { c, ch, got: onBroadcast(ch, '*', `${label} broadcasts`) }
      }
      const pub1 = mk('public-1', false)
      const pub2 = mk('public-2', false)
      const priv1 = mk('private-1', true)
      const priv2 = mk('private-2', true)
      await Promise.all([pub1, pub2, priv1, priv2].map((m) => subscribe(m.ch)))
      const privJoin = priv1.c.spy.frames.find((f) => f.dir === 'out' && f.event === 'phx_join')
      assert.equal(privJoin.payload.config.private, true)

      await pub1.ch.send({ type: 'broadcast', event: 'from-public', payload: { side: 'public' } })
      await priv1.ch.send({ type: 'broadcast', event: 'from-private', payload: { side: 'private' } })
      await pub2.got.waitFor((m) => m.event === 'from-public', 'public member gets the public broadcast')
      await priv2.got.waitFor((m) => m.event === 'from-private', 'private member gets the private broadcast')
      // Bounded absence check: the same-side peers already received both messages.
      await Promise.all([
        pub2.got.expectNone((m) => m.event === 'from-private', 'private broadcast at a public member', 300),
        pub1.got.expectNone((m) => m.event === 'from-private', 'private broadcast at a public member', 300),
        priv2.got.expectNone((m) => m.event === 'from-public', 'public broadcast at a private member', 300),
        priv1.got.expectNone((m) => m.event === 'from-public', 'public broadcast at a private member', 300),
      ])
    })
  })

  describe(`vsn ${vsn}: duplicate join on one connection (raw)`, () => {
    test('a second phx_join for the same topic replaces the first membership', async (t) => {
      const topic = `realtime:${uniqueName('dup')}`
      const raw = await RawSocket.open(hub, { vsn })
      t.after(() => raw.close())
      const first = await raw.join(topic, { broadcast: { ack: false, self: false } })
      const second = await raw.join(topic, { broadcast: { ack: true, self: true } })
      assert.notEqual(first.join_ref, second.join_ref)

      // The new config is in effect: self and ack are now on.
      const ref = raw.send({
        join_ref: second.join_ref,
        topic,
        event: 'broadcast',
        payload: { type: 'broadcast', event: 'dup', payload: { n: 1 } },
      })
      const ack = await raw.waitReply(ref, 'ack for broadcast under the replacing join')
      assert.equal(ack.payload.status, 'ok')
      const own = await raw.frames.waitFor(
        (f) => f.event === 'broadcast' && f.payload?.event === 'dup',
        'own broadcast (self: true from the second join)'
      )
      assert.deepEqual(own.payload.payload, { n: 1 })
      // Bounded absence check: a leftover first membership would deliver a second copy.
      await raw.frames.expectNone(
        (f) => f !== own && f.event === 'broadcast' && f.payload?.event === 'dup',
        'second copy of the broadcast (old membership still alive)',
        300
      )
      // Another member's broadcast also arrives exactly once.
      const pub = newClient(hub, { vsn, t, name: 'publisher' })
      const chP = pub.channel(topic.slice('realtime:'.length))
      await subscribe(chP)
      await chP.send({ type: 'broadcast', event: 'dup2', payload: { n: 2 } })
      await raw.frames.waitFor((f) => f.event === 'broadcast' && f.payload?.event === 'dup2', 'publisher broadcast')
      // Bounded absence check, as above.
      await raw.frames.expectNone(
        (f) => f.event === 'broadcast' && f.payload?.event === 'dup2' && f !== raw.frames.find((g) => g.payload?.event === 'dup2'),
        'second copy of the publisher broadcast',
        300
      )
      // If the hub tells the client about the replaced membership, it must be a phx_close on the
      // OLD join_ref (which realtime-js drops as outdated), never on the new one.
      for (const f of raw.frames.filter((f) => f.event === 'phx_close' || f.event === 'phx_error')) {
        if (vsn === '2.0.0') assert.equal(f.join_ref, first.join_ref, `unexpected ${f.text}`)
      }
      const hb = await raw.heartbeat()
      assert.equal(hb.payload.status, 'ok')
    })
  })
}

describe('channel statuses', () => {
  test('a refused join does not close the socket (other channels keep working)', async (t) => {
    const c = newClient(hub, { vsn: '2.0.0', t })
    const good = c.channel(uniqueName('good'))
    const got = onBroadcast(good)
    await subscribe(good)
    const bad = c.channel('')
    assert.equal((await subscribeStatus(bad)).status, 'CHANNEL_ERROR')
    await c.removeChannel(bad)
    const other = newClient(hub, { vsn: '2.0.0', t })
    const chO = other.channel(good.subTopic)
    await subscribe(chO)
    await chO.send({ type: 'broadcast', event: 'still', payload: {} })
    await got.waitFor((m) => m.event === 'still', 'broadcast on the good channel after a refused join')
    assert.equal(statusLog(good).filter((s) => s.status !== 'SUBSCRIBED').length, 0)
    assert.equal(c.spy.sockets.length, 1, 'no reconnect happened')
  })
})
