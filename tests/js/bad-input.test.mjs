// Malformed input from raw sockets (the real client cannot produce it). Each case must get a clear
// error reply or a clean close (a close frame, i.e. not 1006), and the hub must keep serving others.
// The hub runs with --max-frame-bytes 65536.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import { VERSIONS, newClient, subscribe, onBroadcast, closeClient } from './helpers/client.mjs'
import { RawSocket } from './helpers/raw.mjs'
import { withTimeout, uniqueName } from './helpers/wait.mjs'

const MAX_FRAME = 65536

let hub
let probe
before(async () => {
  hub = await startHub({ args: ['--max-frame-bytes', String(MAX_FRAME)] })
  // A realtime-js pair that must keep working after every bad input.
  const topic = uniqueName('health')
  const a = newClient(hub, { vsn: '2.0.0', name: 'health-sender' })
  const b = newClient(hub, { vsn: '1.0.0', name: 'health-receiver' })
  const chA = a.channel(topic)
  const chB = b.channel(topic)
  const got = onBroadcast(chB, '*', 'health receiver')
  await subscribe(chA)
  await subscribe(chB)
  let n = 0
  probe = {
    clients: [a, b],
    async check(what) {
      n += 1
      const mine = n
      await chA.send({ type: 'broadcast', event: 'health', payload: { n: mine } })
      await got.waitFor((m) => m.payload.n === mine, `hub still delivers broadcasts after ${what}`)
    },
  }
})
after(async () => {
  for (const c of probe?.clients ?? []) await closeClient(c)
  await hub?.stop()
})

/**
 * Resolves with {kind: 'reply', frame} for an error reply (matching `ref` if given) or
 * {kind: 'close', code} for a close with a close frame. Fails on an abnormal close (1006) or if
 * neither happens within 3 s.
 */
async function errorReplyOrCleanClose(t, raw, { ref, what }) {
  const isError = (f) =>
    (f.event === 'phx_reply' && f.payload?.status === 'error' && (ref === undefined || f.ref === ref)) ||
    (f.event === 'phx_error' && (ref === undefined || f.ref === ref)) ||
    (f.event === 'system' && f.payload?.status === 'error')
  const reply = raw.frames.waitFor(isError, `error reply to ${what}`, 3000).then((frame) => ({ kind: 'reply', frame }))
  const closed = raw.closed.then((info) => ({ kind: 'close', ...info }))
  const outcome = await withTimeout(Promise.race([reply, closed]), 3000, `error reply or clean close after ${what}`).catch(
    (e) => {
      throw new Error(`${e.message}\n    frames: ${raw.frames.describe()}\n    socket open: ${raw.isOpen}`)
    }
  )
  reply.catch(() => {})
  t.diagnostic(
    outcome.kind === 'close'
      ? `${what}: hub closed the connection with ${outcome.code} ${JSON.stringify(outcome.reason)}`
      : `${what}: hub replied ${outcome.frame.text ?? JSON.stringify(outcome.frame.payload)}`
  )
  if (outcome.kind === 'close') {
    assert.notEqual(outcome.code, 1006, `${what}: abnormal close (no close frame) — not a clean close`)
  }
  return outcome
}

for (const vsn of VERSIONS) {
  describe(`vsn ${vsn}: malformed frames`, () => {
    const cases = [
      ['invalid JSON', (raw) => raw.sendRaw('{"topic": "realtime:x", "event": ')],
      ['a JSON scalar', (raw) => raw.sendRaw('42')],
      ['JSON null', (raw) => raw.sendRaw('null')],
      [
        vsn === '2.0.0' ? 'a V1 object on a V2 connection' : 'a V2 array on a V1 connection',
        (raw) =>
          raw.sendRaw(
            vsn === '2.0.0'
              ? JSON.stringify({ topic: 'phoenix', event: 'heartbeat', payload: {}, ref: '1' })
              : JSON.stringify([null, '1', 'phoenix', 'heartbeat', {}])
          ),
      ],
      ['an array of the wrong length', (raw) => raw.sendRaw(JSON.stringify(['1', '1', 'realtime:x', 'phx_join']))],
      ['wrong field types', (raw) => raw.sendRaw(vsn === '2.0.0' ? JSON.stringify([1, 2, 3, 4, 5]) : JSON.stringify({ topic: 1, event: 2, payload: 3, ref: 4 }))],
      ['a binary frame of an unknown kind', (raw) => raw.sendRaw(Buffer.from([9, 1, 2, 3]), { binary: true })],
      ['an empty binary frame', (raw) => raw.sendRaw(Buffer.alloc(0), { binary: true })],
    ]
    for (const [what, send] of cases) {
      test(`${what} → error reply or clean close; the hub keeps serving`, async (t) => {
        const raw = await RawSocket.open(hub, { vsn })
        t.after(() => raw.close())
        send(raw)
        await errorReplyOrCleanClose(t, raw, { what })
        await probe.check(what)
      })
    }

    test('an unknown event on a joined topic → error reply or clean close', async (t) => {
      const raw = await RawSocket.open(hub, { vsn })
      t.after(() => raw.close())
      const topic = `realtime:${uniqueName('unknown-ev')}`
      const { join_ref } = await raw.join(topic)
      const ref = raw.send({ join_ref, topic, event: 'no_such_event', payload: {} })
      await errorReplyOrCleanClose(t, raw, { ref, what: 'unknown event' })
      await probe.check('unknown event')
    })

    test('an unknown event on the phoenix topic → error reply or clean close', async (t) => {
      const raw = await RawSocket.open(hub, { vsn })
      t.after(() => raw.close())
      const ref = raw.send({ topic: 'phoenix', event: 'not_a_heartbeat', payload: {} })
      await errorReplyOrCleanClose(t, raw, { ref, what: 'unknown phoenix event' })
      await probe.check('unknown phoenix event')
    })

    test(`a text frame above --max-frame-bytes (${MAX_FRAME}) → error reply or clean close`, async (t) => {
      const raw = await RawSocket.open(hub, { vsn })
      t.after(() => raw.close())
      const topic = `realtime:${uniqueName('big')}`
      const { join_ref } = await raw.join(topic)
      const ref = raw.send({
        join_ref,
        topic,
        event: 'broadcast',
        payload: { type: 'broadcast', event: 'big', payload: { blob: 'x'.repeat(MAX_FRAME * 2) } },
      })
      await errorReplyOrCleanClose(t, raw, { ref, what: 'an oversized frame' })
      await probe.check('an oversized frame')
    })

    test('a frame just under --max-frame-bytes is accepted', async (t) => {
      const raw = await RawSocket.open(hub, { vsn })
      t.after(() => raw.close())
      const topic = `realtime:${uniqueName('fits')}`
      const { join_ref } = await raw.join(topic, { broadcast: { ack: true, self: false } })
      const ref = raw.send({
        join_ref,
        topic,
        event: 'broadcast',
        payload: { type: 'broadcast', event: 'fits', payload: { blob: 'x'.repeat(MAX_FRAME - 1024) } },
      })
      const reply = await raw.waitReply(ref, 'ack of a large-but-allowed broadcast')
      assert.equal(reply.payload.status, 'ok')
    })

    for (const [event, payload] of [
      ['broadcast', { type: 'broadcast', event: 'e', payload: {} }],
      ['presence', { type: 'presence', event: 'track', payload: { a: 1 } }],
      ['some_event', {}],
    ]) {
      test(`a ${event} push to an unjoined topic → {"status":"error","response":{"reason":"unmatched topic"}}`, async (t) => {
        const raw = await RawSocket.open(hub, { vsn })
        t.after(() => raw.close())
        const topic = `realtime:${uniqueName('unjoined')}`
        const ref = raw.send({ join_ref: '77', topic, event, payload })
        const reply = await raw.waitReply(ref, 'unmatched topic reply')
        assert.equal(reply.topic, topic)
        assert.deepEqual(reply.payload, { status: 'error', response: { reason: 'unmatched topic' } })
        assert.equal(raw.isOpen, true, 'the connection stays open')
        assert.equal((await raw.heartbeat()).payload.status, 'ok')
      })
    }
  })
}

describe('vsn 2.0.0: malformed binary broadcast pushes', () => {
  test('a truncated kind 3 frame → error reply or clean close; the hub keeps serving', async (t) => {
    const raw = await RawSocket.open(hub, { vsn: '2.0.0' })
    t.after(() => raw.close())
    const topic = `realtime:${uniqueName('trunc')}`
    await raw.join(topic)
    // Header announces a 40-byte topic and a 10-byte event but the frame ends early.
    raw.sendRaw(Buffer.from([3, 1, 1, 40, 10, 0, 1, 0x31, 0x32, 0x72, 0x65]), { binary: true })
    await errorReplyOrCleanClose(t, raw, { what: 'a truncated kind 3 frame' })
    await probe.check('a truncated kind 3 frame')
  })

  test('a kind 3 frame with only the kind byte → error reply or clean close', async (t) => {
    const raw = await RawSocket.open(hub, { vsn: '2.0.0' })
    t.after(() => raw.close())
    raw.sendRaw(Buffer.from([3]), { binary: true })
    await errorReplyOrCleanClose(t, raw, { what: 'a 1-byte kind 3 frame' })
    await probe.check('a 1-byte kind 3 frame')
  })

  test('a kind 3 frame with invalid JSON payload (encoding 1) → error reply or clean close', async (t) => {
    const raw = await RawSocket.open(hub, { vsn: '2.0.0' })
    t.after(() => raw.close())
    const topic = `realtime:${uniqueName('badjson3')}`
    const { join_ref } = await raw.join(topic, { broadcast: { ack: true, self: false } })
    const ref = raw.nextRef()
    const parts = [join_ref, ref, topic, 'ev', ''].map((s) => Buffer.from(s))
    const frame = Buffer.concat([Buffer.from([3, ...parts.map((p) => p.length), 1]), ...parts, Buffer.from('{"broken":')])
    raw.sendRaw(frame, { binary: true })
    await errorReplyOrCleanClose(t, raw, { ref, what: 'kind 3 with invalid JSON' })
    await probe.check('kind 3 with invalid JSON')
  })

  test('a kind 3 push to an unjoined topic → unmatched topic', async (t) => {
    const raw = await RawSocket.open(hub, { vsn: '2.0.0' })
    t.after(() => raw.close())
    const topic = `realtime:${uniqueName('unjoined3')}`
    const ref = raw.sendKind3({ join_ref: '5', topic, event: 'e', payload: { a: 1 } })
    const reply = await raw.waitReply(ref, 'unmatched topic reply to kind 3')
    assert.deepEqual(reply.payload, { status: 'error', response: { reason: 'unmatched topic' } })
    assert.equal(reply.binary, false, 'replies are JSON text')
  })

  test(`a binary frame above --max-frame-bytes → error reply or clean close`, async (t) => {
    const raw = await RawSocket.open(hub, { vsn: '2.0.0' })
    t.after(() => raw.close())
    const topic = `realtime:${uniqueName('bigbin')}`
    const { join_ref } = await raw.join(topic)
    const ref = raw.sendKind3({ join_ref, topic, event: 'e', payload: Buffer.alloc(MAX_FRAME * 2, 7) })
    await errorReplyOrCleanClose(t, raw, { ref, what: 'an oversized binary frame' })
    await probe.check('an oversized binary frame')
  })

  test('a JSON-text broadcast push on V2 is accepted (the documented text form)', async (t) => {
    const raw = await RawSocket.open(hub, { vsn: '2.0.0' })
    t.after(() => raw.close())
    const name = uniqueName('v2text')
    const topic = `realtime:${name}`
    const l = newClient(hub, { vsn: '2.0.0', t, name: 'listener' })
    const ch = l.channel(name)
    const got = onBroadcast(ch)
    await subscribe(ch)
    const { join_ref } = await raw.join(topic, { broadcast: { ack: true, self: false } })
    const ref = raw.send({ join_ref, topic, event: 'broadcast', payload: { type: 'broadcast', event: 'txt', payload: { t: 1 } } })
    assert.equal((await raw.waitReply(ref)).payload.status, 'ok')
    const m = await got.waitFor((x) => x.event === 'txt', 'text-form broadcast at the listener')
    assert.deepEqual(m.payload, { t: 1 })
  })
})
