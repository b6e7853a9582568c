// The path most apps use: @supabase/supabase-js createClient(<hub http url>, <anon key>).
// supabase-js derives ws://…/realtime/v1, passes the key as apikey, and (signed out) also pushes the
// key as access_token after joining.

import { describe, test, before, after } from 'node:test'
import assert from 'node:assert/strict'
import WebSocket from 'ws'

import { startHub, mintToken } from './helpers/hub.mjs'
import { EventLog, uniqueName, withTimeout } from './helpers/wait.mjs'

// supabase-js prints a Node 20 deprecation notice on import; it is harmless here.
const { createClient } = await import('@supabase/supabase-js')

let hub
before(async () => {
  hub = await startHub()
})
after(async () => {
  await hub?.stop()
})

function client(t, vsn, key = mintToken({ role: 'anon' })) {
  const sb = createClient(hub.httpUrl, key, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: { transport: WebSocket, vsn, logger: () => {} },
  })
  t.after(async () => {
    await withTimeout(sb.removeAllChannels(), 5000, 'removeAllChannels').catch(() => {})
  })
  return sb
}

function subscribed(channel) {
  const statuses = new EventLog(`${channel.topic} statuses`)
  channel.subscribe((status, err) => statuses.push({ status, message: err?.message }))
  return statuses.waitFor(() => true, `subscribe ${channel.topic}`).then((s) => {
    if (s.status !== 'SUBSCRIBED') throw new Error(`${channel.topic}: ${s.status} ${s.message ?? ''}`)
    return statuses
  })
}

for (const vsn of ['1.0.0', '2.0.0']) {
  describe(`supabase-js with vsn ${vsn}`, () => {
    test('broadcast and presence between two supabase-js clients', async (t) => {
      const a = client(t, vsn)
      const b = client(t, vsn)
      const topic = uniqueName('sbjs')
      const got = new EventLog('b broadcasts')
      const pres = new EventLog('b presence')
      const chA = a.channel(topic, { config: { presence: { key: 'a' } } })
      const chB = b
        .channel(topic, { config: { presence: { key: 'b' } } })
        .on('broadcast', { event: 'hi' }, (m) => got.push(m))
        .on('presence', { event: 'join' }, (e) => pres.push(e))
      const statusesA = await subscribed(chA)
      await subscribed(chB)
      assert.equal(a.realtime.endpointURL().startsWith(`ws://127.0.0.1:${hub.port}/realtime/v1/websocket?apikey=`), true)
      assert.equal(await chA.track({ who: 'a' }), 'ok')
      await pres.waitFor((e) => e.key === 'a', 'b sees a join')
      assert.equal(await chA.send({ type: 'broadcast', event: 'hi', payload: { x: 1 } }), 'ok')
      const m = await got.waitFor((x) => x.payload?.x === 1, 'b gets the broadcast')
      assert.ok(m.meta?.cursor)
      // supabase-js pushed the key as access_token after the join (callback-token mode); the
      // channel must survive that.
      assert.equal(statusesA.filter((s) => s.status !== 'SUBSCRIBED').length, 0)
    })

    test('httpSend through supabase-js reaches socket members', async (t) => {
      const a = client(t, vsn)
      const b = client(t, vsn)
      const topic = uniqueName('sbjs-rest')
      const got = new EventLog('b broadcasts')
      const chB = b.channel(topic).on('broadcast', { event: '*' }, (m) => got.push(m))
      await subscribed(chB)
      const res = await a.channel(topic).httpSend('rest-ev', { r: 1 })
      assert.deepEqual(res, { success: true })
      await got.waitFor((x) => x.event === 'rest-ev', 'REST broadcast at b')
    })
  })
}
