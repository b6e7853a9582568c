// Raw `ws` connections speaking the Phoenix protocol by hand, for what realtime-js cannot produce
// (malformed frames, silence, slow reading, duplicate joins) and for checking HTTP upgrade errors.

import WebSocket from 'ws'

import { mintToken } from './hub.mjs'
import { decodeFrame, encodeText, encodeKind3 } from './wire.mjs'
import { EventLog, withTimeout, DEFAULT_WAIT_MS } from './wait.mjs'

export const DEFAULT_JOIN_CONFIG = {
  broadcast: { ack: false, self: false },
  presence: { key: '', enabled: false },
  postgres_changes: [],
  private: false,
}

export class RawSocket {
  /**
   * Opens a raw WebSocket to the hub.
   * @param {object} hub
   * @param {object} [o]
   * @param {'1.0.0'|'2.0.0'|null} [o.vsn] null omits the vsn query parameter
   * @param {string|null} [o.token] apikey query parameter (null omits it)
   * @param {string} [o.path] default /realtime/v1/websocket
   * @param {object} [o.headers]
   * @param {object} [o.wsOptions] extra ws client options (e.g. {autoPong: false})
   */
  static async open(hub, { vsn = '2.0.0', token, path = '/realtime/v1/websocket', headers = {}, wsOptions = {}, name } = {}) {
    const q = new URLSearchParams()
    const apikey = token === undefined ? mintToken() : token
    if (apikey !== null) q.set('apikey', apikey)
    if (vsn !== null) q.set('vsn', vsn)
    const url = `ws://127.0.0.1:${hub.port}${path}${q.size ? `?${q}` : ''}`
    const ws = new WebSocket(url, { headers, ...wsOptions })
    const raw = new RawSocket(ws, vsn ?? '1.0.0', name ?? `raw(vsn ${vsn})`)
    await withTimeout(
      new Promise((resolve, reject) => {
        ws.once('open', resolve)
        ws.once('error', reject)
      }),
      DEFAULT_WAIT_MS,
      `${raw.name} WebSocket open`
    )
    return raw
  }

  constructor(ws, vsn, name) {
    this.ws = ws
    this.vsn = vsn
    this.name = name
    this.refCounter = 100
    this.frames = new EventLog(`${name} incoming frames`)
    this.closeInfo = null
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: String(reason), t: Date.now() }
        resolve(this.closeInfo)
      })
    })
    ws.on('error', (err) => {
      this.lastError = err
    })
    ws.on('message', (data, isBinary) => this.frames.push({ binary: isBinary, t: Date.now(), ...decodeFrame(data, isBinary) }))
  }

  nextRef() {
    this.refCounter += 1
    return String(this.refCounter)
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN
  }

  sendRaw(data, opts) {
    this.ws.send(data, opts)
  }

  /** Sends one message in this socket's text encoding; returns its ref. */
  send({ join_ref = null, ref = this.nextRef(), topic, event, payload = {} }) {
    this.ws.send(encodeText(this.vsn, { join_ref, ref, topic, event, payload }))
    return ref
  }

  /** Sends a binary kind-3 broadcast push; returns its ref. */
  sendKind3({ join_ref, ref = this.nextRef(), topic, event, payload, metadata }) {
    this.ws.send(encodeKind3({ join_ref, ref, topic, event, payload, metadata }), { binary: true })
    return ref
  }

  waitReply(ref, what, timeoutMs = DEFAULT_WAIT_MS) {
    return this.frames.waitFor(
      (f) => f.event === 'phx_reply' && f.ref === ref,
      what ?? `${this.name} reply to ref ${ref}`,
      timeoutMs
    )
  }

  /** Joins `topic` (full topic, e.g. realtime:room) and resolves with {join_ref, reply}. */
  async join(topic, config = {}, { extra = {}, expect = 'ok', timeoutMs } = {}) {
    const ref = this.nextRef()
    this.send({
      join_ref: ref,
      ref,
      topic,
      event: 'phx_join',
      payload: { config: { ...DEFAULT_JOIN_CONFIG, ...config }, ...extra },
    })
    const reply = await this.waitReply(ref, `${this.name} join reply for ${topic}`, timeoutMs)
    if (expect && reply.payload?.status !== expect) {
      throw new Error(`${this.name} join ${topic}: expected ${expect}, got ${JSON.stringify(reply.payload)}`)
    }
    return { join_ref: ref, reply }
  }

  /** Sends a heartbeat and resolves with the reply frame. */
  async heartbeat(timeoutMs) {
    const ref = this.send({ topic: 'phoenix', event: 'heartbeat', payload: {} })
    return this.waitReply(ref, `${this.name} heartbeat reply`, timeoutMs)
  }

  waitClosed(what, timeoutMs = DEFAULT_WAIT_MS) {
    return withTimeout(this.closed, timeoutMs, what ?? `${this.name} close`)
  }

  close() {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) {
      this.ws.terminate()
    }
  }
}

/**
 * Attempts a WebSocket upgrade and reports the HTTP outcome:
 * `{status: 101}` on success, else `{status, headers, body, json}`.
 */
export function attemptUpgrade(url, { headers = {} } = {}) {
  return withTimeout(
    new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { headers })
      ws.on('error', () => {})
      ws.on('unexpected-response', (req, res) => {
        let body = ''
        res.setEncoding('utf8')
        res.on('data', (d) => (body += d))
        res.on('end', () => {
          let json
          try {
            json = JSON.parse(body)
          } catch {}
          resolve({ status: res.statusCode, headers: res.headers, body, json })
          req.destroy()
        })
      })
      ws.on('open', () => {
        resolve({ status: 101 })
        ws.terminate()
      })
      ws.once('error', (err) => reject(err))
    }),
    DEFAULT_WAIT_MS + 5000,
    `upgrade attempt to ${url}`
  )
}

/** The URL of the WebSocket endpoint with the given query. */
export function wsUrl(hub, { path = '/realtime/v1/websocket', query = {} } = {}) {
  const q = new URLSearchParams(query)
  return `ws://127.0.0.1:${hub.port}${path}${q.size ? `?${q}` : ''}`
}
