// REST broadcast: realtime-js's send() fallback (POST /realtime/v1/api/broadcast), httpSend()
// (POST /realtime/v1/api/broadcast/{topic}/events/{event}), and the endpoints with plain fetch.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub, mintToken } from './helpers/hub.mjs'
import { VERSIONS, newClient, subscribe, onBroadcast, byteArray } from './helpers/client.mjs'
import { parseCursor } from './helpers/wire.mjs'
import { uniqueName } from './helpers/wait.mjs'

let hub
before(async () => {
  hub = await startHub()
})
after(async () => {
  await hub?.stop()
})

async function listener(t, vsn, topic, { privateTopic = false, name = 'listener' } = {}) {
  const c = newClient(hub, { vsn, t, name })
  const ch = c.channel(topic, { config: { private: privateTopic } })
  const got = onBroadcast(ch, '*', `${name} broadcasts`)
  await subscribe(ch)
  return { c, ch, got }
}

/** Records the HTTP requests a client makes (realtime-js accepts a custom fetch). */
function recordingFetch() {
  const calls = []
  const f = async (url, init) => {
    const res = await fetch(url, init)
    calls.push({ url: String(url), method: init?.method, headers: { ...init?.headers }, body: init?.body, status: res.status })
    return res
  }
  return { fetch: f, calls }
}

for (const vsn of VERSIONS) {
  describe(`vsn ${vsn}: REST broadcast through realtime-js`, () => {
    test('send() on a channel that is not joined falls back to POST /api/broadcast (apikey header)', async (t) => {
      const topic = uniqueName('rest-fallback')
      const l = await listener(t, vsn, topic)
      const rec = recordingFetch()
      const c = newClient(hub, { vsn, t, name: 'rest-sender', fetch: rec.fetch })
      const ch = c.channel(topic)
      const status = await ch.send({ type: 'broadcast', event: 'via-rest', payload: { a: 1 } })
      assert.equal(status, 'ok')
      assert.equal(rec.calls.length, 1)
      const call = rec.calls[0]
      assert.equal(call.status, 202)
      const url = new URL(call.url)
      assert.equal(url.pathname, '/realtime/v1/api/broadcast')
      assert.equal(url.searchParams.get('vsn'), vsn, 'the client leaves vsn/apikey on the URL')
      assert.equal(call.headers.Authorization, undefined, 'no bearer: authenticated by the apikey header')
      const m = await l.got.waitFor((x) => x.event === 'via-rest', 'REST broadcast at the listener')
      assert.deepEqual(m.payload, { a: 1 })
      assert.ok(parseCursor(m.meta?.cursor), `REST broadcast has meta.cursor: ${JSON.stringify(m.meta)}`)
    })

    test('send() fallback with a token set via setAuth uses Authorization: Bearer', async (t) => {
      const topic = uniqueName('rest-bearer')
      const l = await listener(t, vsn, topic)
      const rec = recordingFetch()
      // The apikey is valid too; the bearer token is what the hub must check first.
      const c = newClient(hub, { vsn, t, name: 'rest-sender', fetch: rec.fetch })
      await c.setAuth(mintToken({ sub: 'bearer-user' }))
      const status = await c.channel(topic).send({ type: 'broadcast', event: 'bearer', payload: { b: 2 } })
      assert.equal(status, 'ok')
      assert.match(rec.calls[0].headers.Authorization, /^Bearer /)
      await l.got.waitFor((x) => x.event === 'bearer', 'bearer REST broadcast at the listener')
    })

    test('httpSend(event, json) → 202, members receive it', async (t) => {
      const topic = uniqueName('http-send')
      const l = await listener(t, vsn, topic)
      const rec = recordingFetch()
      const c = newClient(hub, { vsn, t, name: 'http-sender', fetch: rec.fetch })
      const res = await c.channel(topic).httpSend('ev 1/é', { hello: 'world', n: [1, 2] })
      assert.deepEqual(res, { success: true })
      const url = new URL(rec.calls[0].url)
      assert.equal(url.pathname, `/realtime/v1/api/broadcast/${encodeURIComponent(topic)}/events/${encodeURIComponent('ev 1/é')}`)
      const m = await l.got.waitFor((x) => x.event === 'ev 1/é', 'httpSend broadcast at the listener')
      assert.deepEqual(m.payload, { hello: 'world', n: [1, 2] })
      assert.ok(parseCursor(m.meta?.cursor))
    })

    test('httpSend on a private channel reaches private members only', async (t) => {
      const topic = uniqueName('http-private')
      const priv = await listener(t, vsn, topic, { privateTopic: true, name: 'private-listener' })
      const pub = await listener(t, vsn, topic, { privateTopic: false, name: 'public-listener' })
      const rec = recordingFetch()
      const c = newClient(hub, { vsn, t, name: 'http-sender', fetch: rec.fetch })
      const res = await c.channel(topic, { config: { private: true } }).httpSend('secret', { s: 1 })
      assert.deepEqual(res, { success: true })
      assert.equal(new URL(rec.calls[0].url).searchParams.get('private'), 'true')
      await priv.got.waitFor((x) => x.event === 'secret', 'private listener gets it')
      // Then a public message as a sentinel for the public listener (a second client, because
      // client.channel(topic) would return the existing private channel object).
      const res2 = await newClient(hub, { vsn, t }).channel(topic).httpSend('public', { p: 1 })
      assert.deepEqual(res2, { success: true })
      await pub.got.waitFor((x) => x.event === 'public', 'public listener gets the public one')
      assert.equal(pub.got.filter((x) => x.event === 'secret').length, 0, 'private message leaked to the public topic')
      await priv.got.expectNone((x) => x.event === 'public', 'public message at the private listener', 300)
    })
  })
}

// realtime-js derives the REST URL from the socket URL: for an endpoint ending in /socket it strips
// /socket and posts to /api/broadcast (PROTOCOL §3.4), so self-hosted-style clients use that path.
describe('REST from a client using the /socket endpoint', () => {
  for (const vsn of VERSIONS) {
    test(`vsn ${vsn}: send() fallback and httpSend() post to /api/broadcast and are delivered`, async (t) => {
      const topic = uniqueName('socket-rest')
      const l = await listener(t, vsn, topic)
      const rec = recordingFetch()
      const c = newClient(hub, { vsn, t, endpoint: 'socket', name: 'socket-endpoint sender', fetch: rec.fetch })
      const ch = c.channel(topic)
      assert.equal(await ch.send({ type: 'broadcast', event: 'fallback', payload: { f: 1 } }), 'ok')
      assert.deepEqual(await ch.httpSend('explicit', { e: 1 }), { success: true })
      assert.deepEqual(rec.calls.map((x) => new URL(x.url).pathname), [
        '/api/broadcast',
        `/api/broadcast/${encodeURIComponent(topic)}/events/explicit`,
      ])
      await l.got.waitForCount(() => true, 2, 'both REST messages at the listener')
      assert.deepEqual(l.got.items.map((m) => m.event), ['fallback', 'explicit'])
    })
  }
})

describe('httpSend with a binary body (application/octet-stream)', () => {
  test('V2 members get an ArrayBuffer, V1 members get nothing', async (t) => {
    const topic = uniqueName('http-bin')
    const v2 = await listener(t, '2.0.0', topic, { name: 'v2-listener' })
    const v1 = await listener(t, '1.0.0', topic, { name: 'v1-listener' })
    const rec = recordingFetch()
    const c = newClient(hub, { vsn: '2.0.0', t, name: 'http-sender', fetch: rec.fetch })
    const bytes = new Uint8Array([9, 8, 7, 0, 255])
    const res = await c.channel(topic).httpSend('blob', bytes)
    assert.deepEqual(res, { success: true })
    assert.equal(rec.calls[0].headers['Content-Type'], 'application/octet-stream')
    const m = await v2.got.waitFor((x) => x.event === 'blob', 'binary REST broadcast at the V2 member')
    assert.ok(m.payload instanceof ArrayBuffer, `payload is ${Object.prototype.toString.call(m.payload)}`)
    assert.deepEqual(byteArray(m.payload), [...bytes])
    // Sentinel: a JSON message sent afterwards reaches the V1 member; the binary one must not.
    assert.deepEqual(await c.channel(topic).httpSend('json-after', { j: 1 }), { success: true })
    await v1.got.waitFor((x) => x.event === 'json-after', 'V1 member gets the JSON sentinel')
    assert.deepEqual(v1.got.items.map((x) => x.event), ['json-after'], 'V1 member must not get the binary message')
  })
})

describe('REST endpoints with plain fetch', () => {
  const post = (path, { headers = {}, body, query = '' } = {}) =>
    fetch(`${hub.httpUrl}${path}${query}`, { method: 'POST', headers, body })

  test('POST /realtime/v1/api/broadcast without credentials → 401', async () => {
    const res = await post('/realtime/v1/api/broadcast', {
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ topic: 'x', event: 'e', payload: {} }] }),
    })
    assert.equal(res.status, 401)
    const body = await res.json()
    assert.ok(typeof (body.message ?? body.error) === 'string', `JSON error body: ${JSON.stringify(body)}`)
  })

  for (const [why, token] of [
    ['a wrong signature', () => mintToken({}, { secret: 'nope' })],
    ['an expired token', () => mintToken({}, { expiresIn: -3600 })],
    ['a token without role', () => mintToken({ role: undefined })],
    ['garbage', () => 'garbage'],
  ]) {
    test(`POST /realtime/v1/api/broadcast with ${why} → 401 (Bearer and apikey header)`, async () => {
      for (const headers of [{ authorization: `Bearer ${token()}` }, { apikey: token() }]) {
        const res = await post('/realtime/v1/api/broadcast', {
          headers: { 'content-type': 'application/json', ...headers },
          body: JSON.stringify({ messages: [{ topic: 'x', event: 'e', payload: {} }] }),
        })
        assert.equal(res.status, 401, `headers ${Object.keys(headers)}`)
        await res.body?.cancel()
      }
    })
  }

  test('a bad Bearer token is not rescued by a valid apikey header', async () => {
    const res = await post('/realtime/v1/api/broadcast', {
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${mintToken({}, { secret: 'nope' })}`,
        apikey: mintToken(),
      },
      body: JSON.stringify({ messages: [{ topic: 'x', event: 'e', payload: {} }] }),
    })
    assert.equal(res.status, 401)
    await res.body?.cancel()
  })

  test('batch POST with unknown query params → 202 and every message delivered in order', async (t) => {
    const topic = uniqueName('batch')
    const v1 = await listener(t, '1.0.0', topic, { name: 'v1-listener' })
    const v2 = await listener(t, '2.0.0', topic, { name: 'v2-listener' })
    const token = mintToken()
    const res = await post('/realtime/v1/api/broadcast', {
      query: `?apikey=${token}&vsn=2.0.0&foo=bar`,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
      body: JSON.stringify({
        messages: [
          { topic, event: 'b1', payload: { i: 1 } },
          { topic, event: 'b2', payload: { i: 2 }, private: false },
          { topic, event: 'b3', payload: { i: 3 } },
        ],
      }),
    })
    assert.equal(res.status, 202)
    await res.body?.cancel()
    for (const l of [v1, v2]) {
      const got = await l.got.waitForCount(() => true, 3, 'three batched messages')
      assert.deepEqual(got.map((m) => m.event), ['b1', 'b2', 'b3'])
      assert.deepEqual(got.map((m) => m.payload.i), [1, 2, 3])
    }
  })

  test('POST /realtime/v1/api/broadcast/{topic}/events/{event} with the apikey header → 202', async (t) => {
    const topic = uniqueName('single')
    const l = await listener(t, '2.0.0', topic)
    const res = await post(`/realtime/v1/api/broadcast/${encodeURIComponent(topic)}/events/single-ev`, {
      query: `?apikey=${mintToken()}&vsn=1.0.0`,
      headers: { 'content-type': 'application/json', apikey: mintToken() },
      body: JSON.stringify({ x: 'y' }),
    })
    assert.equal(res.status, 202)
    await res.body?.cancel()
    const m = await l.got.waitFor((x) => x.event === 'single-ev', 'single-event REST broadcast')
    assert.deepEqual(m.payload, { x: 'y' })
  })

  test('POST /realtime/v1/api/broadcast/{topic}/events/{event} without credentials → 401', async () => {
    const res = await post('/realtime/v1/api/broadcast/room/events/e', {
      headers: { 'content-type': 'application/json' },
      body: '{}',
    })
    assert.equal(res.status, 401)
    await res.body?.cancel()
  })
})
