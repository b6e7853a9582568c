// A V1 member and a V2 member on the same topic.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import { newClient, subscribe, onBroadcast, onPresence, byteArray } from './helpers/client.mjs'
import { uniqueName } from './helpers/wait.mjs'

let hub
before(async () => {
  hub = await startHub()
})
after(async () => {
  await hub?.stop()
})

async function pairOnTopic(t, topic, config = {}) {
  const v1 = newClient(hub, { vsn: '1.0.0', t, name: 'v1' })
  const v2 = newClient(hub, { vsn: '2.0.0', t, name: 'v2' })
  const ch1 = v1.channel(topic, { config })
  const ch2 = v2.channel(topic, { config })
  const got1 = onBroadcast(ch1, '*', 'v1 broadcasts')
  const got2 = onBroadcast(ch2, '*', 'v2 broadcasts')
  return { v1, v2, ch1, ch2, got1, got2 }
}

describe('V1 and V2 members on one topic', () => {
  test('broadcasts flow both ways with identical payloads and cursors', async (t) => {
    const topic = uniqueName('mixed')
    const p = await pairOnTopic(t, topic, { broadcast: { self: true, ack: true } })
    await Promise.all([subscribe(p.ch1), subscribe(p.ch2)])
    const payload = { text: 'héllo', list: [1, { a: null }], n: 3.25 }
    assert.equal(await p.ch1.send({ type: 'broadcast', event: 'from-v1', payload }), 'ok')
    assert.equal(await p.ch2.send({ type: 'broadcast', event: 'from-v2', payload }), 'ok')
    for (const [who, log] of [['v1', p.got1], ['v2', p.got2]]) {
      const got = await log.waitForCount(() => true, 2, `both messages at ${who}`)
      assert.deepEqual(got.map((m) => m.event), ['from-v1', 'from-v2'], `${who}: order`)
      for (const m of got) assert.deepEqual(m.payload, payload, `${who}: payload of ${m.event}`)
    }
    assert.deepEqual(
      p.got1.items.map((m) => m.meta?.cursor),
      p.got2.items.map((m) => m.meta?.cursor),
      'a message has the same cursor for V1 and V2 members'
    )
    // Wire formats: V1 gets object frames, V2 gets kind 4 or array frames.
    assert.ok(p.v1.spy.incoming({ event: 'broadcast' }).every((f) => f.form === 'v1'))
    assert.ok(p.v2.spy.incoming({ event: 'broadcast' }).every((f) => f.form === 'kind4' || f.form === 'v2'))
    const v1frame = p.v1.spy.incoming({ event: 'broadcast' })[0]
    assert.equal(v1frame.ref, null)
  })

  test('a binary broadcast from V2 reaches V2 members as an ArrayBuffer and V1 members not at all', async (t) => {
    const topic = uniqueName('mixed-bin')
    const p = await pairOnTopic(t, topic)
    const v2b = newClient(hub, { vsn: '2.0.0', t, name: 'v2-peer' })
    const chB = v2b.channel(topic)
    const gotB = onBroadcast(chB, '*', 'v2 peer broadcasts')
    await Promise.all([subscribe(p.ch1), subscribe(p.ch2), subscribe(chB)])
    const bytes = new Uint8Array([1, 2, 3, 254])
    await p.ch2.send({ type: 'broadcast', event: 'bin', payload: bytes.buffer })
    const m = await gotB.waitFor((x) => x.event === 'bin', 'binary broadcast at the V2 peer')
    assert.deepEqual(byteArray(m.payload), [...bytes])
    // Sentinel: a JSON broadcast from the same sender afterwards.
    await p.ch2.send({ type: 'broadcast', event: 'json-after', payload: { ok: 1 } })
    await p.got1.waitFor((x) => x.event === 'json-after', 'V1 member gets the JSON sentinel')
    assert.deepEqual(p.got1.items.map((x) => x.event), ['json-after'], 'V1 member must not get the raw-binary broadcast')
    assert.equal(p.v1.spy.frames.filter((f) => f.dir === 'in' && f.binary).length, 0, 'no binary frame to V1')
  })

  test('presence is shared between V1 and V2 members', async (t) => {
    const topic = uniqueName('mixed-presence')
    const v1 = newClient(hub, { vsn: '1.0.0', t, name: 'v1' })
    const v2 = newClient(hub, { vsn: '2.0.0', t, name: 'v2' })
    const ch1 = v1.channel(topic, { config: { presence: { key: 'one' } } })
    const ch2 = v2.channel(topic, { config: { presence: { key: 'two' } } })
    const ev1 = onPresence(ch1, 'v1 presence')
    const ev2 = onPresence(ch2, 'v2 presence')
    await Promise.all([subscribe(ch1), subscribe(ch2)])
    assert.equal(await ch1.track({ v: 1 }), 'ok')
    assert.equal(await ch2.track({ v: 2 }), 'ok')
    await ev1.waitFor((e) => e.event === 'join' && e.key === 'two', 'V1 sees the V2 member')
    await ev2.waitFor((e) => e.event === 'join' && e.key === 'one', 'V2 sees the V1 member')
    const norm = (s) =>
      Object.fromEntries(Object.entries(s).map(([k, v]) => [k, v.map(({ presence_ref, ...r }) => r)]))
    await ev1.waitFor(() => ch1.presenceState().one && ch1.presenceState().two, 'V1 state complete')
    await ev2.waitFor(() => ch2.presenceState().one && ch2.presenceState().two, 'V2 state complete')
    assert.deepEqual(norm(ch1.presenceState()), { one: [{ v: 1 }], two: [{ v: 2 }] })
    assert.deepEqual(norm(ch2.presenceState()), { one: [{ v: 1 }], two: [{ v: 2 }] })
    await v1.disconnect()
    await ev2.waitFor((e) => e.event === 'leave' && e.key === 'one', 'V2 sees the V1 member leave')
  })

  test('a V2 member resumes history that a V1 member published, and vice versa', async (t) => {
    const topic = uniqueName('mixed-resume')
    const v1 = newClient(hub, { vsn: '1.0.0', t, name: 'v1-publisher' })
    const pub = v1.channel(topic, { config: { broadcast: { ack: true } } })
    await subscribe(pub)
    for (let i = 0; i < 3; i++) assert.equal(await pub.send({ type: 'broadcast', event: 'h', payload: { i } }), 'ok')
    for (const vsn of ['2.0.0', '1.0.0']) {
      const c = newClient(hub, { vsn, t, name: `resumer ${vsn}` })
      const ch = c.channel(topic, { config: { broadcast: { resume: { since: '0' } } } })
      const got = onBroadcast(ch)
      await subscribe(ch)
      const all = await got.waitForCount(() => true, 3, `history at the vsn ${vsn} resumer`)
      assert.deepEqual(all.map((m) => m.payload.i), [0, 1, 2])
    }
  })
})
