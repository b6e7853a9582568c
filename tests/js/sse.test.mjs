// Server-sent events: GET /v1/sse/{topic} read with the real `eventsource` EventSource (named
// events, lastEventId = cursor, reconnect with Last-Event-ID), plus raw HTTP for the response
// head, comments and refusals. Messages are published with the REST broadcast endpoint and a
// service-role token.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import net from 'node:net'
import crypto from 'node:crypto'

import { startHub, mintToken } from './helpers/hub.mjs'
import { EventLog, uniqueName, withTimeout } from './helpers/wait.mjs'
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
} from './helpers/sse.mjs'

let hub
before(async () => {
  // The heartbeat through its environment variable (README: every flag has an HUB_* twin).
  hub = await startHub({ env: { HUB_SSE_HEARTBEAT: '300ms' } })
})
after(async () => {
  closeAllEventSources()
  await hub?.stop()
})

const room = (prefix) => `room:${uniqueName(prefix)}`

/** Waits for `count` events of `type` in the handle's log. */
function eventsOf(h, type, count, what, timeoutMs) {
  return h.log.waitForCount((e) => e.type === type, count, what ?? `${count} '${type}' event(s) at ${h.name}`, timeoutMs)
}

function assertConsecutiveIds(events, what) {
  const ids = events.map((e) => parseId(e.lastEventId))
  ids.forEach((c, i) => assert.ok(c, `${what}: event ${i} has an <epoch>:<offset> id, got ${JSON.stringify(events[i].lastEventId)}`))
  for (let i = 1; i < ids.length; i++) {
    assert.equal(ids[i].epoch, ids[0].epoch, `${what}: one epoch`)
    assert.equal(ids[i].offset, ids[i - 1].offset + 1, `${what}: consecutive offsets at ${i}`)
  }
}

describe('EventSource (the eventsource package) on GET /v1/sse/{topic}', () => {
  test('named events arrive with lastEventId = cursor, type = event name, data = the JSON payload', async (t) => {
    const topic = room('named')
    const h = openEventSource(hub, topic, { t, events: ['greeting', 'update', 'pretty', 'system'] })
    await opened(h)
    await publish(hub, [
      { topic, event: 'greeting', payload: { hello: 'world', n: [1, 2], u: 'é ✓ 🚀' } },
      { topic, event: 'update', payload: { i: 1 } },
      { topic, event: 'update', payload: { i: 2, nested: { deep: [null, true, 1.5] } } },
    ])
    // A payload with newlines between its JSON tokens travels as several `data:` lines, which
    // EventSource joins with "\n": the JSON text arrives unchanged.
    const prettyPayload = '{\n  "a": 1,\n  "b": "two words"\n}'
    const body = `{"messages":[{"topic":${JSON.stringify(topic)},"event":"pretty","payload":${prettyPayload}}]}`
    const res = await httpRequest(hub, {
      method: 'POST',
      path: '/api/broadcast',
      headers: { authorization: `Bearer ${serviceToken()}`, 'content-type': 'application/json' },
      body,
    })
    assert.equal(res.status, 202, res.body)

    const got = await h.log.waitForCount((e) => e.type !== 'message', 4, 'four named events')
    assert.deepEqual(got.map((e) => e.type), ['greeting', 'update', 'update', 'pretty'])
    assert.deepEqual(got[0].json, { hello: 'world', n: [1, 2], u: 'é ✓ 🚀' })
    assert.deepEqual(got[1].json, { i: 1 })
    assert.deepEqual(got[2].json, { i: 2, nested: { deep: [null, true, 1.5] } })
    assert.equal(got[3].data, prettyPayload, 'multi-line data is joined with \\n')
    assertConsecutiveIds(got, 'EventSource')
    assert.equal(parseId(got[0].lastEventId).offset, 1, 'the first message of a new topic is offset 1')
    assert.equal(h.log.filter((e) => e.type === 'message').length, 0, 'named events never reach onmessage')
    assert.equal(h.es.readyState, h.es.OPEN)
  })

  for (const auth of ['header', 'query', 'cookie']) {
    test(`the token is accepted ${auth === 'header' ? 'as Authorization: Bearer' : auth === 'query' ? 'as the access_token query parameter' : 'as the access_token cookie'}`, async (t) => {
      const topic = room(`auth-${auth}`)
      const h = openEventSource(hub, topic, { t, auth, events: ['m'] })
      await opened(h)
      const sent = h.requests[0]
      if (auth === 'query') assert.ok(new URL(sent.url).searchParams.get('access_token'), 'token in the URL')
      else assert.equal(new URL(sent.url).searchParams.get('access_token'), null, 'no token in the URL')
      await publish(hub, [{ topic, event: 'm', payload: { auth } }])
      const e = await h.log.waitFor((x) => x.type === 'm', `message on a stream authenticated by ${auth}`)
      assert.deepEqual(e.json, { auth })
    })
  }

  test('?private=true reads the private side of a topic only', async (t) => {
    const topic = room('private')
    const priv = openEventSource(hub, topic, { t, query: { private: 'true' }, events: ['m'], name: 'private reader' })
    const pub = openEventSource(hub, topic, { t, events: ['m'], name: 'public reader' })
    await Promise.all([opened(priv), opened(pub)])
    await publish(hub, [
      { topic, event: 'm', payload: { side: 'private' }, private: true },
      { topic, event: 'm', payload: { side: 'public' } },
    ])
    const p = await priv.log.waitFor((e) => e.type === 'm', 'private message at the private reader')
    const q = await pub.log.waitFor((e) => e.type === 'm', 'public message at the public reader')
    assert.deepEqual(p.json, { side: 'private' })
    assert.deepEqual(q.json, { side: 'public' })
    // Each side's message went out in one batch with the other's; the other one would have
    // arrived by now on the wrong side, but give it a short window anyway.
    await priv.log.expectNone((e) => e.json?.side === 'public', 'public message on the private stream', 300)
    assert.equal(pub.log.filter((e) => e.json?.side === 'private').length, 0, 'private message on the public stream')
  })

  test('the topic is the URL-decoded path segment (spaces, slashes, ?, #, %, +, unicode)', async (t) => {
    const topic = `room:${uniqueName('enc')} a/b?c#d%e+f é✓`
    const h = openEventSource(hub, topic, { t, events: ['m'] })
    await opened(h)
    assert.ok(h.requests[0].url.includes(encodeURIComponent(topic)), 'the client sent the encoded topic')
    await publish(hub, [{ topic, event: 'm', payload: { ok: true } }])
    await h.log.waitFor((e) => e.type === 'm', `message on the topic ${JSON.stringify(topic)}`)
  })

  test('a literal "+" in the path is a plus sign, not a space (only query strings use + for space)', async (t) => {
    // `new URL('/v1/sse/room:a+b', base)` and browsers leave "+" as it is in a path (RFC 3986:
    // a sub-delimiter, allowed unencoded in a segment).
    const base = uniqueName('plus')
    const topic = `room:${base}+x`
    const raw = await RawSse.open(hub, `/v1/sse/${topic}?access_token=${mintToken()}`)
    t.after(() => raw.close())
    assert.equal(raw.head.status, 200, raw.body)
    // Both spellings are published; the stream must carry the "+" one. The space one is published
    // first, so if it is the only one that arrives the reader joined the wrong topic.
    await publish(hub, [
      { topic: `room:${base} x`, event: 'space', payload: {} },
      { topic, event: 'plus', payload: {} },
    ])
    const first = await raw.items.waitFor((i) => i.kind === 'event', `first event on ${topic}`)
    assert.equal(first.event, 'plus', `GET /v1/sse/${topic} was joined to "room:${base} x" instead of "${topic}"`)
  })
})

describe('response head and framing (raw HTTP)', () => {
  test('200, text/event-stream, Cache-Control: no-cache, X-Accel-Buffering: no; retry hint first; comment heartbeats', async (t) => {
    const topic = room('head')
    const raw = await RawSse.open(hub, ssePath(topic, { access_token: mintToken() }))
    t.after(() => raw.close())
    assert.equal(raw.head.status, 200, `status line ${raw.head.statusLine}`)
    assert.match(raw.head.headers['content-type'], /^text\/event-stream\b/)
    assert.equal(raw.head.headers['cache-control'], 'no-cache')
    assert.equal(raw.head.headers['x-accel-buffering'], 'no')
    assert.ok(raw.head.headers['x-request-id'], 'x-request-id header')
    const first = await raw.items.waitFor(() => true, 'first item of the stream')
    assert.equal(first.kind, 'retry', `the stream starts with retry:, got ${JSON.stringify(first)}`)
    assert.ok(Number.isInteger(first.value) && first.value > 0, `retry: ${first.value}`)
    // HUB_SSE_HEARTBEAT=300ms: two comment lines well within 3 s, with nothing published.
    const beats = await raw.items.waitForCount((i) => i.kind === 'comment', 2, 'two heartbeat comments (HUB_SSE_HEARTBEAT=300ms)', 3000)
    assert.ok(beats[1].t - beats[0].t >= 150, `heartbeats ${beats[1].t - beats[0].t} ms apart`)
    assert.equal(raw.events.length, 0, 'heartbeats are comments, not events')
    // Then a message, framed id / event / data.
    await publish(hub, [{ topic, event: 'after-beats', payload: { x: 1 } }])
    const ev = await raw.items.waitFor((i) => i.kind === 'event', 'the published event')
    assert.equal(ev.event, 'after-beats')
    assert.ok(parseId(ev.id), `id ${ev.id}`)
    assert.deepEqual(JSON.parse(ev.data), { x: 1 })
  })
})

describe('refusals', () => {
  async function refused(path, init = {}) {
    const res = await fetch(`${hub.httpUrl}${path}`, init)
    const text = await res.text()
    let body
    try {
      body = JSON.parse(text)
    } catch {
      assert.fail(`${res.status} body is not JSON: ${text}`)
    }
    return { res, body }
  }

  function assertErrorBody({ res, body }, status, code) {
    assert.equal(res.status, status, JSON.stringify(body))
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/)
    assert.equal(body.error?.code, code, JSON.stringify(body))
    assert.equal(typeof body.error.message, 'string')
    assert.ok(body.error.message.length > 0)
    assert.deepEqual(body.error.context, {})
    assert.equal(body.requestId, res.headers.get('x-request-id'), 'requestId matches the x-request-id header')
  }

  test('no token → 401 AUTHENTICATION_REQUIRED (JSON error body)', async () => {
    assertErrorBody(await refused(ssePath(room('none'))), 401, 'AUTHENTICATION_REQUIRED')
    // An empty token is no token.
    assertErrorBody(await refused(ssePath(room('none'), { access_token: '' })), 401, 'AUTHENTICATION_REQUIRED')
  })

  test('an invalid, wrongly signed or expired token → 401 INVALID_TOKEN, by header, query and cookie', async () => {
    const bad = {
      garbage: 'not-a-jwt',
      'wrong secret': mintToken({}, { secret: 'some-other-secret-0123456789abcdef' }),
      expired: mintToken({}, { expiresIn: -60 }),
    }
    for (const [what, tok] of Object.entries(bad)) {
      const topic = room('bad')
      const viaHeader = await refused(ssePath(topic), { headers: { Authorization: `Bearer ${tok}` } })
      assertErrorBody(viaHeader, 401, 'INVALID_TOKEN')
      const viaQuery = await refused(ssePath(topic, { access_token: tok }))
      assertErrorBody(viaQuery, 401, 'INVALID_TOKEN')
      const viaCookie = await refused(ssePath(topic), { headers: { Cookie: `access_token=${tok}` } })
      assertErrorBody(viaCookie, 401, 'INVALID_TOKEN')
      assert.ok(viaQuery.body.error.message, `${what}: message`)
    }
  })

  test('a topic the token may not read → 403 FORBIDDEN (build:<session> of nobody\'s session)', async () => {
    const topic = `build:${crypto.randomUUID()}`
    const r = await refused(ssePath(topic, { access_token: mintToken() }))
    assertErrorBody(r, 403, 'FORBIDDEN')
    assert.match(r.body.error.message, /^Unauthorized/)
    assert.ok(r.body.error.message.includes(topic), r.body.error.message)
  })

  test('EventSource fails the connection on a 401 and does not reconnect', async (t) => {
    const h = openEventSource(hub, room('es-401'), { t, token: 'not-a-jwt', events: ['m'] })
    const err = await h.life.waitFor((e) => e.type === 'error', 'EventSource error event for the 401')
    assert.equal(err.code, 401)
    assert.equal(err.readyState, h.es.CLOSED, 'CLOSED: an EventSource gives up on a non-200 answer')
    assert.equal(h.life.filter((e) => e.type === 'open').length, 0)
  })

  test('a malformed Last-Event-ID → 400 VALIDATION_ERROR', async () => {
    const r = await refused(ssePath(room('bad-id'), { access_token: mintToken() }), { headers: { 'Last-Event-ID': 'garbage' } })
    assertErrorBody(r, 400, 'VALIDATION_ERROR')
  })
})

/**
 * A TCP proxy in front of the hub that cuts its first connection mid-event: once the bytes from
 * the hub contain `marker`, it forwards them up to the end of the marker (inside the event that
 * carries it), then closes both sides. Later connections pass through untouched. Records each
 * connection's request head.
 */
async function cuttingProxy(t, target, marker) {
  const conns = new EventLog('proxy connections')
  const cuts = new EventLog('proxy cuts')
  const sockets = new Set()
  let accepted = 0
  const server = net.createServer((client) => {
    const index = accepted++
    const upstream = net.connect(target.port, '127.0.0.1')
    sockets.add(client).add(upstream)
    let head = ''
    let recorded = false
    client.on('data', (d) => {
      if (!recorded) {
        head += d.toString('latin1')
        const end = head.indexOf('\r\n\r\n')
        if (end !== -1) {
          recorded = true
          const lines = head.slice(0, end).split('\r\n')
          const lastEventId = lines.find((l) => /^last-event-id:/i.test(l))?.replace(/^[^:]*:\s*/, '') ?? null
          conns.push({ index, requestLine: lines[0], lastEventId, t: Date.now() })
        }
      }
      upstream.write(d)
    })
    let tail = ''
    let forwarded = 0
    let cut = false
    upstream.on('data', (d) => {
      if (cut) return
      if (index === 0) {
        const s = tail + d.toString('latin1')
        const at = s.indexOf(marker)
        if (at !== -1) {
          const upto = at + marker.length - tail.length
          cut = true
          forwarded += upto
          client.end(d.subarray(0, upto))
          upstream.destroy()
          cuts.push({ index, forwarded, t: Date.now() })
          return
        }
        tail = s.slice(-marker.length)
      }
      forwarded += d.length
      client.write(d)
    })
    upstream.on('end', () => client.end())
    upstream.on('error', () => client.destroy())
    client.on('error', () => upstream.destroy())
    client.on('close', () => upstream.destroy())
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.after(() => {
    for (const s of sockets) s.destroy()
    server.close()
  })
  return { url: `http://127.0.0.1:${server.address().port}`, conns, cuts }
}

describe('resume', () => {
  test('a network cut mid-event: EventSource reconnects with Last-Event-ID and gets each of 1,000 tokens exactly once, in order', async (t) => {
    const topic = `chat:${uniqueName('cut')}`
    const N = 1000
    const texts = tokenTexts(N)
    const proxy = await cuttingProxy(t, hub, '<350>')
    const h = openEventSource(hub, topic, { t, url: proxy.url, events: ['token', 'snapshot', 'done', 'system'] })
    await opened(h)

    // Ten tokens per request, so the reader gets many (merged) events before the cut.
    await publish(hub, tokenMessages(topic, texts.slice(0, 500)), { batch: 10 })
    await proxy.cuts.waitFor(() => true, 'the proxy cutting the first connection inside the event with token <350>')
    // Published while the reader is disconnected (EventSource waits for the retry: hint, 2 s).
    await publish(hub, tokenMessages(topic, texts.slice(500, 800)))
    await proxy.conns.waitForCount(() => true, 2, 'EventSource reconnecting through the proxy', 8000)
    // Published while the reconnected stream replays: the hand-over from replay to live.
    await publish(hub, tokenMessages(topic, texts.slice(800)), { batch: 10 })
    await h.log.waitFor((e) => e.type === 'token' && e.data.includes(`<${N - 1}>`), `token <${N - 1}> after the reconnect`, 10_000)

    const [err] = h.life.filter((e) => e.type === 'error')
    assert.ok(err, 'EventSource reported the lost connection')
    assert.deepEqual(h.life.items.map((e) => e.type), ['open', 'error', 'open'], 'one cut, one reconnect')
    const before = h.log.items.filter((e) => e.t <= err.t)
    assert.ok(before.length > 0, 'some events arrived before the cut')
    assert.equal(proxy.conns.items[0].lastEventId, null, 'first request: no Last-Event-ID')
    assert.equal(
      proxy.conns.items[1].lastEventId,
      before.at(-1).lastEventId,
      'the reconnect sent the id of the last complete event as Last-Event-ID'
    )
    t.diagnostic(`cut after ${proxy.cuts.items[0].forwarded} bytes; ${before.length} events before, ${h.log.length - before.length} after; Last-Event-ID ${proxy.conns.items[1].lastEventId}`)

    const tokens = h.log.filter((e) => e.type === 'token')
    assert.equal(h.log.filter((e) => e.type === 'snapshot' || e.type === 'system').length, 0, 'a resumable cursor replays, no snapshot or system event')
    const indices = tokenIndices(tokens.map((e) => e.json.text).join(''))
    assert.equal(indices.length, N, `${indices.length} tokens received for ${N} published`)
    assert.deepEqual(indices, texts.map((_, i) => i), 'every token exactly once, in order')
    // Merged deltas carry the newest merged cursor: token i is offset i + 1 on this topic.
    const epoch = parseId(tokens[0].lastEventId).epoch
    for (const e of tokens) {
      const id = parseId(e.lastEventId)
      assert.equal(id.epoch, epoch)
      assert.equal(id.offset, tokenIndices(e.json.text).at(-1) + 1, `id ${e.lastEventId} is the cursor of the event's last token`)
    }

    await publish(hub, [{ topic, event: 'done', payload: { usage: { tokens: N } } }])
    const done = await h.log.waitFor((e) => e.type === 'done', 'done event')
    assert.equal(done.json.text, texts.join(''), 'done carries the whole text')
    assert.deepEqual(done.json.usage, { tokens: N })
    assert.equal(parseId(done.lastEventId).offset, N + 1)
  })

  test('Last-Event-ID inside the history replays exactly the missed messages, then live (room topic)', async (t) => {
    const topic = room('resume')
    const first = openEventSource(hub, topic, { t, events: ['m'], name: 'first reader' })
    await opened(first)
    await publish(hub, [1, 2, 3, 4, 5].map((i) => ({ topic, event: 'm', payload: { i } })))
    const seen = await first.log.waitForCount((e) => e.type === 'm', 5, 'five messages at the first reader')
    first.close()

    // An EventSource only sends Last-Event-ID on its own reconnects; a new one gets it through
    // its fetch, as a page restoring a saved cursor would.
    const h = openEventSource(hub, topic, { t, events: ['m', 'system'], headers: { 'Last-Event-ID': seen[1].lastEventId }, name: 'resumer' })
    await opened(h)
    await h.log.waitForCount((e) => e.type === 'm', 3, 'messages 3..5 replayed')
    await publish(hub, [{ topic, event: 'm', payload: { i: 6 } }])
    await h.log.waitFor((e) => e.json?.i === 6, 'live message 6')
    assert.deepEqual(h.log.items.map((e) => e.json?.i), [3, 4, 5, 6], 'no system event, no duplicate, no gap')
    assert.deepEqual(h.log.items.slice(0, 3).map((e) => e.lastEventId), seen.slice(2).map((e) => e.lastEventId), 'replayed with their original ids')
    assertConsecutiveIds(h.log.items, 'resumer')

    // ?since= is the same for clients that cannot set headers.
    const q = openEventSource(hub, topic, { t, events: ['m'], query: { since: seen[3].lastEventId }, name: 'since reader' })
    await q.log.waitForCount((e) => e.type === 'm', 2, 'messages 5 and 6 via ?since=')
    assert.deepEqual(q.log.items.map((e) => e.json.i), [5, 6])
  })

  test('Last-Event-ID from another epoch → a system event first, then live', async (t) => {
    const topic = room('epoch')
    await publish(hub, [{ topic, event: 'm', payload: { i: 1 } }])
    const h = openEventSource(hub, topic, { t, events: ['m', 'system'], headers: { 'Last-Event-ID': 'no-such-epoch:1' } })
    await opened(h)
    const sys = await h.log.waitFor((e) => e.type === 'system', 'system event for an unrecoverable cursor')
    assert.equal(sys.json.status, 'error')
    assert.match(sys.json.message, /not recovered/i)
    await publish(hub, [{ topic, event: 'm', payload: { i: 2 } }])
    await h.log.waitFor((e) => e.json?.i === 2, 'live message after the system event')
    assert.equal(h.log.items[0].type, 'system', 'the system event comes first')
  })
})

describe('resume with a short history (--history-size 5)', () => {
  let small
  before(async () => {
    small = await startHub({ args: ['--history-size', '5'] })
  })
  after(async () => {
    await small?.stop()
  })

  test('Last-Event-ID older than the retained history → a system event first, then what is retained, then live', async (t) => {
    const topic = room('stale')
    const first = openEventSource(small, topic, { t, events: ['m'], name: 'first reader' })
    await opened(first)
    await publish(small, Array.from({ length: 10 }, (_, k) => ({ topic, event: 'm', payload: { i: k + 1 } })))
    const seen = await first.log.waitForCount((e) => e.type === 'm', 10, 'ten messages at the first reader')
    first.close()

    const h = openEventSource(small, topic, { t, events: ['m', 'system'], headers: { 'Last-Event-ID': seen[1].lastEventId }, name: 'stale resumer' })
    await opened(h)
    await publish(small, [{ topic, event: 'm', payload: { i: 11 } }])
    await h.log.waitFor((e) => e.json?.i === 11, 'live message 11')
    const [sys, ...rest] = h.log.items
    assert.equal(sys.type, 'system', `first event is system, got ${JSON.stringify(sys)}`)
    assert.equal(sys.json.status, 'error')
    assert.match(sys.json.message, /not recovered/i)
    assert.ok(sys.json.message.includes(seen[9].lastEventId), `names the current cursor: ${sys.json.message}`)
    assert.deepEqual(rest.map((e) => e.json.i), [6, 7, 8, 9, 10, 11], 'the five retained messages once, then live')
  })
})

describe('keep-alive connection reuse', () => {
  test('GET /v1/sse/{topic} on a keep-alive connection that already served a request is still an event stream', async (t) => {
    // Browsers and fetch pools reuse idle HTTP/1.1 connections: an EventSource opened after any
    // other request to the hub may well go out on that request's connection.
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    t.after(() => agent.destroy())
    const health = await httpRequest(hub, { path: '/health', agent })
    assert.equal(health.status, 200)
    const topic = room('reuse')
    const res = await withTimeout(
      new Promise((resolve, reject) => {
        const req = http.get(
          { host: '127.0.0.1', port: hub.port, path: ssePath(topic, { access_token: mintToken() }), agent },
          (r) => {
            const out = { status: r.statusCode, contentType: r.headers['content-type'], reused: req.reusedSocket, body: '' }
            r.setEncoding('utf8')
            r.on('data', (d) => (out.body += d))
            if (r.statusCode === 200) setImmediate(() => resolve(out))
            else r.on('end', () => resolve(out))
          }
        )
        req.on('error', reject)
        t.after(() => req.destroy())
      }),
      5000,
      'the SSE response on the reused connection'
    )
    assert.equal(res.reused, true, 'the agent reused the /health connection')
    assert.equal(res.status, 200, `GET ${ssePath(topic)} on a reused keep-alive connection answered ${res.status}: ${res.body}`)
    assert.match(res.contentType, /^text\/event-stream/)
  })
})

describe('shutdown', () => {
  test('SIGTERM: the open EventSource sees its stream end and the hub exits within the drain timeout', async (t) => {
    const own = await startHub({ args: ['--drain-timeout', '2s'] })
    t.after(() => own.stop().catch(() => {}))
    const topic = room('sigterm')
    const h = openEventSource(own, topic, { t, events: ['m', 'system'] })
    await opened(h)
    await publish(own, [{ topic, event: 'm', payload: { i: 1 } }])
    await h.log.waitFor((e) => e.type === 'm', 'a message before the shutdown')

    const start = Date.now()
    const ended = h.life.waitFor((e) => e.type === 'error', 'EventSource error event when the hub shuts down', 5000)
    const code = await own.stop({ timeoutMs: 6000 })
    const elapsed = Date.now() - start
    assert.equal(code, 0, `exit code ${code}; stderr:\n${own.stderr()}`)
    assert.ok(elapsed < 3500, `exited ${elapsed} ms after SIGTERM (drain timeout 2 s)`)
    const err = await ended
    assert.notEqual(err.readyState, h.es.OPEN, 'no longer OPEN after the stream ended')
    assert.ok(err.t - start < 3000, `stream ended ${err.t - start} ms after SIGTERM`)
    const notice = h.log.find((e) => e.type === 'system')
    t.diagnostic(`stream ended after ${err.t - start} ms (readyState ${err.readyState}); hub exited after ${elapsed} ms; system notice: ${notice?.data ?? 'none'}`)
  })

  test('SIGTERM with a client connection that has not sent its request yet: nothing to drain, the hub exits at once', async (t) => {
    // Such connections are common: Node's fetch (undici) opens a spare one when an EventSource is
    // closed, browsers preconnect. An idle keep-alive connection after a request is closed at once
    // (checked below as the baseline); one before its first request must not hold the exit for
    // the whole drain timeout either.
    const own = await startHub({ args: ['--drain-timeout', '4s'] })
    t.after(() => own.stop().catch(() => {}))
    const connect = async () => {
      const s = net.connect(own.port, '127.0.0.1')
      s.on('error', () => {})
      await withTimeout(new Promise((r) => s.once('connect', r)), 5000, 'TCP connect to the hub')
      t.after(() => s.destroy())
      return s
    }
    const keepAlive = await connect()
    keepAlive.write(`GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)
    await withTimeout(new Promise((r) => keepAlive.once('data', r)), 5000, '/health answer on the keep-alive connection')
    const silent = await connect()
    // The hub has accepted it once /health answers on a third connection (accepts are in order).
    assert.equal((await httpRequest(own, { path: '/health', agent: false })).status, 200)

    const closedBy = (s) => new Promise((r) => s.once('close', () => r(Date.now())))
    const within = (p, what) => withTimeout(p, 5000, what)
    const [keepAliveClosed, silentClosed] = [closedBy(keepAlive), closedBy(silent)]
    const start = Date.now()
    const code = await own.stop({ timeoutMs: 8000 })
    const elapsed = Date.now() - start
    assert.equal(code, 0)
    assert.ok((await within(keepAliveClosed, 'the keep-alive connection closing')) - start < 1000, 'the idle keep-alive connection is closed at once')
    const silentAfter = (await within(silentClosed, 'the silent connection closing')) - start
    t.diagnostic(`hub exited ${elapsed} ms after SIGTERM; the silent connection was closed after ${silentAfter} ms`)
    assert.ok(elapsed < 1500, `hub exited ${elapsed} ms after SIGTERM (drain timeout 4 s): a connection that never sent a request held the shutdown`)
  })
})
