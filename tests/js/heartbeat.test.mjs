// Heartbeats and the idle timeout (hub started with --idle-timeout 2s).

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import { VERSIONS, newClient, subscribe, onBroadcast } from './helpers/client.mjs'
import { RawSocket } from './helpers/raw.mjs'
import { EventLog, uniqueName, pace } from './helpers/wait.mjs'

const IDLE_MS = 2000

let hub
before(async () => {
  hub = await startHub({ args: ['--idle-timeout', '2s'] })
})
after(async () => {
  await hub?.stop()
})

describe('heartbeats', { concurrency: true }, () => {
  for (const vsn of VERSIONS) {
    test(`vsn ${vsn}: a client heartbeating every 500 ms stays connected well past the idle timeout`, async (t) => {
      const beats = new EventLog('heartbeat callbacks')
      const c = newClient(hub, {
        vsn,
        t,
        heartbeatIntervalMs: 500,
        heartbeatCallback: (status, latency) => beats.push({ status, latency, t: Date.now() }),
      })
      const topic = uniqueName('hb')
      const ch = c.channel(topic)
      const got = onBroadcast(ch)
      await subscribe(ch)
      const start = Date.now()
      // 7 answered heartbeats take ~3.5 s, i.e. longer than the 2 s idle timeout.
      await beats.waitForCount((b) => b.status === 'ok', 7, '7 answered heartbeats', 8000)
      assert.ok(Date.now() - start > IDLE_MS, 'the test outlasted the idle timeout')
      assert.deepEqual(beats.filter((b) => b.status !== 'ok' && b.status !== 'sent'), [], 'no timeout/error')
      assert.equal(c.spy.sockets.length, 1, 'never reconnected')
      assert.equal(c.spy.events.filter((e) => e.type === 'close').length, 0, 'socket never closed')
      for (const b of beats.filter((b) => b.status === 'ok')) assert.equal(typeof b.latency, 'number')
      // Still usable.
      const p = newClient(hub, { vsn, t, name: 'publisher' })
      const pub = p.channel(topic)
      await subscribe(pub)
      await pub.send({ type: 'broadcast', event: 'alive', payload: {} })
      await got.waitFor((m) => m.event === 'alive', 'broadcast after many heartbeats')
    })

    test(`vsn ${vsn}: heartbeat reply shape`, async (t) => {
      const raw = await RawSocket.open(hub, { vsn })
      t.after(() => raw.close())
      const ref = raw.send({ topic: 'phoenix', event: 'heartbeat', payload: {} })
      const reply = await raw.waitReply(ref)
      assert.equal(reply.form, vsn === '1.0.0' ? 'v1' : 'v2')
      assert.equal(reply.topic, 'phoenix')
      assert.equal(reply.event, 'phx_reply')
      assert.equal(reply.ref, ref)
      assert.deepEqual(reply.payload, { status: 'ok', response: {} })
      if (vsn === '2.0.0') {
        assert.equal(reply.join_ref, null)
        assert.equal(reply.arity, 5)
      }
    })

    test(`vsn ${vsn}: a raw connection that sends nothing is closed after --idle-timeout`, async (t) => {
      // autoPong: false so that not even a pong goes back to the hub.
      const raw = await RawSocket.open(hub, { vsn, wsOptions: { autoPong: false } })
      t.after(() => raw.close())
      const opened = Date.now()
      const info = await raw.waitClosed('idle connection closed by the hub', IDLE_MS + 4000)
      const elapsed = info.t - opened
      assert.ok(elapsed >= IDLE_MS - 300, `closed too early: after ${elapsed} ms`)
    })

    test(`vsn ${vsn}: a joined raw connection that goes silent is closed too`, async (t) => {
      const raw = await RawSocket.open(hub, { vsn, wsOptions: { autoPong: false } })
      t.after(() => raw.close())
      await raw.join(`realtime:${uniqueName('silent')}`)
      const lastSent = Date.now()
      const info = await raw.waitClosed('silent joined connection closed', IDLE_MS + 4000)
      assert.ok(info.t - lastSent >= IDLE_MS - 300, `closed too early: ${info.t - lastSent} ms after the last frame`)
    })

    test(`vsn ${vsn}: a raw connection that keeps sending heartbeats is not closed`, async (t) => {
      const raw = await RawSocket.open(hub, { vsn, wsOptions: { autoPong: false } })
      t.after(() => raw.close())
      const start = Date.now()
      // Heartbeat every 400 ms for ~3.2 s (8 heartbeats), each answered.
      for (let i = 0; i < 8; i++) {
        const reply = await raw.heartbeat()
        assert.equal(reply.payload.status, 'ok')
        await pace(400) // pacing the heartbeats, not waiting for an outcome
      }
      assert.ok(Date.now() - start > IDLE_MS + 1000)
      assert.equal(raw.isOpen, true, `closed: ${JSON.stringify(raw.closeInfo)}`)
    })
  }
})
