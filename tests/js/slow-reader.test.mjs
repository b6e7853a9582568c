// A member that stops reading must be disconnected when its outbox overflows
// (hub started with --outbox-messages 64) while the other members keep receiving everything.

import { test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import { newClient, subscribe, onBroadcast } from './helpers/client.mjs'
import { RawSocket } from './helpers/raw.mjs'
import { uniqueName } from './helpers/wait.mjs'

let hub
before(async () => {
  hub = await startHub({ args: ['--outbox-messages', '64'] })
})
after(async () => {
  await hub?.stop()
})

for (const fastVsn of ['1.0.0', '2.0.0']) {
  test(`a paused raw V2 reader is dropped while a vsn ${fastVsn} reader gets every message`, async (t) => {
    const name = uniqueName('slow')
    const topic = `realtime:${name}`

    const slow = await RawSocket.open(hub, { vsn: '2.0.0', name: 'slow reader' })
    t.after(() => slow.close())
    await slow.join(topic)

    const fast = newClient(hub, { vsn: fastVsn, t, name: 'fast reader' })
    const fastCh = fast.channel(name)
    const got = onBroadcast(fastCh, 'flood', 'fast reader floods')
    const pub = newClient(hub, { vsn: '2.0.0', t, name: 'publisher' })
    // ack: true paces the publisher by the hub's replies, so the fast reader is never flooded
    // faster than it reads; only the paused reader falls behind.
    const pubCh = pub.channel(name, { config: { broadcast: { ack: true, self: false } } })
    await Promise.all([subscribe(fastCh), subscribe(pubCh)])

    slow.ws._socket.pause() // stop reading: the kernel buffers fill, then the hub's outbox
    const N = 1200
    const pad = 'p'.repeat(16 * 1024) // ~19 MB in total, far more than the socket buffers hold
    for (let i = 0; i < N; i++) {
      const s = await pubCh.send({ type: 'broadcast', event: 'flood', payload: { i, pad } }, { timeout: 5000 })
      assert.equal(s, 'ok', `publisher send ${i}`)
    }
    const all = await got.waitForCount(() => true, N, `all ${N} messages at the fast reader`, 20_000)
    assert.deepEqual(all.map((m) => m.payload.i).slice(0, 5), [0, 1, 2, 3, 4])
    assert.equal(all.at(-1).payload.i, N - 1)
    assert.equal(fast.spy.events.filter((e) => e.type === 'close').length, 0, 'the fast reader was not disconnected')

    // Let the slow reader drain what was buffered; it must then find its connection closed.
    slow.ws._socket.resume()
    const info = await slow.waitClosed('the paused reader to be closed by the hub', 15_000)
    const slowGot = slow.frames.filter((f) => f.event === 'broadcast').length
    t.diagnostic(`slow reader got ${slowGot}/${N} messages, then close ${info.code} ${JSON.stringify(info.reason)}`)
    assert.ok(slowGot < N, `the slow reader received ${slowGot}/${N}: the hub buffered without bound`)

    // Everyone else is unaffected afterwards.
    assert.equal(await pubCh.send({ type: 'broadcast', event: 'flood', payload: { i: N } }), 'ok')
    await got.waitFor((m) => m.payload.i === N, 'a message after the slow reader was dropped')
  })
}
