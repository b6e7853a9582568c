// Chat streams (`chat:<streamId>`) over SSE and WebSocket: the service role publishes `token`
// deltas then `done` or `error`; a reader joining mid-stream gets one `snapshot` then the tail;
// `done` carries the full text and compacts the history; a slow reader gets merged deltas and is
// not disconnected; users send `input` (realtime-js channel.send) under a per-user hourly limit.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import crypto from 'node:crypto'

import { startHub, mintToken } from './helpers/hub.mjs'
import { VERSIONS, newClient, subscribe, onBroadcast, closeAllClients } from './helpers/client.mjs'
import { uniqueName, pace } from './helpers/wait.mjs'
import {
  openEventSource,
  opened,
  closeAllEventSources,
  publish,
  httpRequest,
  serviceToken,
  ssePath,
  tokenMessages,
  tokenTexts,
  tokenIndices,
  parseId,
  RawSse,
  assertSameText,
  rssKiB,
  tcpQueues,
  tcpBufferSizes,
} from './helpers/sse.mjs'

const CHAT_EVENTS = ['token', 'snapshot', 'done', 'error', 'system', 'input', 'note', 'attachment']

const chatTopic = (prefix) => `chat:${uniqueName(prefix)}`

/** The text a reader has: its snapshot (if any) followed by every token after it. */
function reconstruct(log) {
  let text = ''
  for (const e of log.items) {
    if (e.type === 'snapshot') text = e.json.text
    if (e.type === 'token') text += e.json.text
  }
  return text
}

describe('chat streams on the default hub', () => {
  let hub
  before(async () => {
    hub = await startHub()
  })
  after(async () => {
    closeAllEventSources()
    await closeAllClients()
    await hub?.stop()
  })

  test('a reader joining mid-stream gets one snapshot (text so far + cursor), then the tail: the text is exact', async (t) => {
    const topic = chatTopic('late')
    const texts = tokenTexts(600, 0, ' word')
    await publish(hub, tokenMessages(topic, texts.slice(0, 300)))
    const h = openEventSource(hub, topic, { t, events: CHAT_EVENTS, name: 'late joiner' })
    const snap = await h.log.waitFor(() => true, 'the first event of a mid-stream joiner')
    assert.equal(snap.type, 'snapshot', `first event is the snapshot, got ${snap.type}`)
    assertSameText(snap.json.text, texts.slice(0, 300).join(''), 'snapshot text = the 300 tokens so far')
    assert.equal(snap.json.done, false)
    assert.equal(snap.json.cursor, snap.lastEventId, 'snapshot carries its cursor, also as the SSE id')
    assert.equal(parseId(snap.lastEventId).offset, 300, 'the cursor of the last token folded in')

    await publish(hub, tokenMessages(topic, texts.slice(300)))
    await h.log.waitFor((e) => e.type === 'token' && e.data.includes('<599>'), 'the last tail token')
    assert.equal(h.log.filter((e) => e.type === 'snapshot').length, 1, 'one snapshot')
    const tail = h.log.filter((e) => e.type === 'token')
    for (const e of tail) assert.ok(parseId(e.lastEventId).offset > 300, `tail token ${e.lastEventId} is after the snapshot`)
    assertSameText(reconstruct(h.log), texts.join(''), 'snapshot + tail = the whole text')
  })

  test('readers joining during a burst of tokens: snapshot and live tail hand over without gap or duplicate', async (t) => {
    const topic = chatTopic('burst')
    const N = 900
    const texts = tokenTexts(N)
    const publishing = publish(hub, tokenMessages(topic, texts), { batch: 5 })
    const readers = []
    for (let i = 0; i < 5; i++) {
      const h = openEventSource(hub, topic, { t, events: CHAT_EVENTS, name: `joiner ${i}` })
      readers.push(h)
      await opened(h)
    }
    await publishing
    for (const h of readers) {
      await h.log.waitFor((e) => (e.type === 'token' || e.type === 'snapshot') && e.data.includes(`<${N - 1}>`), `${h.name}: the last token`, 10_000)
      const text = reconstruct(h.log)
      const idx = tokenIndices(text)
      assert.deepEqual(idx, texts.map((_, i) => i), `${h.name}: every token once, in order (${h.log.filter((e) => e.type === 'snapshot').length} snapshot(s), ${h.log.filter((e) => e.type === 'token').length} token events)`)
      assert.ok(h.log.filter((e) => e.type === 'snapshot').length <= 1, `${h.name}: at most one snapshot`)
    }
  })

  test('done carries the full text; the stream compacts: later readers get one snapshot {done, text, usage}', async (t) => {
    const topic = chatTopic('done')
    const texts = tokenTexts(50, 0, 'é✓ ')
    const full = texts.join('')
    const live = openEventSource(hub, topic, { t, events: CHAT_EVENTS, name: 'live reader' })
    await opened(live)
    await publish(hub, tokenMessages(topic, texts))
    const tokens = await live.log.waitFor((e) => e.type === 'token' && e.data.includes('<49>'), 'the last token at the live reader')
    assert.ok(tokens)
    await publish(hub, [{ topic, event: 'done', payload: { usage: { prompt: 3, completion: 50 } } }])
    const done = await live.log.waitFor((e) => e.type === 'done', 'done at the live reader')
    // The cursor of token <9> (offset 10), which compaction removed from the history.
    const midCursor = `${parseId(done.lastEventId).epoch}:10`
    assertSameText(done.json.text, full, 'done carries the whole text')
    assert.deepEqual(done.json.usage, { prompt: 3, completion: 50 }, 'the publisher\'s fields are kept')
    assert.equal(parseId(done.lastEventId).offset, 51)
    assertSameText(reconstruct(live.log), full, 'the live reader\'s text')

    // A reader without a cursor, one with ?since=0, and one resuming from a token's cursor (which
    // compaction removed): each gets exactly one snapshot with the whole text, and no tokens.
    const fresh = openEventSource(hub, topic, { t, events: CHAT_EVENTS, name: 'reader after done' })
    const zero = openEventSource(hub, topic, { t, events: CHAT_EVENTS, query: { since: '0' }, name: 'reader since=0' })
    const resumer = openEventSource(hub, topic, { t, events: CHAT_EVENTS, headers: { 'Last-Event-ID': midCursor }, name: `reader resuming from ${midCursor}` })
    await Promise.all([opened(fresh), opened(zero), opened(resumer)])
    // A later event on the topic is the causal sentinel: everything the join delivers comes first.
    await publish(hub, [{ topic, event: 'note', payload: { after: 'done' } }])
    for (const h of [fresh, zero, resumer]) {
      await h.log.waitFor((e) => e.type === 'note', `${h.name}: the note published after joining`)
      assert.deepEqual(h.log.items.map((e) => e.type), ['snapshot', 'note'], `${h.name}: one snapshot, then live`)
      const s = h.log.items[0].json
      assertSameText(s.text, full, `${h.name}: snapshot text`)
      assert.equal(s.done, true, `${h.name}: snapshot says done`)
      assert.deepEqual(s.usage, { prompt: 3, completion: 50 })
      assert.equal(s.cursor, done.lastEventId, `${h.name}: the snapshot is at the done cursor`)
    }
  })

  test('error ends a stream: readers get an `error` event with data (EventSource stays open); a later snapshot carries it', async (t) => {
    const topic = chatTopic('error')
    const texts = tokenTexts(5)
    const live = openEventSource(hub, topic, { t, events: CHAT_EVENTS, name: 'live reader' })
    await opened(live)
    await publish(hub, [...tokenMessages(topic, texts), { topic, event: 'error', payload: { code: 'overloaded', message: 'model overloaded' } }])
    // Note for clients: a server event named "error" reaches the same listener as EventSource's
    // own connection errors; it is told apart by having data (a MessageEvent).
    const err = await live.log.waitFor((e) => e.type === 'error', 'the stream\'s error event (with data)')
    assert.deepEqual(err.json, { code: 'overloaded', message: 'model overloaded' })
    assert.equal(live.es.readyState, live.es.OPEN, 'a server error event does not close the EventSource')
    assert.equal(live.life.filter((e) => e.type === 'error').length, 0, 'no connection error')

    const later = openEventSource(hub, topic, { t, events: CHAT_EVENTS, name: 'later reader' })
    const snap = await later.log.waitFor(() => true, 'the later reader\'s first event')
    assert.equal(snap.type, 'snapshot')
    assertSameText(snap.json.text, texts.join(''), 'snapshot text')
    assert.equal(snap.json.done, false)
    assert.deepEqual(snap.json.error, { code: 'overloaded', message: 'model overloaded' })
  })

  test('only the service role publishes on chat topics (REST 403; a user\'s WebSocket broadcast is refused)', async (t) => {
    const topic = chatTopic('acl')
    const body = JSON.stringify({ messages: [{ topic, event: 'token', payload: { text: 'forged' } }] })
    const rest = await httpRequest(hub, {
      method: 'POST',
      path: '/api/broadcast',
      headers: { authorization: `Bearer ${mintToken()}`, 'content-type': 'application/json' },
      body,
    })
    assert.equal(rest.status, 403, rest.body)
    assert.match(JSON.parse(rest.body).message, /service role/)

    const reader = openEventSource(hub, topic, { t, events: CHAT_EVENTS })
    await opened(reader)
    const c = newClient(hub, { t, name: 'user' })
    const ch = c.channel(topic, { config: { broadcast: { ack: true } } })
    await subscribe(ch)
    assert.equal(await ch.send({ type: 'broadcast', event: 'token', payload: { text: 'forged' } }), 'error')
    const reply = c.spy.incoming({ event: 'phx_reply' }).find((f) => f.payload?.status === 'error')
    assert.match(reply?.payload?.response?.reason ?? '', /^Unauthorized: only the service role publishes/)
    // The service's next token is the sentinel: the forged one would have arrived before it.
    await publish(hub, tokenMessages(topic, ['genuine']))
    await reader.log.waitFor((e) => e.type === 'token', 'the service token at the reader')
    assert.equal(reconstruct(reader.log), 'genuine')
  })

  // With the default --history-size (1000), a chat stream longer than 1,000 messages.
  test('a snapshot of a stream longer than --history-size still has the whole text', async (t) => {
    const topic = chatTopic('long-snapshot')
    const texts = tokenTexts(1500)
    await publish(hub, tokenMessages(topic, texts))
    const h = openEventSource(hub, topic, { t, events: CHAT_EVENTS, name: 'late joiner' })
    const snap = await h.log.waitFor(() => true, 'the late joiner\'s first event')
    assert.equal(snap.type, 'snapshot')
    assert.equal(parseId(snap.lastEventId).offset, 1500)
    assertSameText(snap.json.text, texts.join(''), 'snapshot after 1,500 tokens (history keeps 1,000 messages)')
  })

  test('done of a stream longer than --history-size carries (and compacts to) the whole text', async (t) => {
    const topic = chatTopic('long-done')
    const texts = tokenTexts(1500)
    const live = openEventSource(hub, topic, { t, events: CHAT_EVENTS, name: 'live reader' })
    await opened(live)
    await publish(hub, [...tokenMessages(topic, texts), { topic, event: 'done', payload: {} }])
    const done = await live.log.waitFor((e) => e.type === 'done', 'done at the live reader')
    assertSameText(reconstruct(live.log), texts.join(''), 'the live reader itself has every token')
    assertSameText(done.json.text, texts.join(''), 'done after 1,500 tokens (history keeps 1,000 messages; the stream compacts to this text)')
  })
})

describe('a slow SSE reader (--outbox-messages 64)', () => {
  let hub
  before(async () => {
    // 64 queued frames close a connection as a slow reader: 10,000 tokens can only reach a reader
    // that is not reading as merged deltas.
    hub = await startHub({ args: ['--outbox-messages', '64'] })
  })
  after(async () => {
    await hub?.stop()
  })

  test('reading ~1 event/s after 10,000 tokens were published: merged deltas, exact text, not disconnected, bounded hub memory', async (t) => {
    const topic = chatTopic('slow')
    const N = 10_000
    const texts = tokenTexts(N, 0, 'x'.repeat(40))
    const expected = texts.join('')

    const raw = await RawSse.open(hub, ssePath(topic, { access_token: mintToken() }), { pauseAfterHead: true, name: 'slow reader' })
    t.after(() => raw.close())
    assert.equal(raw.head.status, 200)
    const rssBefore = rssKiB(hub.process.pid)

    // First make the reader's TCP connection full, so the tokens meet real backpressure: loopback
    // buffers take up to tcp_wmem[max] on the hub's side and about tcp_rmem[default] on a reader
    // that does not read. Non-token events (a chat stream's attachments) do not merge and are not
    // part of the text.
    const { wmemMax, rmemDefault } = tcpBufferSizes()
    const fillBytes = wmemMax + rmemDefault + (1 << 20)
    const blob = 'y'.repeat(900_000)
    const fillers = []
    for (let sent = 0; sent < fillBytes; sent += blob.length) fillers.push({ topic, event: 'attachment', payload: { n: fillers.length, blob } })
    await publish(hub, fillers, { batch: 1 })
    await publish(hub, tokenMessages(topic, texts))
    await publish(hub, [{ topic, event: 'done', payload: {} }])
    const rssAfter = rssKiB(hub.process.pid)
    const queues = tcpQueues(raw.sock.localPort)
    t.diagnostic(
      `published ${fillers.length} × 900 kB attachments + ${N} tokens (${expected.length} B of text); ` +
        `kernel queues: hub send ${queues.server?.tx} B, reader receive ${queues.client?.rx} B; ` +
        `hub VmRSS ${rssBefore} → ${rssAfter} KiB`
    )
    assert.equal(queues.server?.state, 'ESTABLISHED', `the hub closed the paused reader's connection: ${JSON.stringify(queues)}`)
    assert.ok(queues.server.tx > 0, `the hub's socket has unsent bytes (the reader is really behind): ${JSON.stringify(queues)}`)
    // What may legitimately stay in the hub here: this reader's outbox (≤ --outbox-bytes, 4 MiB),
    // its connection's unsent batch (≤ one outbox), the topic's history (a chat stream is kept
    // until `done` compacts it: the ~5.5 MiB published here) and allocator slack: under 32 MiB.
    // Merging that copied the growing text per delta, or a writer buffering past the outbox, would
    // cost far more (10,000 deltas × a text growing to 0.45 MB is gigabytes).
    const growthKiB = rssAfter - rssBefore
    assert.ok(growthKiB < 32 * 1024, `hub RSS grew by ${growthKiB} KiB while the reader was paused`)

    // Now read about one event per second (resume until one more event has been parsed, pause).
    let got = 0
    const start = Date.now()
    for (let i = 0; i < 40 && !raw.events.some((e) => e.event === 'done'); i++) {
      got = await raw.readEvents(got, 1, `event ${got + 1} of the slow reader`, 10_000)
      assert.equal(raw.endInfo, null, `the slow reader was disconnected after ${got} events`)
      await pace(1000) // the reader's pace, not a wait for an outcome
    }
    const events = raw.events
    assert.ok(events.some((e) => e.event === 'done'), `done within 40 slow reads; events: ${events.map((e) => e.event).join(',')}`)
    assert.equal(events.filter((e) => e.event === 'system').length, 0, `no system event: ${JSON.stringify(events.find((e) => e.event === 'system'))}`)
    assert.equal(raw.endInfo, null, 'still connected after done')
    const tokens = events.filter((e) => e.event === 'token')
    const text = tokens.map((e) => JSON.parse(e.data).text).join('')
    assert.equal(tokenIndices(text).length, N, 'every token')
    assertSameText(text, expected, 'the merged deltas concatenate to exactly the text')
    assert.equal(events.filter((e) => e.event === 'attachment').length, fillers.length, 'every attachment')
    assert.ok(tokens.length < N / 10, `${N} tokens arrived as ${tokens.length} events: deltas were merged`)
    assert.equal(parseId(tokens.at(-1).id).offset, fillers.length + N, 'the last merged delta has the last token\'s cursor')
    const done = events.find((e) => e.event === 'done')
    const doneText = JSON.parse(done.data).text
    t.diagnostic(
      `${events.length} events (${tokens.length} token events) read in ${Date.now() - start} ms; ` +
        `done carries ${tokenIndices(doneText).length}/${N} tokens of text; VmRSS at the end ${rssKiB(hub.process.pid)} KiB`
    )
  })
})

describe('chat input (--chat-input-per-hour via HUB_CHAT_INPUT_PER_HOUR=3)', () => {
  let hub
  before(async () => {
    hub = await startHub({ env: { HUB_CHAT_INPUT_PER_HOUR: '3' } })
  })
  after(async () => {
    await closeAllClients()
    await hub?.stop()
  })

  for (const vsn of VERSIONS) {
    test(`vsn ${vsn}: a user's 4th input in the hour is refused with RateLimitExceeded; the worker gets the 3 accepted with the user id`, async (t) => {
      const topic = chatTopic('input')
      const worker = newClient(hub, { vsn, t, token: serviceToken(), name: 'worker (service role)' })
      const wch = worker.channel(topic)
      const inputs = onBroadcast(wch, 'input', 'inputs at the worker')
      await subscribe(wch)

      const sub = crypto.randomUUID()
      const user = newClient(hub, { vsn, t, token: mintToken({ sub }), name: 'user' })
      const uch = user.channel(topic, { config: { broadcast: { ack: true } } })
      await subscribe(uch)
      const statuses = []
      for (let i = 0; i < 4; i++) {
        statuses.push(await uch.send({ type: 'broadcast', event: 'input', payload: { text: `question ${i}` } }))
      }
      assert.deepEqual(statuses, ['ok', 'ok', 'ok', 'error'])
      const sends = user.spy.outgoing({ event: 'broadcast' })
      const lastRef = sends.at(-1).ref
      const reply = user.spy.incoming({ event: 'phx_reply' }).find((f) => f.ref === lastRef)
      assert.equal(reply?.payload?.status, 'error')
      assert.match(reply.payload.response?.reason ?? '', /^RateLimitExceeded/, JSON.stringify(reply.payload))

      // Another user's input is the sentinel: it is published after the refused one would have been.
      const other = newClient(hub, { vsn, t, token: mintToken(), name: 'other user' })
      const och = other.channel(topic, { config: { broadcast: { ack: true } } })
      await subscribe(och)
      assert.equal(await och.send({ type: 'broadcast', event: 'input', payload: { text: 'sentinel' } }), 'ok')
      const got = await inputs.waitForCount(() => true, 4, 'three inputs and the sentinel at the worker')
      assert.deepEqual(
        got.map((m) => m.payload),
        [
          { text: 'question 0', user: sub },
          { text: 'question 1', user: sub },
          { text: 'question 2', user: sub },
          { text: 'sentinel', user: got[3].payload.user },
        ]
      )
      assert.notEqual(got[3].payload.user, sub)
      assert.equal(inputs.length, 4, 'the refused input was not delivered')
    })
  }

  test('the limit is per user: a new connection of the same user is still limited', async (t) => {
    const topic = chatTopic('input-reconnect')
    const sub = crypto.randomUUID()
    const send = async (name) => {
      const c = newClient(hub, { t, token: mintToken({ sub }), name })
      const ch = c.channel(topic, { config: { broadcast: { ack: true } } })
      await subscribe(ch)
      return (i) => ch.send({ type: 'broadcast', event: 'input', payload: { i } })
    }
    const first = await send('first connection')
    for (let i = 0; i < 3; i++) assert.equal(await first(i), 'ok')
    const second = await send('second connection')
    assert.equal(await second(3), 'error', 'a reconnect does not reset the hourly limit')
  })
})
