// Server-sent events against the hub: the real `eventsource` EventSource, a raw HTTP/1.1 reader
// for what EventSource hides (response head, comments, slow reading), and a REST publisher.
//
// Publishing goes through node:http with its own keep-alive agent, never through the global
// fetch: EventSource uses the global fetch (undici), and a request to /v1/sse/… on a pooled
// connection that already carried a REST call is not an SSE stream (see sse.test.mjs, "keep-alive
// connection reuse"). Keeping the two pools apart keeps every other test about what it tests.

import fs from 'node:fs'
import http from 'node:http'
import net from 'node:net'

import { EventSource } from 'eventsource'

import { mintToken } from './hub.mjs'
import { EventLog, withTimeout, DEFAULT_WAIT_MS } from './wait.mjs'

export { EventSource }

/** A service-role JWT (chat publishers, chat `input` subscribers). */
export function serviceToken(claims = {}) {
  return mintToken({ role: 'service_role', ...claims })
}

/** `/v1/sse/<topic, URL-encoded>?<query>`. */
export function ssePath(topic, query = {}) {
  const q = new URLSearchParams(query).toString()
  return `/v1/sse/${encodeURIComponent(topic)}${q ? `?${q}` : ''}`
}

export function sseUrl(hub, topic, query = {}) {
  return `${hub.httpUrl}${ssePath(topic, query)}`
}

/** A fetch for EventSource that adds `headers` to every request it makes. */
export function fetchWithHeaders(headers, calls) {
  return (url, init = {}) => {
    const all = { ...(init.headers ?? {}), ...headers }
    calls?.push({ url: String(url), headers: all })
    return fetch(url, { ...init, headers: all })
  }
}

const openSources = new Set()

/**
 * Opens a real EventSource on `topic` and records what it sees.
 *
 * @param {object} hub
 * @param {string} topic
 * @param {object} [o]
 * @param {string|null} [o.token] JWT (default: a fresh user token; null: none)
 * @param {'header'|'query'|'cookie'} [o.auth] how the token travels (default 'query', the only
 *   way a browser's EventSource can send it)
 * @param {Record<string,string>} [o.query] extra query parameters
 * @param {Record<string,string>} [o.headers] extra request headers (through a custom fetch)
 * @param {string[]} [o.events] event names to listen for (addEventListener)
 * @param {string} [o.url] connect here instead (e.g. through a proxy); path and query still apply
 * @param {import('node:test').TestContext} [o.t] closes the EventSource in t.after
 * @param {string} [o.name] label for failure messages
 * @returns {{es: EventSource, log: EventLog, life: EventLog, requests: object[], close(): void}}
 *   `log`: every event of the listened names ({type, lastEventId, data, json}); `life`: open and
 *   connection-error events ({type, code, message, readyState}); `requests`: headers of each fetch.
 */
export function openEventSource(
  hub,
  topic,
  { token, auth = 'query', query = {}, headers = {}, events = [], url, t, name = `EventSource(${topic})` } = {}
) {
  const jwt = token === undefined ? mintToken() : token
  const q = { ...query }
  const h = { ...headers }
  if (jwt !== null) {
    if (auth === 'query') q.access_token = jwt
    else if (auth === 'header') h.Authorization = `Bearer ${jwt}`
    else if (auth === 'cookie') h.Cookie = `theme=dark; access_token=${jwt}; other=1`
    else throw new Error(`unknown auth ${auth}`)
  }
  const base = url ?? hub.httpUrl
  const requests = []
  const es = new EventSource(`${base}${ssePath(topic, q)}`, { fetch: fetchWithHeaders(h, requests) })
  const log = new EventLog(`${name} events`)
  const life = new EventLog(`${name} open/error`)
  const record = (e) => {
    let json
    try {
      json = JSON.parse(e.data)
    } catch {}
    log.push({ type: e.type, lastEventId: e.lastEventId, data: e.data, json, t: Date.now() })
  }
  for (const ev of new Set([...events, 'message'])) {
    if (ev === 'error') continue
    es.addEventListener(ev, record)
  }
  es.addEventListener('open', () => life.push({ type: 'open', readyState: es.readyState, t: Date.now() }))
  // `error` is both EventSource's connection error and, possibly, a server event named "error"
  // (chat streams end with one): the latter is a MessageEvent with data.
  es.addEventListener('error', (e) => {
    if (typeof e.data === 'string') return record(e)
    life.push({ type: 'error', code: e.code, message: e.message, readyState: es.readyState, t: Date.now() })
  })
  const handle = {
    es,
    log,
    life,
    requests,
    name,
    close() {
      openSources.delete(handle)
      es.close()
    },
  }
  openSources.add(handle)
  if (t) t.after(() => handle.close())
  return handle
}

export function closeAllEventSources() {
  for (const h of [...openSources]) h.close()
}

/** Resolves on the EventSource's next `open` (from life index `from`). */
export function opened(handle, timeoutMs = DEFAULT_WAIT_MS, from = 0) {
  return handle.life.waitFor((e) => e.type === 'open', `${handle.name} open`, timeoutMs, { from })
}

// ---------------------------------------------------------------------------------------------
// Publishing (REST batch endpoint, service role by default)

const publishAgent = new http.Agent({ keepAlive: true, maxSockets: 4 })

/** One HTTP request through node:http; resolves `{status, headers, body}`. */
export function httpRequest(hub, { method = 'GET', path, headers = {}, body, agent = publishAgent }) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port: hub.port, method, path, headers, agent },
      (res) => {
        const chunks = []
        res.on('data', (d) => chunks.push(d))
        res.on('end', () =>
          resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString('utf8'), reusedSocket: req.reusedSocket })
        )
        res.on('error', reject)
      }
    )
    req.on('error', reject)
    req.end(body)
  })
}

/**
 * Publishes `messages` ({topic, event, payload}) in order through POST /api/broadcast, 100 per
 * request (the endpoint's batch limit). Throws unless every request is answered 202.
 */
export async function publish(hub, messages, { token = serviceToken(), batch = 100 } = {}) {
  for (let i = 0; i < messages.length; i += batch) {
    const body = JSON.stringify({ messages: messages.slice(i, i + batch) })
    const res = await httpRequest(hub, {
      method: 'POST',
      path: '/api/broadcast',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        'content-length': Buffer.byteLength(body),
      },
      body,
    })
    if (res.status !== 202) {
      throw new Error(`POST /api/broadcast answered ${res.status}: ${res.body}`)
    }
  }
}

/** Chat tokens `{event: 'token', payload: {text}}` for each text. */
export function tokenMessages(topic, texts) {
  return texts.map((text) => ({ topic, event: 'token', payload: { text } }))
}

/** Self-delimiting token texts `<i>` for i in [from, from + n), optionally padded. */
export function tokenTexts(n, from = 0, pad = '') {
  return Array.from({ length: n }, (_, k) => `<${from + k}>${pad}`)
}

/** Splits a text made of `<i>…` tokens back into the indices, in order. */
export function tokenIndices(text) {
  return [...text.matchAll(/<(\d+)>/g)].map((m) => Number(m[1]))
}

/** `{epoch, offset}` of an SSE id / cursor `<epoch>:<offset>`, or null. */
export function parseId(id) {
  const m = /^(.+):(\d+)$/.exec(id ?? '')
  return m ? { epoch: m[1], offset: Number(m[2]) } : null
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 SSE reader

/**
 * Incremental text/event-stream parser (the subset the hub emits, per the WHATWG rules: fields
 * `id`, `event`, `data` (joined with \n), `retry`; lines starting with `:` are comments).
 */
export class SseParser {
  constructor(onItem) {
    this.onItem = onItem
    this.buf = ''
    this.cur = null
  }

  feed(text) {
    this.buf += text
    let nl
    while ((nl = this.buf.indexOf('\n')) !== -1) {
      let line = this.buf.slice(0, nl)
      this.buf = this.buf.slice(nl + 1)
      if (line.endsWith('\r')) line = line.slice(0, -1)
      this.line(line)
    }
  }

  line(line) {
    if (line === '') {
      if (this.cur) this.onItem(this.cur)
      this.cur = null
      return
    }
    if (line.startsWith(':')) {
      this.onItem({ kind: 'comment', text: line.slice(1).trim() })
      return
    }
    const i = line.indexOf(':')
    const field = i === -1 ? line : line.slice(0, i)
    let value = i === -1 ? '' : line.slice(i + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'retry') {
      this.onItem({ kind: 'retry', value: Number(value) })
      return
    }
    this.cur ??= { kind: 'event', id: undefined, event: 'message', data: undefined }
    if (field === 'id') this.cur.id = value
    else if (field === 'event') this.cur.event = value
    else if (field === 'data') this.cur.data = this.cur.data === undefined ? value : `${this.cur.data}\n${value}`
  }
}

/**
 * A hand-written GET /v1/sse/… over a plain TCP socket: the response head as sent, every item of
 * the body (events, comments, retry), and control over reading (pause/resume) for slow readers.
 */
export class RawSse {
  /**
   * @param {object} hub
   * @param {string} path request target, e.g. ssePath(topic, {access_token})
   * @param {object} [o]
   * @param {Record<string,string>} [o.headers]
   * @param {boolean} [o.pauseAfterHead] stop reading once the head and the `retry:` hint arrived
   */
  static async open(hub, path, { headers = {}, pauseAfterHead = false, name } = {}) {
    const sock = net.connect(hub.port, '127.0.0.1')
    const raw = new RawSse(sock, name ?? `raw SSE ${path.split('?')[0]}`, pauseAfterHead)
    await withTimeout(
      new Promise((resolve, reject) => {
        sock.once('connect', resolve)
        sock.once('error', reject)
      }),
      DEFAULT_WAIT_MS,
      `${raw.name} TCP connect`
    )
    const lines = [`GET ${path} HTTP/1.1`, `Host: 127.0.0.1:${hub.port}`, 'Accept: text/event-stream']
    for (const [k, v] of Object.entries(headers)) lines.push(`${k}: ${v}`)
    sock.write(lines.join('\r\n') + '\r\n\r\n')
    await raw.waitHead()
    return raw
  }

  constructor(sock, name, pauseAfterHead) {
    this.sock = sock
    this.name = name
    this.pauseAfterHead = pauseAfterHead
    this.head = null
    this.headText = ''
    this.body = ''
    this.bytes = 0
    this.items = new EventLog(`${name} items`)
    this.parser = new SseParser((item) => this.items.push({ ...item, t: Date.now() }))
    this.endInfo = null
    this.ended = new Promise((resolve) => {
      sock.on('close', (hadError) => {
        this.endInfo = { hadError, t: Date.now() }
        resolve(this.endInfo)
      })
    })
    sock.on('error', (err) => {
      this.lastError = err
    })
    this.headLog = new EventLog(`${name} response head`)
    this.dataWaiters = new Set()
    sock.setEncoding('utf8')
    sock.on('data', (d) => this.onData(d))
  }

  onData(d) {
    this.bytes += Buffer.byteLength(d)
    if (!this.head) {
      this.headText += d
      const end = this.headText.indexOf('\r\n\r\n')
      if (end === -1) return
      const [statusLine, ...headerLines] = this.headText.slice(0, end).split('\r\n')
      const headers = {}
      for (const l of headerLines) {
        const i = l.indexOf(':')
        headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim()
      }
      this.head = { statusLine, status: Number(statusLine.split(' ')[1]), headers }
      d = this.headText.slice(end + 4)
      this.headLog.push(this.head)
    }
    this.body += d
    if (this.head.status === 200) this.parser.feed(d)
    if (this.pauseAfterHead && this.head.status === 200 && this.items.find((i) => i.kind === 'retry')) {
      this.pauseAfterHead = false
      this.sock.pause()
    }
    for (const w of [...this.dataWaiters]) w()
  }

  waitHead(timeoutMs = DEFAULT_WAIT_MS) {
    const what = this.pauseAfterHead ? 'response head and retry hint' : 'response head'
    return withTimeout(
      (async () => {
        const head = await this.headLog.waitFor(() => true, `${this.name} ${what}`, timeoutMs)
        if (this.pauseAfterHead && head.status === 200) {
          await this.items.waitFor((i) => i.kind === 'retry', `${this.name} retry hint`, timeoutMs)
        }
        return head
      })(),
      timeoutMs + 100,
      `${this.name} ${what}`
    )
  }

  /** Events only (no comments or retry). */
  get events() {
    return this.items.filter((i) => i.kind === 'event')
  }

  pause() {
    this.sock.pause()
  }

  resume() {
    this.sock.resume()
  }

  /**
   * Lets the socket read until at least `count` more events were parsed than `from`, then pauses
   * it again: a reader that takes one event at a time. Resolves with the event count.
   */
  async readEvents(from, count, what, timeoutMs = DEFAULT_WAIT_MS) {
    const target = from + count
    const have = () => this.events.length
    if (have() >= target) return have()
    await withTimeout(
      new Promise((resolve) => {
        const check = () => {
          if (have() >= target || this.endInfo) {
            this.sock.pause()
            this.dataWaiters.delete(check)
            resolve()
          }
        }
        this.dataWaiters.add(check)
        this.ended.then(check)
        this.sock.resume()
      }),
      timeoutMs,
      `${this.name}: ${what}`
    )
    return have()
  }

  close() {
    this.sock.destroy()
  }
}

// ---------------------------------------------------------------------------------------------
// Process and socket introspection (Linux /proc)

/** The resident set size of process `pid` in KiB (VmRSS from /proc/<pid>/status). */
export function rssKiB(pid) {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`)
  return Number(m[1])
}

const TCP_STATES = { 1: 'ESTABLISHED', 4: 'FIN_WAIT1', 5: 'FIN_WAIT2', 6: 'TIME_WAIT', 7: 'CLOSE', 8: 'CLOSE_WAIT', 9: 'LAST_ACK' }

/**
 * Kernel queue sizes and states of the loopback TCP connection whose client end is bound to `clientPort`
 * (from /proc/net/tcp): `{client: {tx, rx, state}, server: {tx, rx, state}}`, queues in bytes.
 */
export function tcpQueues(clientPort) {
  const hex = clientPort.toString(16).toUpperCase().padStart(4, '0')
  const out = {}
  for (const line of fs.readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const f = line.trim().split(/\s+/)
    if (f.length < 5) continue
    const [tx, rx] = f[4].split(':').map((h) => parseInt(h, 16))
    const state = TCP_STATES[parseInt(f[3], 16)] ?? f[3]
    if (f[1].endsWith(`:${hex}`)) out.client = { tx, rx, state }
    if (f[2].endsWith(`:${hex}`)) out.server = { tx, rx, state }
  }
  return out
}

/** Loopback socket buffer ceilings: `{wmemMax, rmemDefault}` in bytes. */
export function tcpBufferSizes() {
  const read = (f) => fs.readFileSync(`/proc/sys/net/ipv4/${f}`, 'utf8').trim().split(/\s+/).map(Number)
  return { wmemMax: read('tcp_wmem')[2], rmemDefault: read('tcp_rmem')[1] }
}

/**
 * Asserts two (long) texts are equal, reporting lengths, token counts and the first difference
 * instead of dumping both texts.
 */
export function assertSameText(actual, expected, what) {
  if (actual === expected) return
  let i = 0
  while (i < actual.length && i < expected.length && actual[i] === expected[i]) i++
  const at = (s) => JSON.stringify(s.slice(Math.max(0, i - 20), i + 40))
  const a = tokenIndices(actual)
  throw new assertTextError(
    `${what}: texts differ. actual ${actual.length} chars (${a.length} <i> tokens, first <${a[0]}>, last <${a.at(-1)}>), ` +
      `expected ${expected.length} chars (${tokenIndices(expected).length} tokens); first difference at ${i}: ` +
      `actual …${at(actual)}… expected …${at(expected)}…`
  )
}

class assertTextError extends Error {
  name = 'AssertionError'
}
