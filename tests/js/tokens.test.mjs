// Tokens on live channels: setAuth() → access_token push; valid tokens keep the channel, invalid
// ones close it (system error, then CLOSED); expiry without refresh closes it too.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'

import { startHub, mintToken } from './helpers/hub.mjs'
import { VERSIONS, newClient, subscribe, subscribeStatus, onBroadcast, onSystem, statusLog } from './helpers/client.mjs'
import { RawSocket } from './helpers/raw.mjs'
import { uniqueName } from './helpers/wait.mjs'

let hub
before(async () => {
  hub = await startHub()
})
after(async () => {
  await hub?.stop()
})

for (const vsn of VERSIONS) {
  /** A joined member plus a publisher on the same topic. */
  async function pair(t, { token } = {}) {
    const topic = uniqueName('tok')
    const c = newClient(hub, { vsn, t, name: 'member', token })
    const ch = c.channel(topic)
    const got = onBroadcast(ch, '*', 'member broadcasts')
    const sys = onSystem(ch, 'member system messages')
    const p = newClient(hub, { vsn, t, name: 'publisher' })
    const pub = p.channel(topic)
    await Promise.all([subscribe(ch), subscribe(pub)])
    let n = 0
    const roundTrip = async (what) => {
      n += 1
      const mine = n
      await pub.send({ type: 'broadcast', event: 'probe', payload: { n: mine } })
      await got.waitFor((m) => m.payload.n === mine, `${what}: probe ${mine} delivered`)
    }
    return { c, ch, got, sys, pub, roundTrip }
  }

  async function expectClosedBySystemError(m, what, timeoutMs = 5000) {
    const sys = await m.sys.waitFor((s) => s.status === 'error', `system error after ${what}`, timeoutMs)
    assert.equal(typeof sys.message, 'string', `system message text: ${JSON.stringify(sys)}`)
    const closed = await statusLog(m.ch).waitFor((s) => s.status === 'CLOSED', `CLOSED after ${what}`, timeoutMs)
    const sysFrame = m.c.spy.frames.find((f) => f.dir === 'in' && f.event === 'system')
    const closeFrame = m.c.spy.frames.find((f) => f.dir === 'in' && f.event === 'phx_close')
    assert.ok(sysFrame && closeFrame, 'system and phx_close frames')
    assert.ok(m.c.spy.frames.items.indexOf(sysFrame) < m.c.spy.frames.items.indexOf(closeFrame), 'system before phx_close')
    assert.ok(closed)
    return sys
  }

  describe(`vsn ${vsn}: setAuth on a live channel`, () => {
    test('a valid new token is sent as access_token and the channel keeps working', async (t) => {
      const m = await pair(t)
      await m.roundTrip('before setAuth')
      const fresh = mintToken({ sub: 'user-2' })
      await m.c.setAuth(fresh)
      const push = await m.c.spy.frames.waitFor(
        (f) => f.dir === 'out' && f.event === 'access_token',
        'access_token push'
      )
      assert.deepEqual(push.payload, { access_token: fresh })
      assert.equal(push.topic, m.ch.topic)
      await m.roundTrip('after setAuth')
      assert.equal(m.sys.filter((s) => s.status === 'error').length, 0)
      assert.equal(statusLog(m.ch).filter((s) => s.status !== 'SUBSCRIBED').length, 0)
    })

    const INVALID = [
      ['signed with the wrong secret', () => mintToken({}, { secret: 'not-the-hub-secret' })],
      ['without role', () => mintToken({ role: undefined })],
      ['without exp', () => mintToken({ exp: undefined })],
      ['already expired', () => mintToken({}, { expiresIn: -3600 })],
      ['not a JWT', () => 'definitely.not.a-jwt'],
    ]
    for (const [why, make] of INVALID) {
      test(`a token ${why} closes the channel: system error, then CLOSED`, async (t) => {
        const m = await pair(t)
        await m.roundTrip('before setAuth')
        await m.c.setAuth(make())
        await expectClosedBySystemError(m, `setAuth(token ${why})`)
        assert.equal(m.c.getChannels().includes(m.ch), false, 'client removed the closed channel')
      })
    }

    test('an invalid access_token closes only the channel it was pushed on (raw)', async (t) => {
      const raw = await RawSocket.open(hub, { vsn })
      t.after(() => raw.close())
      const a = `realtime:${uniqueName('tok-a')}`
      const b = `realtime:${uniqueName('tok-b')}`
      const ja = await raw.join(a)
      const jb = await raw.join(b, { broadcast: { ack: true, self: true } })
      raw.send({ join_ref: ja.join_ref, topic: a, event: 'access_token', payload: { access_token: mintToken({}, { secret: 'wrong' }) } })
      const sys = await raw.frames.waitFor((f) => f.topic === a && f.event === 'system', 'system message on the bad channel')
      assert.equal(sys.payload.status, 'error')
      const close = await raw.frames.waitFor((f) => f.topic === a && f.event === 'phx_close', 'phx_close on the bad channel')
      if (vsn === '2.0.0') {
        assert.equal(sys.join_ref, ja.join_ref)
        assert.equal(close.join_ref, ja.join_ref)
        assert.equal(close.ref, ja.join_ref, 'phx_close ref = join_ref, or realtime-js ignores it')
      }
      // The other channel on the same connection is untouched.
      const ref = raw.send({ join_ref: jb.join_ref, topic: b, event: 'broadcast', payload: { type: 'broadcast', event: 'still', payload: {} } })
      assert.equal((await raw.waitReply(ref)).payload.status, 'ok')
      await raw.frames.waitFor((f) => f.topic === b && f.event === 'broadcast', 'own broadcast on the other channel')
      assert.equal(raw.frames.filter((f) => f.topic === b && (f.event === 'phx_close' || f.event === 'system')).length, 0)
      // The closed channel no longer accepts pushes.
      const ref2 = raw.send({ join_ref: ja.join_ref, topic: a, event: 'broadcast', payload: { type: 'broadcast', event: 'x', payload: {} } })
      const reply = await raw.waitReply(ref2)
      assert.deepEqual(reply.payload, { status: 'error', response: { reason: 'unmatched topic' } })
    })

    // PROTOCOL §6.1: a join carrying an invalid access_token is refused with the token error.
    test('subscribing after setAuth(invalid token) is refused with CHANNEL_ERROR', async (t) => {
      const c = newClient(hub, { vsn, t })
      await c.setAuth(mintToken({}, { secret: 'not-the-hub-secret' }))
      const ch = c.channel(uniqueName('tok-join'))
      const first = await subscribeStatus(ch)
      assert.equal(first.status, 'CHANNEL_ERROR')
      assert.match(first.message, /Failed to validate JWT signature/)
      await c.removeChannel(ch)
    })

    test('an sb_ publishable key sent as access_token is ignored (PROTOCOL §2.6/§10.10)', async (t) => {
      const m = await pair(t)
      await m.c.setAuth('sb_publishable_0123456789abcdef')
      await m.c.spy.frames.waitFor((f) => f.dir === 'out' && f.event === 'access_token', 'access_token push')
      await m.roundTrip('after sb_ key')
      assert.equal(m.sys.filter((s) => s.status === 'error').length, 0)
    })
  })

  describe(`vsn ${vsn}: token expiry`, { concurrency: true }, () => {
    test('the connect-time token expiring without refresh closes the channel', async (t) => {
      const m = await pair(t, { token: mintToken({}, { expiresIn: 3 }) })
      await m.roundTrip('while the token is valid')
      await expectClosedBySystemError(m, 'token expiry', 8000)
    })

    test('a setAuth token expiring without refresh closes the channel', async (t) => {
      const m = await pair(t)
      await m.c.setAuth(mintToken({}, { expiresIn: 3 }))
      await m.roundTrip('while the short token is valid')
      await expectClosedBySystemError(m, 'expiry of the setAuth token', 8000)
    })

    test('refreshing before expiry keeps the channel open past the old expiry', async (t) => {
      const m = await pair(t)
      const shortExp = Math.floor(Date.now() / 1000) + 2
      await m.c.setAuth(mintToken({ exp: shortExp }))
      await m.roundTrip('with the short token')
      await m.c.setAuth(mintToken({}, { expiresIn: 3600 }))
      await m.roundTrip('after the refresh')
      // Bounded absence check: wait until 1.5 s after the old token's expiry.
      const waitMs = shortExp * 1000 + 1500 - Date.now()
      await m.sys.expectNone((s) => s.status === 'error', 'system error after a refreshed token', Math.max(0, waitMs))
      await m.roundTrip('after the old expiry')
      assert.equal(statusLog(m.ch).filter((s) => s.status === 'CLOSED').length, 0)
    })
  })
}
