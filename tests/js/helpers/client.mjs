// Helpers around the UNMODIFIED @supabase/realtime-js client.
//
// Every client gets a spying `ws` transport (a subclass of ws's WebSocket that records every frame
// in and out) so tests can check what crossed the wire, plus helpers that turn the client's
// callbacks into EventLogs that can be awaited with a timeout.

import { RealtimeClient } from '@supabase/realtime-js'
import WebSocket from 'ws'

import { mintToken } from './hub.mjs'
import { decodeFrame } from './wire.mjs'
import { EventLog, withTimeout, DEFAULT_WAIT_MS } from './wait.mjs'

export const VERSIONS = ['1.0.0', '2.0.0']

/** Records frames and socket lifecycle events of one RealtimeClient. */
export class FrameSpy {
  constructor(name) {
    this.name = name
    this.frames = new EventLog(`${name} frames`)
    this.events = new EventLog(`${name} socket events`)
    this.sockets = []
  }

  /** Incoming frames, optionally for one topic / event. */
  incoming({ topic, event } = {}) {
    return this.frames.filter(
      (f) => f.dir === 'in' && (!topic || f.topic === topic) && (!event || f.event === event)
    )
  }

  outgoing({ topic, event } = {}) {
    return this.frames.filter(
      (f) => f.dir === 'out' && (!topic || f.topic === topic) && (!event || f.event === event)
    )
  }

  get current() {
    return this.sockets[this.sockets.length - 1]
  }
}

function spyTransport(spy) {
  return class SpyWebSocket extends WebSocket {
    constructor(address, protocols, options) {
      super(address, protocols, options)
      const socket = spy.sockets.length
      spy.sockets.push(this)
      this.on('open', () => spy.events.push({ type: 'open', socket, t: Date.now() }))
      this.on('close', (code, reason) =>
        spy.events.push({ type: 'close', socket, code, reason: String(reason), t: Date.now() })
      )
      this.on('error', (err) => spy.events.push({ type: 'error', socket, message: err.message }))
      this.on('message', (data, isBinary) =>
        spy.frames.push({ dir: 'in', socket, binary: isBinary, t: Date.now(), ...decodeFrame(data, isBinary) })
      )
    }

    send(data, ...rest) {
      const isBinary = typeof data !== 'string'
      spy.frames.push({
        dir: 'out',
        socket: spy.sockets.indexOf(this),
        binary: isBinary,
        t: Date.now(),
        ...decodeFrame(data, isBinary),
      })
      return super.send(data, ...rest)
    }
  }
}

const allClients = new Set()

/**
 * Creates a RealtimeClient connected to `hub`.
 *
 * @param {object} hub from startHub()
 * @param {object} [opts]
 * @param {'1.0.0'|'2.0.0'} [opts.vsn]
 * @param {string} [opts.token] apikey (default: a fresh valid JWT)
 * @param {'realtime'|'socket'} [opts.endpoint] /realtime/v1 (default) or /socket
 * @param {import('node:test').TestContext} [opts.t] registers disconnect() in t.after
 * @param {string} [opts.name] label used in failure messages
 * Other options are passed to RealtimeClient.
 */
export function newClient(hub, { vsn = '2.0.0', token, endpoint = 'realtime', t, name, params = {}, ...options } = {}) {
  const label = name ?? `client(vsn ${vsn})`
  const spy = new FrameSpy(label)
  const logs = []
  const client = new RealtimeClient(endpoint === 'socket' ? hub.socketEndpoint : hub.wsEndpoint, {
    transport: spyTransport(spy),
    params: { apikey: token ?? mintToken(), ...params },
    vsn,
    timeout: 5000,
    // A logger keeps the REST-fallback warnings off the console and lets tests inspect them.
    logger: (kind, msg, data) => {
      if (kind !== 'push' && kind !== 'receive') logs.push({ kind, msg, data })
    },
    ...options,
  })
  client.spy = spy
  client.logs = logs
  client.label = label
  allClients.add(client)
  if (t) t.after(() => closeClient(client))
  return client
}

export async function closeClient(client) {
  allClients.delete(client)
  // disconnect() leaves a 10 s safety timer behind; tests run with --test-force-exit.
  await withTimeout(client.disconnect(), 5000, `${client.label} disconnect`).catch(() => {})
}

export async function closeAllClients() {
  await Promise.all([...allClients].map(closeClient))
}

/** The client's current underlying ws WebSocket (phoenix's `socket.conn`). */
export function rawConn(client) {
  return client.socketAdapter.getSocket().conn
}

/** Resolves once the client's socket is open (connecting it if needed). */
export async function connected(client, timeoutMs = DEFAULT_WAIT_MS) {
  if (client.isConnected()) return
  const opened = client.spy.events.waitFor(
    (e) => e.type === 'open',
    `${client.label} socket open`,
    timeoutMs,
    { from: client.spy.events.length }
  )
  client.connect()
  await opened
}

/**
 * Sends a heartbeat through phoenix's ping() and resolves when the server answered it. Since the
 * hub answers a connection's frames in order, every reply to a frame this client sent earlier has
 * arrived by then: a causal barrier, no timing involved.
 */
export function ping(client, timeoutMs = DEFAULT_WAIT_MS) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const ok = client.socketAdapter.getSocket().ping((rtt) => resolve(rtt))
      if (!ok) reject(new Error(`${client.label}: ping while not connected`))
    }),
    timeoutMs,
    `${client.label} heartbeat reply`
  )
}

const statusLogs = new WeakMap()

/** Log of `{status, err, message}` reported to the channel's subscribe callback. */
export function statusLog(channel) {
  let log = statusLogs.get(channel)
  if (!log) {
    log = new EventLog(`${channel.topic} subscribe statuses`)
    statusLogs.set(channel, log)
  }
  return log
}

/** Calls channel.subscribe() once, recording every status it reports. */
export function startSubscribe(channel, timeout) {
  const log = statusLog(channel)
  if (!log.started) {
    log.started = true
    channel.subscribe((status, err) => {
      log.push({ status, err, message: err?.message, t: Date.now() })
    }, timeout)
  }
  return log
}

/** Subscribes and resolves on SUBSCRIBED; rejects with the status/error otherwise. */
export async function subscribe(channel, { timeout = DEFAULT_WAIT_MS } = {}) {
  const log = startSubscribe(channel, timeout)
  const from = log.length
  const first = await log.waitFor(() => true, `subscribe status of ${channel.topic}`, timeout + 1000, { from })
  if (first.status !== 'SUBSCRIBED') {
    throw new Error(
      `subscribe(${channel.topic}) reported ${first.status}${first.message ? `: ${first.message}` : ''}`
    )
  }
  return channel
}

/** Subscribes and resolves with the first status reported (for join failures). */
export async function subscribeStatus(channel, { timeout = DEFAULT_WAIT_MS } = {}) {
  const log = startSubscribe(channel, timeout)
  return log.waitFor(() => true, `subscribe status of ${channel.topic}`, timeout + 1000)
}

/** Records broadcasts for `event` ('*' for all) into an EventLog. */
export function onBroadcast(channel, event = '*', name) {
  const log = new EventLog(name ?? `broadcasts '${event}' on ${channel.topic}`)
  channel.on('broadcast', { event }, (msg) => log.push(msg))
  return log
}

/** Records presence join/leave/sync events (must be called before subscribe). */
export function onPresence(channel, name) {
  const log = new EventLog(name ?? `presence events on ${channel.topic}`)
  channel.on('presence', { event: '*' }, (ev) => log.push(ev))
  return log
}

/** Records `system` messages. */
export function onSystem(channel, name) {
  const log = new EventLog(name ?? `system messages on ${channel.topic}`)
  channel.on('system', {}, (msg) => log.push(msg))
  return log
}

/** Broadcast payloads sent by tests carry a sequence number and a tag to identify them. */
export function msg(tag, seq, extra = {}) {
  return { tag, seq, ...extra }
}

/** Converts an ArrayBuffer/Buffer into a plain array of byte values for assertions. */
export function byteArray(x) {
  if (x instanceof ArrayBuffer) return [...new Uint8Array(x)]
  if (ArrayBuffer.isView(x)) return [...new Uint8Array(x.buffer, x.byteOffset, x.byteLength)]
  throw new Error(`not binary: ${Object.prototype.toString.call(x)}`)
}

// Re-exported so tests can import all waiting helpers from here.
export { EventLog, waitFor, withTimeout, uniqueName } from './wait.mjs'
