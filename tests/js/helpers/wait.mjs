// Event-driven waiting with timeouts and descriptive failure messages.
//
// Tests never sleep to wait for something to happen. They record what happens into an EventLog
// and wait for a predicate over it. The only timed waits are `expectNone`, which proves that
// something did NOT happen within a short window, and each use says so in a comment.

import { inspect } from 'node:util'

export const DEFAULT_WAIT_MS = 5000

export class TimeoutError extends Error {}

function show(item) {
  return inspect(item, { depth: 4, breakLength: Infinity, maxStringLength: 300, maxArrayLength: 20 })
}

/** An append-only log of things that happened, with waiters. */
export class EventLog {
  constructor(name) {
    this.name = name
    this.items = []
    this.waiters = new Set()
  }

  push(item) {
    this.items.push(item)
    for (const w of [...this.waiters]) w.check()
  }

  get length() {
    return this.items.length
  }

  filter(pred = () => true) {
    return this.items.filter(pred)
  }

  find(pred) {
    return this.items.find(pred)
  }

  last(n = 5) {
    return this.items.slice(-n)
  }

  describe(n = 8) {
    const tail = this.items.slice(-n).map((i) => '      ' + show(i))
    return `${this.name} has ${this.items.length} item(s)${tail.length ? `; last ${tail.length}:\n${tail.join('\n')}` : ''}`
  }

  /**
   * Resolves with the first item (at index >= from) matching `pred`, waiting for it if needed.
   * Rejects with a message naming `what` after `timeoutMs`.
   */
  waitFor(pred, what, timeoutMs = DEFAULT_WAIT_MS, { from = 0 } = {}) {
    return this.waitForCount(pred, 1, what, timeoutMs, { from }).then((found) => found[0])
  }

  /** Resolves with the first `count` items (index >= from) matching `pred`. */
  waitForCount(pred, count, what, timeoutMs = DEFAULT_WAIT_MS, { from = 0 } = {}) {
    return new Promise((resolve, reject) => {
      const waiter = {
        check: () => {
          const found = []
          for (let i = from; i < this.items.length && found.length < count; i++) {
            if (pred(this.items[i])) found.push(this.items[i])
          }
          if (found.length >= count) {
            clearTimeout(waiter.timer)
            this.waiters.delete(waiter)
            resolve(found)
            return true
          }
          waiter.seen = found.length
          return false
        },
      }
      if (waiter.check()) return
      waiter.timer = setTimeout(() => {
        this.waiters.delete(waiter)
        reject(
          new TimeoutError(
            `Timed out after ${timeoutMs} ms waiting for ${what}` +
              (count > 1 ? ` (saw ${waiter.seen}/${count})` : '') +
              `\n    ${this.describe()}`
          )
        )
      }, timeoutMs)
      this.waiters.add(waiter)
    })
  }

  /**
   * Asserts that no item matching `pred` appears within `windowMs` (also checks existing items
   * from index `from`). This is a bounded wait and only proves absence within the window.
   */
  async expectNone(pred, what, windowMs = 500, { from = 0 } = {}) {
    const check = () => this.items.slice(from).find(pred)
    let bad = check()
    if (bad === undefined && windowMs > 0) {
      await new Promise((resolve) => {
        const waiter = {
          check: () => {
            if (check() !== undefined) {
              clearTimeout(waiter.timer)
              this.waiters.delete(waiter)
              resolve()
            }
          },
        }
        waiter.timer = setTimeout(() => {
          this.waiters.delete(waiter)
          resolve()
        }, windowMs)
        this.waiters.add(waiter)
      })
      bad = check()
    }
    if (bad !== undefined) {
      throw new Error(`Expected no ${what}, but got: ${show(bad)}\n    ${this.describe()}`)
    }
  }
}

/** Races `promise` against a timer. */
export function withTimeout(promise, timeoutMs, what) {
  let timer
  const t = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new TimeoutError(`Timed out after ${timeoutMs} ms waiting for ${what}`)),
      timeoutMs
    )
  })
  return Promise.race([promise, t]).finally(() => clearTimeout(timer))
}

/**
 * Generic wait: `subject` is an EventLog (wait for a matching item), an EventEmitter-like object
 * (wait for `event`), or a promise.
 */
export function waitFor(subject, predOrEvent, what, timeoutMs = DEFAULT_WAIT_MS) {
  if (subject instanceof EventLog) return subject.waitFor(predOrEvent, what, timeoutMs)
  if (subject && typeof subject.once === 'function' && typeof predOrEvent === 'string') {
    return withTimeout(
      new Promise((resolve) => subject.once(predOrEvent, (...args) => resolve(args))),
      timeoutMs,
      what
    )
  }
  return withTimeout(Promise.resolve(subject), timeoutMs, what)
}

/** Unique-ish names so tests (and re-runs against a long-lived hub) never share topics. */
let counter = 0
export function uniqueName(prefix = 't') {
  counter += 1
  return `${prefix}-${process.pid}-${counter}-${Math.random().toString(36).slice(2, 8)}`
}

/** Small pause used only to pace a publisher, never to wait for an outcome. */
export function pace(ms) {
  return new Promise((r) => setTimeout(r, ms))
}
