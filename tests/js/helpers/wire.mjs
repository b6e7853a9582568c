// Phoenix / Supabase Realtime wire codec (see shared/PROTOCOL.md §1.3), used by the frame spy and
// by raw-socket tests. It decodes both V1 (JSON object) and V2 (JSON array + binary kinds 3/4).

const td = new TextDecoder()
const te = new TextEncoder()

function toBuffer(data) {
  if (Buffer.isBuffer(data)) return data
  if (data instanceof ArrayBuffer) return Buffer.from(data)
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  if (Array.isArray(data)) return Buffer.concat(data.map(toBuffer))
  return Buffer.from(String(data))
}

/**
 * Decodes one WebSocket frame into `{form, join_ref, ref, topic, event, payload, ...}`.
 * `form` is 'v1' (object), 'v2' (array), 'kind3', 'kind4', or 'invalid'.
 */
export function decodeFrame(data, isBinary) {
  if (!isBinary) {
    const text = typeof data === 'string' ? data : toBuffer(data).toString('utf8')
    let parsed
    try {
      parsed = JSON.parse(text)
    } catch {
      return { form: 'invalid', text }
    }
    if (Array.isArray(parsed)) {
      const [join_ref, ref, topic, event, payload] = parsed
      return { form: 'v2', join_ref, ref, topic, event, payload, arity: parsed.length, text }
    }
    if (parsed && typeof parsed === 'object') {
      return {
        form: 'v1',
        join_ref: parsed.join_ref ?? null,
        hasJoinRef: 'join_ref' in parsed,
        ref: parsed.ref ?? null,
        topic: parsed.topic,
        event: parsed.event,
        payload: parsed.payload,
        text,
      }
    }
    return { form: 'invalid', text }
  }
  const buf = toBuffer(data)
  const kind = buf[0]
  try {
    if (kind === 4) return decodeKind4(buf)
    if (kind === 3) return decodeKind3(buf)
  } catch (e) {
    return { form: 'invalid', kind, bytes: buf, error: e.message }
  }
  return { form: 'binary', kind, bytes: buf }
}

/** Server → client "user broadcast" (kind 4). */
export function decodeKind4(buf) {
  const topicLen = buf[1]
  const eventLen = buf[2]
  const metaLen = buf[3]
  const encoding = buf[4]
  let o = 5
  if (buf.length < o + topicLen + eventLen + metaLen) throw new Error('truncated kind 4 frame')
  const topic = buf.subarray(o, (o += topicLen)).toString('utf8')
  const userEvent = buf.subarray(o, (o += eventLen)).toString('utf8')
  const metaText = buf.subarray(o, (o += metaLen)).toString('utf8')
  const body = buf.subarray(o)
  const payload = {
    type: 'broadcast',
    event: userEvent,
    payload: encoding === 1 ? JSON.parse(body.toString('utf8')) : Buffer.from(body),
  }
  if (metaLen > 0) payload.meta = JSON.parse(metaText)
  return { form: 'kind4', join_ref: null, ref: null, topic, event: 'broadcast', payload, encoding }
}

/** Client → server "user broadcast push" (kind 3). */
export function decodeKind3(buf) {
  const [, jrLen, refLen, topicLen, eventLen, metaLen, encoding] = buf
  let o = 7
  const s = (n) => buf.subarray(o, (o += n)).toString('utf8')
  const join_ref = s(jrLen)
  const ref = s(refLen)
  const topic = s(topicLen)
  const userEvent = s(eventLen)
  const metaText = s(metaLen)
  const body = buf.subarray(o)
  return {
    form: 'kind3',
    join_ref,
    ref,
    topic,
    event: 'broadcast',
    payload: {
      type: 'broadcast',
      event: userEvent,
      payload: encoding === 1 ? JSON.parse(body.toString('utf8')) : Buffer.from(body),
      ...(metaLen ? { meta: JSON.parse(metaText) } : {}),
    },
    encoding,
  }
}

/** Encodes a kind-3 frame exactly like realtime-js's serializer does. */
export function encodeKind3({ join_ref = '', ref = '', topic, event, payload, metadata = '' }) {
  const isBinary = payload instanceof ArrayBuffer || ArrayBuffer.isView(payload) || Buffer.isBuffer(payload)
  const body = isBinary ? toBuffer(payload) : Buffer.from(JSON.stringify(payload ?? {}))
  const parts = [join_ref, ref, topic, event, metadata].map((s) => Buffer.from(te.encode(s)))
  const header = Buffer.from([3, ...parts.map((p) => p.length), isBinary ? 0 : 1])
  return Buffer.concat([header, ...parts, body])
}

/** Encodes a message as V1 (object) or V2 (array) JSON text. */
export function encodeText(vsn, { join_ref = null, ref = null, topic, event, payload = {} }) {
  if (vsn === '1.0.0') {
    const o = { topic, event, payload, ref }
    if (join_ref !== null && join_ref !== undefined) o.join_ref = join_ref
    return JSON.stringify(o)
  }
  return JSON.stringify([join_ref, ref, topic, event, payload])
}

/** `"<epoch>:<offset>"` → {epoch, offset} (offset as a Number), or null if malformed. */
export function parseCursor(cursor) {
  if (typeof cursor !== 'string') return null
  const m = /^([^:]+):(\d+)$/.exec(cursor)
  if (!m) return null
  return { epoch: m[1], offset: Number(m[2]) }
}

export function bytesOf(x) {
  return [...new Uint8Array(x instanceof ArrayBuffer ? x : toBuffer(x))]
}

export { toBuffer, td, te }
