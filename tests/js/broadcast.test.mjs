// Broadcast over the socket: self, ack, payload fidelity, ordering, event-name matching,
// binary payloads, and meta.cursor.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import { VERSIONS, newClient, subscribe, onBroadcast, ping, byteArray } from './helpers/client.mjs'
import { parseCursor } from './helpers/wire.mjs'
import { uniqueName } from './helpers/wait.mjs'

let hub
before(async () => {
  hub = await startHub()
})
after(async () => {
  await hub?.stop()
})

/** Creates `n` clients joined to one topic, each with a broadcast log. */
async function members(t, vsn, topic, configs) {
  const out = []
  for (const [i, cfg] of configs.entries()) {
    const c = newClient(hub, { vsn, t, name: cfg.name ?? `member-${i}` })
    const ch = c.channel(topic, { config: cfg.config ?? {} })
    const got = onBroadcast(ch, cfg.event ?? '*', `${cfg.name ?? `member-${i}`} broadcasts`)
    out.push({ c, ch, got })
  }
  await Promise.all(out.map((m) => subscribe(m.ch)))
  return out
}

function outgoingBroadcasts(client) {
  return client.spy.frames.filter((f) => f.dir === 'out' && f.event === 'broadcast')
}

for (const vsn of VERSIONS) {
  describe(`vsn ${vsn}: broadcast`, () => {
    test('self: false — the sender does not receive its own broadcast, others do', async (t) => {
      const [a, b] = await members(t, vsn, uniqueName('self-off'), [
        { name: 'sender', config: { broadcast: { self: false } } },
        { name: 'peer', config: { broadcast: { self: false } } },
      ])
      await a.ch.send({ type: 'broadcast', event: 'ping', payload: { n: 1 } })
      await b.got.waitFor((m) => m.payload.n === 1, 'peer gets n=1')
      // Causal barrier: the peer's answer is queued on the sender's connection after any copy of n=1.
      await b.ch.send({ type: 'broadcast', event: 'pong', payload: { n: 2 } })
      await a.got.waitFor((m) => m.payload.n === 2, 'sender gets the answer n=2')
      assert.deepEqual(a.got.items.map((m) => m.payload.n), [2], 'sender must not see its own n=1')
      assert.deepEqual(b.got.items.map((m) => m.payload.n), [1], 'peer must not see its own n=2')
    })

    test('self: true — the sender receives its own broadcast once, identical to the peers copy', async (t) => {
      const [a, b] = await members(t, vsn, uniqueName('self-on'), [
        { name: 'sender', config: { broadcast: { self: true } } },
        { name: 'peer' },
      ])
      const payload = { n: 1, nested: { list: [1, 'two', null, true], text: 'héllo ✓' } }
      await a.ch.send({ type: 'broadcast', event: 'echo', payload })
      const own = await a.got.waitFor((m) => m.event === 'echo', 'own broadcast back at the sender')
      const peer = await b.got.waitFor((m) => m.event === 'echo', 'broadcast at the peer')
      assert.deepEqual(own.payload, payload)
      assert.deepEqual(peer.payload, payload)
      assert.equal(own.type, 'broadcast')
      assert.equal(own.meta?.cursor, peer.meta?.cursor, 'same message, same cursor')
      await ping(a.c)
      assert.equal(a.got.filter((m) => m.event === 'echo').length, 1)
    })

    test('ack: true — send() resolves "ok" only after the server replied to the push', async (t) => {
      const [a] = await members(t, vsn, uniqueName('ack-on'), [
        { name: 'sender', config: { broadcast: { ack: true, self: false } } },
        { name: 'peer' },
      ])
      const status = await a.ch.send({ type: 'broadcast', event: 'acked', payload: { n: 1 } }, { timeout: 3000 })
      assert.equal(status, 'ok', 'send() must resolve ok (timed out means no reply came)')
      const push = outgoingBroadcasts(a.c)[0]
      assert.ok(push.ref, 'push has a ref')
      const reply = a.c.spy.frames.find((f) => f.dir === 'in' && f.event === 'phx_reply' && f.ref === push.ref)
      assert.ok(reply, 'reply frame for the broadcast push')
      assert.equal(reply.payload.status, 'ok')
      assert.equal(reply.topic, a.ch.topic)
    })

    test('ack: false — send() resolves immediately and the server sends no reply', async (t) => {
      const [a, b] = await members(t, vsn, uniqueName('ack-off'), [
        { name: 'sender', config: { broadcast: { ack: false } } },
        { name: 'peer' },
      ])
      const status = await a.ch.send({ type: 'broadcast', event: 'unacked', payload: { n: 1 } })
      assert.equal(status, 'ok')
      const push = outgoingBroadcasts(a.c)[0]
      await b.got.waitFor((m) => m.event === 'unacked', 'peer gets the broadcast')
      await ping(a.c) // causal barrier: a reply to the push would have arrived before this
      const replies = a.c.spy.frames.filter((f) => f.dir === 'in' && f.event === 'phx_reply' && f.ref === push.ref)
      assert.deepEqual(replies, [], 'no reply to an unacked broadcast')
    })

    test('payloads arrive unchanged (nested JSON, unicode, numbers, 64 KiB string)', async (t) => {
      const [a, b] = await members(t, vsn, uniqueName('payload'), [{ name: 'sender' }, { name: 'peer' }])
      const payloads = [
        {},
        { s: 'plain' },
        { unicode: 'Ünïcødé — 日本語 — 🚀', quote: '"\\/\b\f\n\r\t', zero: '\u0000x' },
        { numbers: [0, -1, 1.5, 1e21, 9007199254740991], bools: [true, false], nil: null },
        { deep: { a: { b: { c: { d: [{ e: 'f' }] } } } } },
        { big: 'x'.repeat(64 * 1024) },
      ]
      for (const [i, p] of payloads.entries()) {
        await a.ch.send({ type: 'broadcast', event: `p${i}`, payload: p })
      }
      const got = await b.got.waitForCount(() => true, payloads.length, 'all payloads at the peer')
      for (const [i, p] of payloads.entries()) {
        assert.equal(got[i].event, `p${i}`, 'in order')
        assert.deepEqual(got[i].payload, p, `payload ${i} unchanged`)
      }
    })

    test('messages from one sender arrive in order at every member', async (t) => {
      const ms = await members(t, vsn, uniqueName('order'), [
        { name: 'sender' },
        { name: 'peer-1' },
        { name: 'peer-2' },
        { name: 'peer-3' },
      ])
      const N = 200
      for (let i = 0; i < N; i++) ms[0].ch.send({ type: 'broadcast', event: 'seq', payload: { i } })
      for (const m of ms.slice(1)) {
        const got = await m.got.waitForCount((x) => x.event === 'seq', N, `${N} ordered messages`)
        assert.deepEqual(got.map((x) => x.payload.i), Array.from({ length: N }, (_, i) => i))
      }
    })

    test('event names are preserved and matched case-insensitively by the client', async (t) => {
      const topic = uniqueName('case')
      const [a] = await members(t, vsn, topic, [{ name: 'sender' }])
      const c = newClient(hub, { vsn, t, name: 'listener' })
      const ch = c.channel(topic)
      const mixed = onBroadcast(ch, 'CursorMove', 'listener CursorMove')
      const all = onBroadcast(ch, '*', 'listener *')
      const other = onBroadcast(ch, 'other', 'listener other')
      await subscribe(ch)
      for (const ev of ['cursormove', 'CURSORMOVE', 'CursorMove', 'other', 'unrelated']) {
        await a.ch.send({ type: 'broadcast', event: ev, payload: { ev } })
      }
      await all.waitForCount(() => true, 5, 'all 5 events at the wildcard listener')
      assert.deepEqual(all.items.map((m) => m.event), ['cursormove', 'CURSORMOVE', 'CursorMove', 'other', 'unrelated'])
      assert.deepEqual(mixed.items.map((m) => m.event), ['cursormove', 'CURSORMOVE', 'CursorMove'])
      assert.deepEqual(other.items.map((m) => m.event), ['other'])
    })

    // The epoch may be per process or per topic (the contract does not say); it must be stable.
    test('every delivered broadcast carries meta.cursor "<epoch>:<offset>", +1 per message per topic', async (t) => {
      const topicA = uniqueName('cursor-a')
      const topicB = uniqueName('cursor-b')
      const [sa, ra] = await members(t, vsn, topicA, [
        { name: 'sender-a', config: { broadcast: { ack: true, self: true } } },
        { name: 'receiver-a' },
      ])
      const [sb, rb] = await members(t, vsn, topicB, [
        { name: 'sender-b', config: { broadcast: { ack: true } } },
        { name: 'receiver-b' },
      ])
      for (let i = 0; i < 5; i++) {
        assert.equal(await sa.ch.send({ type: 'broadcast', event: 'c', payload: { i } }), 'ok')
        if (i < 3) assert.equal(await sb.ch.send({ type: 'broadcast', event: 'c', payload: { i } }), 'ok')
      }
      const gotA = await ra.got.waitForCount(() => true, 5, 'five messages on topic A')
      const selfA = await sa.got.waitForCount(() => true, 5, 'five self copies on topic A')
      const gotB = await rb.got.waitForCount(() => true, 3, 'three messages on topic B')
      const cursorsA = gotA.map((m) => parseCursor(m.meta?.cursor))
      const cursorsB = gotB.map((m) => parseCursor(m.meta?.cursor))
      for (const [i, c] of [...cursorsA, ...cursorsB].entries()) {
        assert.ok(c, `message ${i} cursor is "<epoch>:<offset>": ${JSON.stringify(gotA.concat(gotB)[i]?.meta)}`)
      }
      for (let i = 1; i < cursorsA.length; i++) {
        assert.equal(cursorsA[i].epoch, cursorsA[0].epoch)
        assert.equal(cursorsA[i].offset, cursorsA[i - 1].offset + 1, 'offsets on topic A increase by 1')
      }
      for (let i = 1; i < cursorsB.length; i++) {
        assert.equal(cursorsB[i].offset, cursorsB[i - 1].offset + 1, 'offsets on topic B increase by 1')
      }
      for (let i = 1; i < cursorsB.length; i++) assert.equal(cursorsB[i].epoch, cursorsB[0].epoch)
      assert.deepEqual(
        selfA.map((m) => m.meta.cursor),
        gotA.map((m) => m.meta.cursor),
        'the sender and the receiver see the same cursor for each message'
      )
    })
  })
}

describe('vsn 2.0.0: binary payloads', () => {
  test('an ArrayBuffer payload travels as kind 3 and comes back to V2 members as an ArrayBuffer', async (t) => {
    const [a, b] = await members(t, '2.0.0', uniqueName('bin'), [
      { name: 'sender', config: { broadcast: { self: true, ack: true } } },
      { name: 'peer' },
    ])
    const bytes = new Uint8Array([0, 1, 2, 3, 250, 255, 0x7b, 0x22])
    assert.equal(await a.ch.send({ type: 'broadcast', event: 'bin', payload: bytes.buffer }), 'ok')
    const out = outgoingBroadcasts(a.c)[0]
    assert.equal(out.form, 'kind3')
    assert.equal(out.encoding, 0, 'raw binary encoding')

    for (const [who, log] of [['peer', b.got], ['sender (self)', a.got]]) {
      const m = await log.waitFor((x) => x.event === 'bin', `binary broadcast at ${who}`)
      assert.ok(m.payload instanceof ArrayBuffer, `${who}: payload must be an ArrayBuffer, got ${Object.prototype.toString.call(m.payload)}`)
      assert.deepEqual(byteArray(m.payload), [...bytes])
      assert.ok(m.meta?.cursor, `${who}: binary broadcast has meta.cursor`)
    }
    const frame = b.c.spy.frames.find((f) => f.dir === 'in' && f.payload?.event === 'bin')
    assert.equal(frame.form, 'kind4', 'delivered as a kind 4 binary frame')
    assert.equal(frame.encoding, 0)
  })

  test('an empty ArrayBuffer payload is delivered as an empty ArrayBuffer', async (t) => {
    const [a, b] = await members(t, '2.0.0', uniqueName('bin-empty'), [{ name: 'sender' }, { name: 'peer' }])
    await a.ch.send({ type: 'broadcast', event: 'empty', payload: new ArrayBuffer(0) })
    const m = await b.got.waitFor((x) => x.event === 'empty', 'empty binary broadcast')
    assert.ok(m.payload instanceof ArrayBuffer)
    assert.equal(m.payload.byteLength, 0)
  })

  test('multi-byte UTF-8 event names survive the kind 3/kind 4 length prefixes', async (t) => {
    const [a, b] = await members(t, '2.0.0', uniqueName('utf8'), [{ name: 'sender' }, { name: 'peer' }])
    const event = 'évènement-🚀-日本'
    await a.ch.send({ type: 'broadcast', event, payload: { ok: true } })
    const m = await b.got.waitFor((x) => x.payload?.ok === true, 'unicode-named broadcast')
    assert.equal(m.event, event)
  })
})
