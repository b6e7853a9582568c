// The hub process: configuration through flags and HUB_* environment variables, and SIGTERM.
// Each test starts its own hub.

import { describe, test } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import {
  newClient,
  subscribe,
  subscribeStatus,
  onBroadcast,
  onSystem,
  closeClient,
} from './helpers/client.mjs'
import { RawSocket } from './helpers/raw.mjs'
import { uniqueName } from './helpers/wait.mjs'

async function withHub(t, opts) {
  const hub = await startHub(opts)
  t.after(() => hub.stop().catch(() => {}))
  return hub
}

describe('configuration', { concurrency: true }, () => {
  test('HUB_ADDR is used when --addr is not given', async (t) => {
    const hub = await withHub(t, { addr: false, env: { HUB_ADDR: '127.0.0.1:0' } })
    assert.ok(hub.port > 0 && hub.port !== 4000, `port ${hub.port}`)
    const c = newClient(hub, { t })
    await subscribe(c.channel(uniqueName('addr')))
  })

  for (const [how, opts] of [
    ['--max-channels 2', { args: ['--max-channels', '2'] }],
    ['HUB_MAX_CHANNELS=2', { env: { HUB_MAX_CHANNELS: '2' } }],
  ]) {
    test(`${how} limits channels per connection`, async (t) => {
      const hub = await withHub(t, opts)
      const c = newClient(hub, { t })
      const base = uniqueName('limit')
      await subscribe(c.channel(`${base}-1`))
      await subscribe(c.channel(`${base}-2`))
      const third = c.channel(`${base}-3`)
      const st = await subscribeStatus(third)
      assert.equal(st.status, 'CHANNEL_ERROR')
      assert.equal(st.message, 'ChannelRateLimitReached: Too many channels')
      await c.removeChannel(third)
      // The limit is per connection: another connection can still join.
      const other = newClient(hub, { t })
      await subscribe(other.channel(`${base}-1`))
    })
  }

  test('re-joining a topic does not count twice against --max-channels', async (t) => {
    const hub = await withHub(t, { args: ['--max-channels', '2'] })
    const raw = await RawSocket.open(hub)
    t.after(() => raw.close())
    const a = `realtime:${uniqueName('rejoin-a')}`
    await raw.join(a)
    await raw.join(a)
    await raw.join(a)
    await raw.join(`realtime:${uniqueName('rejoin-b')}`)
    const { reply } = await raw.join(`realtime:${uniqueName('rejoin-c')}`, {}, { expect: 'error' })
    assert.equal(reply.payload.response.reason, 'ChannelRateLimitReached: Too many channels')
  })

  for (const [how, opts] of [
    ['--join-error-delay 1s', { args: ['--join-error-delay', '1s'] }],
    ['HUB_JOIN_ERROR_DELAY=1s', { env: { HUB_JOIN_ERROR_DELAY: '1s' }, fastJoinErrors: false }],
  ]) {
    test(`${how} delays join error replies`, async (t) => {
      const hub = await withHub(t, opts)
      const raw = await RawSocket.open(hub)
      t.after(() => raw.close())
      const okStart = Date.now()
      await raw.join(`realtime:${uniqueName('fine')}`)
      assert.ok(Date.now() - okStart < 900, 'successful joins are not delayed')
      const start = Date.now()
      const { reply } = await raw.join('realtime:', {}, { expect: 'error', timeoutMs: 5000 })
      const elapsed = Date.now() - start
      assert.equal(reply.payload.response.reason, 'TopicNameRequired: You must provide a topic name')
      assert.ok(elapsed >= 900, `error reply after ${elapsed} ms, expected about 1000`)
      assert.ok(elapsed < 4000, `error reply after ${elapsed} ms`)
    })
  }

  test('--join-error-delay 0s answers join errors at once', async (t) => {
    const hub = await withHub(t, { args: ['--join-error-delay', '0s'] })
    const raw = await RawSocket.open(hub)
    t.after(() => raw.close())
    const start = Date.now()
    await raw.join('realtime:', {}, { expect: 'error' })
    assert.ok(Date.now() - start < 500)
  })

  test('HUB_IDLE_TIMEOUT=1s closes silent connections after about a second', async (t) => {
    const hub = await withHub(t, { env: { HUB_IDLE_TIMEOUT: '1s' } })
    const raw = await RawSocket.open(hub, { wsOptions: { autoPong: false } })
    t.after(() => raw.close())
    const start = Date.now()
    const info = await raw.waitClosed('idle close', 5000)
    assert.ok(info.t - start >= 700, `closed after ${info.t - start} ms`)
  })

  test('HUB_MAX_FRAME_BYTES=4096 refuses an 8 KiB frame but the hub keeps serving', async (t) => {
    const hub = await withHub(t, { env: { HUB_MAX_FRAME_BYTES: '4096' } })
    const raw = await RawSocket.open(hub)
    t.after(() => raw.close())
    const topic = `realtime:${uniqueName('frame')}`
    const { join_ref } = await raw.join(topic, { broadcast: { ack: true, self: false } })
    const small = raw.send({ join_ref, topic, event: 'broadcast', payload: { type: 'broadcast', event: 'e', payload: { s: 'x'.repeat(1000) } } })
    assert.equal((await raw.waitReply(small)).payload.status, 'ok')
    const big = raw.send({ join_ref, topic, event: 'broadcast', payload: { type: 'broadcast', event: 'e', payload: { s: 'x'.repeat(8192) } } })
    const outcome = await Promise.race([
      raw.waitReply(big, 'reply to the oversized frame', 3000).then((f) => ({ kind: 'reply', status: f.payload.status })),
      raw.waitClosed('close after the oversized frame', 3000).then((i) => ({ kind: 'close', code: i.code })),
    ])
    assert.ok(
      (outcome.kind === 'reply' && outcome.status === 'error') || (outcome.kind === 'close' && outcome.code !== 1006),
      `expected an error reply or a clean close, got ${JSON.stringify(outcome)}`
    )
    const c = newClient(hub, { t })
    await subscribe(c.channel(uniqueName('after')))
  })

  test('HUB_HISTORY_SIZE=2 keeps two messages per topic', async (t) => {
    const hub = await withHub(t, { env: { HUB_HISTORY_SIZE: '2' } })
    const name = uniqueName('hist')
    const p = newClient(hub, { t, name: 'publisher' })
    const pub = p.channel(name, { config: { broadcast: { ack: true, self: true } } })
    const own = onBroadcast(pub)
    await subscribe(pub)
    for (let i = 0; i < 4; i++) assert.equal(await pub.send({ type: 'broadcast', event: 'h', payload: { i } }), 'ok')
    await own.waitForCount(() => true, 4, 'own copies with cursors')
    // Resuming after message 1 needs 2 and 3: both retained.
    const c1 = newClient(hub, { t, name: 'resumer-ok' })
    const ch1 = c1.channel(name, { config: { broadcast: { resume: { since: own.items[1].meta.cursor } } } })
    const got1 = onBroadcast(ch1)
    const sys1 = onSystem(ch1)
    await subscribe(ch1)
    await got1.waitForCount(() => true, 2, 'messages 2 and 3')
    assert.deepEqual(got1.items.map((m) => m.payload.i), [2, 3])
    assert.equal(sys1.filter((s) => s.status === 'error').length, 0)
    // Resuming after message 0 needs 1, which is gone.
    const c2 = newClient(hub, { t, name: 'resumer-lost' })
    const ch2 = c2.channel(name, { config: { broadcast: { resume: { since: own.items[0].meta.cursor } } } })
    const sys2 = onSystem(ch2)
    await subscribe(ch2)
    await sys2.waitFor((s) => s.status === 'error', 'system error: history not recovered')
  })
})

describe('SIGTERM', () => {
  test('closes every connection and exits 0 within the drain timeout', async (t) => {
    const hub = await withHub(t, { args: ['--drain-timeout', '2s'] })
    const topic = uniqueName('drain')
    const clients = []
    for (const vsn of ['1.0.0', '2.0.0']) {
      const c = newClient(hub, { vsn, t, name: `member ${vsn}`, reconnectAfterMs: () => 60_000 })
      await subscribe(c.channel(topic))
      clients.push(c)
    }
    const raw = await RawSocket.open(hub)
    t.after(() => raw.close())
    await raw.join(`realtime:${topic}`)

    const start = Date.now()
    const code = await hub.stop({ timeoutMs: 6000 })
    const elapsed = Date.now() - start
    assert.equal(code, 0, `exit code ${code}; stderr:\n${hub.stderr()}`)
    assert.ok(elapsed < 3000, `exited after ${elapsed} ms (drain timeout 2 s)`)

    const info = await raw.waitClosed('raw connection closed by the shutdown', 2000)
    assert.notEqual(info.code, 1006, 'closed with a close frame')
    for (const c of clients) {
      const closeEv = await c.spy.events.waitFor((e) => e.type === 'close', `${c.label} socket closed`, 2000)
      assert.notEqual(closeEv.code, 1006, `${c.label}: closed with a close frame`)
      await closeClient(c)
    }
  })

  test('a client that never answers the close handshake does not hold the exit past the drain timeout', async (t) => {
    const hub = await withHub(t, { env: { HUB_DRAIN_TIMEOUT: '1s' } })
    const raw = await RawSocket.open(hub, { wsOptions: { autoPong: false } })
    t.after(() => raw.close())
    await raw.join(`realtime:${uniqueName('stuck')}`)
    raw.ws._socket.pause() // never reads the hub's close frame, never answers it
    const start = Date.now()
    const code = await hub.stop({ timeoutMs: 6000 })
    const elapsed = Date.now() - start
    assert.equal(code, 0, `exit code ${code}; stderr:\n${hub.stderr()}`)
    assert.ok(elapsed < 2500, `exited after ${elapsed} ms (HUB_DRAIN_TIMEOUT=1s)`)
  })

  // SIGTERM is sent right after the readiness line, as a supervisor may do: the hub must already
  // be handling the signal by the time it announces that it listens.
  test('an idle hub exits 0 promptly, even when SIGTERM follows the listening line at once', async (t) => {
    for (let i = 0; i < 3; i++) {
      const hub = await withHub(t, {})
      const start = Date.now()
      const code = await hub.stop()
      const info = await hub.exited
      assert.equal(code, 0, `attempt ${i}: hub ended with ${JSON.stringify(info)}; stderr:\n${hub.stderr()}`)
      assert.ok(Date.now() - start < 2000)
    }
  })
})
