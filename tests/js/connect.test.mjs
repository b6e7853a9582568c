// Connection: endpoints, connect-time authentication (HTTP 401 on the upgrade), vsn handling.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub, mintToken } from './helpers/hub.mjs'
import {
  VERSIONS,
  newClient,
  subscribe,
  subscribeStatus,
  onBroadcast,
  connected,
  ping,
} from './helpers/client.mjs'
import { RawSocket, attemptUpgrade, wsUrl } from './helpers/raw.mjs'
import { uniqueName } from './helpers/wait.mjs'

let hub
before(async () => {
  hub = await startHub()
})
after(async () => {
  await hub?.stop()
})

const BAD_TOKENS = [
  { why: 'missing apikey', token: null, reason: 'API key is missing' },
  { why: 'expired token', token: () => mintToken({}, { expiresIn: -3600 }), reason: 'Token has expired' },
  { why: 'token without role', token: () => mintToken({ role: undefined }), reason: 'Fields `role` and `exp` are required in JWT' },
  { why: 'token without exp', token: () => mintToken({ exp: undefined }), reason: 'Fields `role` and `exp` are required in JWT' },
  { why: 'garbage token', token: 'not-a-jwt', reason: 'The token provided is not a valid JWT' },
  {
    why: 'token with an algorithm the hub does not accept (HS512)',
    token: () => mintToken({}, { header: { alg: 'HS512' } }),
    reason: "The token's algorithm HS512 is not accepted",
  },
  {
    why: 'unsigned token (alg none)',
    token: () => {
      const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url')
      const exp = Math.floor(Date.now() / 1000) + 3600
      return `${b64({ alg: 'none', typ: 'JWT' })}.${b64({ role: 'service_role', exp })}.`
    },
    reason: 'The token provided is not a valid JWT',
  },
  {
    why: 'token signed with another secret',
    token: () => mintToken({}, { secret: 'some-other-secret' }),
    reason: 'Failed to validate JWT signature',
  },
]

describe('connect-time authentication (raw upgrade)', () => {
  for (const path of ['/realtime/v1/websocket', '/socket/websocket']) {
    for (const { why, token, reason } of BAD_TOKENS) {
      test(`${path}: ${why} → HTTP 401 {"error": "${reason}"}`, async () => {
        const apikey = typeof token === 'function' ? token() : token
        const query = { vsn: '2.0.0' }
        if (apikey !== null) query.apikey = apikey
        const res = await attemptUpgrade(wsUrl(hub, { path, query }))
        assert.equal(res.status, 401, `expected 401, got ${res.status} ${res.body ?? ''}`)
        assert.deepEqual(res.json, { error: reason }, `body was ${JSON.stringify(res.body)}`)
      })
    }

    test(`${path}: valid apikey query parameter upgrades (101)`, async () => {
      const res = await attemptUpgrade(wsUrl(hub, { path, query: { apikey: mintToken(), vsn: '2.0.0' } }))
      assert.equal(res.status, 101)
    })
  }

  test('x-api-key header is accepted instead of the apikey query parameter', async () => {
    const res = await attemptUpgrade(wsUrl(hub, { query: { vsn: '2.0.0' } }), {
      headers: { 'x-api-key': mintToken() },
    })
    assert.equal(res.status, 101)
  })

  test('x-api-key header with a bad signature is rejected with 401', async () => {
    const res = await attemptUpgrade(wsUrl(hub, { query: { vsn: '2.0.0' } }), {
      headers: { 'x-api-key': mintToken({}, { secret: 'wrong' }) },
    })
    assert.equal(res.status, 401)
    assert.deepEqual(res.json, { error: 'Failed to validate JWT signature' })
  })

  test('unknown query parameters (log_level, foo) are ignored', async () => {
    const res = await attemptUpgrade(
      wsUrl(hub, { query: { apikey: mintToken(), foo: 'bar', log_level: 'info', vsn: '1.0.0' } })
    )
    assert.equal(res.status, 101)
  })

  test('missing vsn defaults to 1.0.0 (object-form heartbeat reply)', async (t) => {
    const raw = await RawSocket.open(hub, { vsn: null })
    t.after(() => raw.close())
    const reply = await raw.heartbeat()
    assert.equal(reply.form, 'v1', `reply was ${reply.text}`)
    assert.equal(reply.topic, 'phoenix')
    assert.deepEqual(reply.payload, { status: 'ok', response: {} })
  })
})

for (const vsn of VERSIONS) {
  describe(`realtime-js vsn ${vsn}: connecting`, () => {
    for (const endpoint of ['realtime', 'socket']) {
      test(`connects through /${endpoint === 'realtime' ? 'realtime/v1' : 'socket'}/websocket and exchanges a broadcast`, async (t) => {
        const topic = uniqueName('connect')
        const a = newClient(hub, { vsn, endpoint, t, name: 'a' })
        const b = newClient(hub, { vsn, endpoint, t, name: 'b' })
        const chA = a.channel(topic)
        const chB = b.channel(topic)
        const got = onBroadcast(chB, 'hello')
        await subscribe(chA)
        await subscribe(chB)
        const url = a.spy.sockets[0].url
        assert.match(url, new RegExp(`vsn=${vsn.replace(/\./g, '\\.')}`))
        assert.equal(await chA.send({ type: 'broadcast', event: 'hello', payload: { n: 1 } }), 'ok')
        const m = await got.waitFor((x) => x.payload?.n === 1, 'hello broadcast at b')
        assert.equal(m.event, 'hello')
      })
    }

    test('the client uses the requested wire format', async (t) => {
      const c = newClient(hub, { vsn, t })
      await connected(c)
      await ping(c)
      const out = c.spy.frames.find((f) => f.dir === 'out' && f.event === 'heartbeat')
      const reply = c.spy.frames.find((f) => f.dir === 'in' && f.ref === out.ref)
      assert.equal(out.form, vsn === '1.0.0' ? 'v1' : 'v2')
      assert.equal(reply.form, vsn === '1.0.0' ? 'v1' : 'v2', `heartbeat reply was ${reply.text}`)
      assert.equal(reply.event, 'phx_reply')
      assert.equal(reply.topic, 'phoenix')
      assert.deepEqual(reply.payload, { status: 'ok', response: {} })
      if (vsn === '2.0.0') assert.equal(reply.join_ref, null)
    })

    test('a client with an invalid apikey gets CHANNEL_ERROR (transport failure)', async (t) => {
      const c = newClient(hub, { vsn, t, token: mintToken({}, { secret: 'wrong' }) })
      const ch = c.channel(uniqueName('badkey'))
      const first = await subscribeStatus(ch)
      assert.equal(first.status, 'CHANNEL_ERROR')
      assert.equal(c.spy.events.find((e) => e.type === 'open'), undefined, 'socket must never open')
    })
  })
}
