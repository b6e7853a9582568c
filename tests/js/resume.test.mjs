// Message history: resume from a cursor (config.broadcast.resume), history limits, epochs,
// resuming across a lost socket with the unmodified client, and Supabase-style replay.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub } from './helpers/hub.mjs'
import {
  VERSIONS,
  newClient,
  subscribe,
  onBroadcast,
  onSystem,
  rawConn,
  statusLog,
  ping,
  connected,
} from './helpers/client.mjs'
import { parseCursor } from './helpers/wire.mjs'
import { EventLog, uniqueName, pace } from './helpers/wait.mjs'

const range = (n, from = 0) => Array.from({ length: n }, (_, i) => from + i)

/** A publisher (ack: true, so sends are sequenced) plus an observer that records cursors. */
async function setup(t, hub, vsn, topic, { privateTopic = false } = {}) {
  const pubC = newClient(hub, { vsn, t, name: 'publisher' })
  const pub = pubC.channel(topic, { config: { private: privateTopic, broadcast: { ack: true, self: false } } })
  const obsC = newClient(hub, { vsn, t, name: 'observer' })
  const obs = obsC.channel(topic, { config: { private: privateTopic } })
  const seen = onBroadcast(obs, '*', 'observer broadcasts')
  await Promise.all([subscribe(pub), subscribe(obs)])
  const publish = async (from, n, event = 'm') => {
    for (let i = from; i < from + n; i++) {
      assert.equal(await pub.send({ type: 'broadcast', event, payload: { i } }, { timeout: 3000 }), 'ok')
    }
    // The observer has them all once it saw the last one (its cursor is needed by tests).
    await seen.waitFor((m) => m.payload.i === from + n - 1, `observer sees message ${from + n - 1}`)
  }
  const cursorOf = (i) => seen.find((m) => m.payload.i === i)?.meta?.cursor
  return { pub, seen, publish, cursorOf }
}

/** Joins a fresh client with `broadcast` config; returns its channel, broadcast log and system log. */
async function joiner(t, hub, vsn, topic, broadcast, { privateTopic = false, name = 'resumer' } = {}) {
  const c = newClient(hub, { vsn, t, name })
  const ch = c.channel(topic, { config: { private: privateTopic, broadcast } })
  const got = onBroadcast(ch, '*', `${name} broadcasts`)
  const sys = onSystem(ch, `${name} system messages`)
  await subscribe(ch)
  return { c, ch, got, sys }
}

function assertConsecutive(msgs, what) {
  const cs = msgs.map((m) => parseCursor(m.meta?.cursor))
  cs.forEach((c, i) => assert.ok(c, `${what}: message ${i} has a cursor (${JSON.stringify(msgs[i].meta)})`))
  for (let i = 1; i < cs.length; i++) {
    assert.equal(cs[i].epoch, cs[0].epoch, `${what}: one epoch`)
    assert.equal(cs[i].offset, cs[i - 1].offset + 1, `${what}: cursor offsets consecutive at ${i}`)
  }
}

describe('resume with the default history size', () => {
  let hub
  before(async () => {
    hub = await startHub()
  })
  after(async () => {
    await hub?.stop()
  })

  for (const vsn of VERSIONS) {
    describe(`vsn ${vsn}`, () => {
      test('resume.since "0" replays the retained history in order, then live messages, no gap or duplicate', async (t) => {
        const topic = uniqueName('resume-zero')
        const { publish, seen } = await setup(t, hub, vsn, topic)
        await publish(0, 5)
        const r = await joiner(t, hub, vsn, topic, { self: false, ack: false, resume: { since: '0' } })
        await r.got.waitForCount(() => true, 5, 'five replayed messages')
        await publish(5, 2)
        const all = await r.got.waitForCount(() => true, 7, 'replay + live')
        await ping(r.c)
        assert.deepEqual(r.got.items.map((m) => m.payload.i), range(7), 'exactly once, in order')
        assertConsecutive(all, 'resumer')
        assert.deepEqual(
          all.map((m) => m.meta.cursor),
          seen.items.map((m) => m.meta.cursor),
          'replayed messages carry their original cursors'
        )
        assert.equal(r.sys.filter((s) => s.status === 'error').length, 0, 'no error for a full recovery')
      })

      test('resume.since <cursor> replays only the messages after it', async (t) => {
        const topic = uniqueName('resume-cursor')
        const { publish, cursorOf } = await setup(t, hub, vsn, topic)
        await publish(0, 5)
        const r = await joiner(t, hub, vsn, topic, { resume: { since: cursorOf(1) } })
        await r.got.waitForCount(() => true, 3, 'messages 2..4 replayed')
        await publish(5, 1)
        await r.got.waitFor((m) => m.payload.i === 5, 'live message 5')
        await ping(r.c)
        assert.deepEqual(r.got.items.map((m) => m.payload.i), [2, 3, 4, 5])
        assertConsecutive(r.got.items, 'resumer')
      })

      test('resume.since the newest cursor replays nothing', async (t) => {
        const topic = uniqueName('resume-latest')
        const { publish, cursorOf } = await setup(t, hub, vsn, topic)
        await publish(0, 3)
        const r = await joiner(t, hub, vsn, topic, { resume: { since: cursorOf(2) } })
        await publish(3, 1)
        await r.got.waitFor((m) => m.payload.i === 3, 'live message 3')
        assert.deepEqual(r.got.items.map((m) => m.payload.i), [3])
        assert.equal(r.sys.filter((s) => s.status === 'error').length, 0)
      })

      test('resume.limit caps the number of replayed messages', async (t) => {
        const topic = uniqueName('resume-limit')
        const { publish } = await setup(t, hub, vsn, topic)
        await publish(0, 6)
        const r = await joiner(t, hub, vsn, topic, { resume: { since: '0', limit: 2 } })
        // The catch-up runs after the join reply; wait for it, so "the newest 2" is of 0..5.
        await r.got.waitFor((m) => m.payload.i === 5, 'replayed message 5')
        await publish(6, 1)
        await r.got.waitFor((m) => m.payload.i === 6, 'live message 6')
        const replayed = r.got.items.filter((m) => m.payload.i < 6)
        assert.equal(replayed.length, 2, `exactly 2 replayed, got ${JSON.stringify(replayed.map((m) => m.payload.i))}`)
        t.diagnostic(`limit 2 over history 0..5 replayed ${JSON.stringify(replayed.map((m) => m.payload.i))}`)
        assertConsecutive(replayed, 'replayed')
        assert.equal(r.got.items.at(-1).payload.i, 6, 'live message after the replay')
        assert.equal(new Set(r.got.items.map((m) => m.payload.i)).size, r.got.length, 'no duplicates')
      })

      test('resume.since with another epoch → system error, channel stays usable', async (t) => {
        const topic = uniqueName('resume-epoch')
        const { publish, cursorOf } = await setup(t, hub, vsn, topic)
        await publish(0, 2)
        const { epoch } = parseCursor(cursorOf(0))
        const otherEpoch = /^\d+$/.test(epoch) ? String(BigInt(epoch) + 1n) : `${epoch}x`
        const r = await joiner(t, hub, vsn, topic, { resume: { since: `${otherEpoch}:1` } })
        const err = await r.sys.waitFor((s) => s.status === 'error', 'system error: history not recovered')
        assert.equal(typeof err.message, 'string')
        assert.ok(err.message.length > 0)
        await publish(2, 1)
        await r.got.waitFor((m) => m.payload.i === 2, 'live message after the error')
        assert.equal(statusLog(r.ch).filter((s) => s.status === 'CLOSED').length, 0, 'channel not closed')
      })

      test('joins with resume.since "0" during a burst: replay and live hand over without gap or duplicate', async (t) => {
        const topic = uniqueName('resume-race')
        const pubC = newClient(hub, { vsn, t, name: 'publisher' })
        const pub = pubC.channel(topic, { config: { broadcast: { self: true } } })
        const own = onBroadcast(pub, '*', 'publisher self copies')
        await subscribe(pub)
        const N = 400
        const JOINERS = 8
        // Joiners connect first, so their phx_join goes out the moment subscribe() is called.
        const joiners = []
        for (let k = 0; k < JOINERS; k++) {
          const c = newClient(hub, { vsn, t, name: `joiner-${k}` })
          await connected(c)
          const ch = c.channel(topic, { config: { broadcast: { resume: { since: '0' } } } })
          joiners.push({ c, ch, got: onBroadcast(ch, '*', `joiner-${k} broadcasts`) })
        }
        // Fire-and-forget burst, paced in slices of 10; joiner k subscribes in the middle of it.
        for (let i = 0; i < N; i++) {
          pub.send({ type: 'broadcast', event: 'burst', payload: { i } })
          const k = Math.floor(i / (N / JOINERS))
          if (i % (N / JOINERS) === N / JOINERS / 2) joiners[k].subscribed = subscribe(joiners[k].ch)
          if (i % 10 === 9) await pace(1) // pacing the burst so joins interleave with it
        }
        await own.waitForCount(() => true, N, 'publisher sees its whole burst')
        for (const [k, j] of joiners.entries()) {
          await j.subscribed
          const all = await j.got.waitForCount(() => true, N, `joiner ${k} has all ${N}`)
          assert.deepEqual(all.map((m) => m.payload.i), range(N), `joiner ${k}: complete, ordered, no duplicates`)
        }
        await ping(pubC)
        for (const [k, j] of joiners.entries()) assert.equal(j.got.length, N, `joiner ${k}: nothing extra`)
      })

      test('an app that keeps resume.since updated gets every message exactly once across a lost socket', async (t) => {
        const topic = uniqueName('resume-app')
        const pubC = newClient(hub, { vsn, t, name: 'publisher' })
        const pub = pubC.channel(topic, { config: { broadcast: { ack: true, self: false } } })
        await subscribe(pub)

        // The subscriber reconnects 300 ms after losing its socket (so messages are missed).
        const sub = newClient(hub, { vsn, t, name: 'subscriber', reconnectAfterMs: () => 300 })
        const ch = sub.channel(topic, { config: { broadcast: { self: false, ack: false, resume: { since: '0' } } } })
        const got = new EventLog('subscriber messages')
        ch.on('broadcast', { event: 'seq' }, (m) => {
          // What the app does: remember the newest cursor. realtime-js sends the same `broadcast`
          // object (by reference) in every phx_join, so a rejoin carries the updated cursor.
          ch.params.config.broadcast.resume.since = m.meta.cursor
          got.push({ i: m.payload.i, cursor: m.meta.cursor, socket: sub.spy.sockets.length - 1 })
        })
        await subscribe(ch)

        let sent = 0
        let stop = false
        let failure = null
        t.after(() => {
          stop = true
        })
        const publishing = (async () => {
          while (!stop) {
            const s = await pub.send({ type: 'broadcast', event: 'seq', payload: { i: sent } }, { timeout: 3000 })
            if (s !== 'ok') {
              failure = new Error(`publisher send ${sent} → ${s}`)
              return
            }
            sent += 1
            await pace(3) // pacing the publisher, not waiting for an outcome
          }
        })()

        await got.waitForCount(() => true, 30, 'first 30 live messages')
        const lastBeforeLoss = got.items.at(-1)
        const sentAtLoss = sent
        rawConn(sub).terminate() // abrupt network loss
        await statusLog(ch).waitForCount((s) => s.status === 'SUBSCRIBED', 2, 'rejoin after reconnect', 10_000)
        const sentAtRejoin = sent
        await got.waitFor((m) => m.i >= sentAtRejoin + 30, '30 live messages after the rejoin', 10_000)
        stop = true
        await publishing
        if (failure) throw failure
        const total = sent
        await got.waitForCount(() => true, total, `all ${total} messages`, 10_000)
        await ping(sub)

        const rejoin = sub.spy.frames.filter((f) => f.dir === 'out' && f.event === 'phx_join').at(-1)
        assert.equal(rejoin.payload.config.broadcast.resume.since, lastBeforeLoss.cursor, 'rejoin carried the app cursor')
        assert.ok(sentAtRejoin > sentAtLoss, 'messages were published while the subscriber was away')
        assert.deepEqual(got.items.map((m) => m.i), range(total), 'every message exactly once, in order')
        assertConsecutive(got.items.map((m) => ({ meta: { cursor: m.cursor } })), 'subscriber')
        assert.ok(got.items.some((m) => m.socket === 1 && m.i <= sentAtRejoin), 'some messages came from the resume replay')
      })
    })
  }
})

describe('resume with --history-size 5', () => {
  let hub
  before(async () => {
    hub = await startHub({ args: ['--history-size', '5'] })
  })
  after(async () => {
    await hub?.stop()
  })

  for (const vsn of VERSIONS) {
    describe(`vsn ${vsn}`, () => {
      test('a cursor older than the retained history → system error "not recovered", live messages continue', async (t) => {
        const topic = uniqueName('ring-old')
        const { publish, cursorOf } = await setup(t, hub, vsn, topic)
        await publish(0, 8) // ring keeps 3..7
        const r = await joiner(t, hub, vsn, topic, { resume: { since: cursorOf(0) } }) // needs 1.., lost
        const err = await r.sys.waitFor((s) => s.status === 'error', 'system error for a lost history')
        assert.equal(typeof err.message, 'string')
        await publish(8, 1)
        await r.got.waitFor((m) => m.payload.i === 8, 'live message after the error')
        assert.equal(statusLog(r.ch).filter((s) => s.status === 'CLOSED').length, 0, 'channel not closed')
        const ids = r.got.items.map((m) => m.payload.i)
        assert.equal(new Set(ids).size, ids.length, 'no duplicates')
        assert.deepEqual(ids, [...ids].sort((a, b) => a - b), 'in order')
      })

      test('a cursor exactly at the start of the ring is fully recovered (no error)', async (t) => {
        const topic = uniqueName('ring-edge')
        const { publish, cursorOf } = await setup(t, hub, vsn, topic)
        await publish(0, 8) // ring keeps 3..7
        const r = await joiner(t, hub, vsn, topic, { resume: { since: cursorOf(2) } }) // needs 3..7
        await r.got.waitForCount(() => true, 5, 'messages 3..7 replayed')
        await publish(8, 1)
        await r.got.waitFor((m) => m.payload.i === 8, 'live message 8')
        assert.deepEqual(r.got.items.map((m) => m.payload.i), [3, 4, 5, 6, 7, 8])
        assert.equal(r.sys.filter((s) => s.status === 'error').length, 0, 'no error')
      })
    })
  }
})

describe('Supabase replay on private channels', () => {
  let hub
  before(async () => {
    hub = await startHub()
  })
  after(async () => {
    await hub?.stop()
  })

  for (const vsn of VERSIONS) {
    describe(`vsn ${vsn}`, () => {
      test('broadcast.replay {since, limit} replays stored messages with meta.replayed = true', async (t) => {
        const topic = uniqueName('replay')
        const since = Date.now() - 1000
        const { publish } = await setup(t, hub, vsn, topic, { privateTopic: true })
        await publish(0, 3)
        const r = await joiner(t, hub, vsn, topic, { replay: { since, limit: 10 } }, { privateTopic: true })
        const replayed = await r.got.waitForCount(() => true, 3, 'three replayed messages')
        assert.deepEqual(replayed.map((m) => m.payload.i), [0, 1, 2])
        for (const m of replayed) assert.equal(m.meta?.replayed, true, `meta was ${JSON.stringify(m.meta)}`)
        await publish(3, 1)
        const live = await r.got.waitFor((m) => m.payload.i === 3, 'live message')
        assert.notEqual(live.meta?.replayed, true, 'live messages are not marked replayed')
      })

      test('broadcast.replay limit caps the replay', async (t) => {
        const topic = uniqueName('replay-limit')
        const since = Date.now() - 1000
        const { publish } = await setup(t, hub, vsn, topic, { privateTopic: true })
        await publish(0, 4)
        const r = await joiner(t, hub, vsn, topic, { replay: { since, limit: 2 } }, { privateTopic: true })
        await publish(4, 1)
        await r.got.waitFor((m) => m.payload.i === 4, 'live message')
        const replayed = r.got.filter((m) => m.meta?.replayed === true)
        assert.equal(replayed.length, 2, `replayed: ${JSON.stringify(replayed.map((m) => m.payload.i))}`)
      })

      test('broadcast.replay with since in the future replays nothing', async (t) => {
        const topic = uniqueName('replay-future')
        const { publish } = await setup(t, hub, vsn, topic, { privateTopic: true })
        await publish(0, 2)
        const r = await joiner(t, hub, vsn, topic, { replay: { since: Date.now() + 3_600_000, limit: 10 } }, { privateTopic: true })
        await publish(2, 1)
        await r.got.waitFor((m) => m.payload.i === 2, 'live message')
        assert.deepEqual(r.got.items.map((m) => m.payload.i), [2])
      })

      test('replay is not applied to the public topic of the same name', async (t) => {
        const topic = uniqueName('replay-side')
        const since = Date.now() - 1000
        const pubSide = await setup(t, hub, vsn, topic, { privateTopic: false })
        await pubSide.publish(0, 2)
        const r = await joiner(t, hub, vsn, topic, { replay: { since, limit: 10 } }, { privateTopic: true })
        const privSide = await setup(t, hub, vsn, topic, { privateTopic: true })
        await privSide.publish(100, 1)
        await r.got.waitFor((m) => m.payload.i === 100, 'live private message')
        assert.deepEqual(r.got.items.map((m) => m.payload.i), [100], 'public history must not be replayed')
      })
    })
  }
})
