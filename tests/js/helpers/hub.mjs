// Spawning the hub binary and minting JWTs for it.
//
// Every test file starts its own hub on an ephemeral port (`--addr 127.0.0.1:0`) and stops it in
// `after`, so files can run in parallel without sharing state.

import { spawn } from 'node:child_process'
import crypto from 'node:crypto'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..')

/** The HS256 secret every test hub is started with (HUB_JWT_SECRET). */
export const TEST_JWT_SECRET = 'hub-e2e-test-secret-4f1c2b9a7d6e5c3b'

export function hubBinary() {
  return process.env.HUB_BIN || path.join(REPO_ROOT, 'target', 'debug', 'hub')
}

const LISTENING_RE = /hub listening on http:\/\/127\.0\.0\.1:(\d+)/
const START_TIMEOUT_MS = 15_000
const MAX_CAPTURE = 256 * 1024

/** Hubs started by this process, killed if the test process exits without stopping them. */
const running = new Set()
process.on('exit', () => {
  for (const child of running) {
    try {
      child.kill('SIGKILL')
    } catch {}
  }
})

function hasFlag(args, flag) {
  return args.some((a) => a === flag || a.startsWith(`${flag}=`))
}

/**
 * Starts the hub and resolves once it printed `hub listening on http://127.0.0.1:<port>`.
 *
 * @param {object} [opts]
 * @param {string[]} [opts.args] extra command-line arguments
 * @param {Record<string,string>} [opts.env] extra environment (merged over HUB_JWT_SECRET)
 * @param {boolean} [opts.addr] pass `--addr 127.0.0.1:0` (default true; set false to test HUB_ADDR)
 * @param {boolean} [opts.fastJoinErrors] pass `--join-error-delay 0s` unless args already set it
 */
export async function startHub({ args = [], env = {}, addr = true, fastJoinErrors = true } = {}) {
  const bin = hubBinary()
  const fullArgs = []
  if (addr) fullArgs.push('--addr', '127.0.0.1:0')
  if (fastJoinErrors && !hasFlag(args, '--join-error-delay') && !('HUB_JOIN_ERROR_DELAY' in env)) {
    fullArgs.push('--join-error-delay', '0s')
  }
  // Close connections at once on SIGTERM (the default spreads them over 5 s); the drain tests
  // that measure the window pass their own.
  if (!hasFlag(args, '--drain-window') && !('HUB_DRAIN_WINDOW' in env)) {
    fullArgs.push('--drain-window', '0s')
  }
  fullArgs.push(...args)

  // Do not leak HUB_* settings of the developer's shell into the hub under test.
  const baseEnv = {}
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('HUB_')) baseEnv[k] = v
  }
  const childEnv = { ...baseEnv, HUB_JWT_SECRET: TEST_JWT_SECRET, ...env }

  let stdout = ''
  let stderr = ''
  let exitInfo = null
  const child = spawn(bin, fullArgs, { env: childEnv, stdio: ['ignore', 'pipe', 'pipe'] })
  running.add(child)

  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      exitInfo = { code, signal }
      running.delete(child)
      resolve(exitInfo)
    })
  })

  const describeFailure = (why) =>
    `hub did not start (${why}).\n  binary: ${bin}\n  args: ${fullArgs.join(' ')}\n` +
    `  (build it with \`cargo build -p hub\` or point HUB_BIN at it)\n` +
    `  stdout:\n${indent(stdout)}\n  stderr:\n${indent(stderr)}`

  const port = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(describeFailure(`no listening line within ${START_TIMEOUT_MS} ms`)))
    }, START_TIMEOUT_MS)
    child.once('error', (err) => {
      clearTimeout(timer)
      reject(new Error(describeFailure(`spawn failed: ${err.message}`)))
    })
    child.stdout.setEncoding('utf8')
    child.stderr.setEncoding('utf8')
    child.stderr.on('data', (d) => {
      stderr = (stderr + d).slice(-MAX_CAPTURE)
    })
    let matched = false
    child.stdout.on('data', (d) => {
      stdout = (stdout + d).slice(-MAX_CAPTURE)
      if (matched) return
      const m = LISTENING_RE.exec(stdout)
      if (m) {
        matched = true
        clearTimeout(timer)
        resolve(Number(m[1]))
      }
    })
    exited.then(({ code, signal }) => {
      if (!matched) {
        clearTimeout(timer)
        reject(new Error(describeFailure(`exited early with code ${code} signal ${signal}`)))
      }
    })
  })

  return {
    port,
    httpUrl: `http://127.0.0.1:${port}`,
    wsEndpoint: `ws://127.0.0.1:${port}/realtime/v1`,
    socketEndpoint: `ws://127.0.0.1:${port}/socket`,
    args: fullArgs,
    process: child,
    exited,
    stdout: () => stdout,
    stderr: () => stderr,
    /**
     * SIGTERM, then wait for the process to exit. Resolves with the exit code
     * (null if it died from a signal). SIGKILLs and rejects if it does not exit in time.
     */
    async stop({ timeoutMs = 10_000 } = {}) {
      if (exitInfo) return exitInfo.code
      child.kill('SIGTERM')
      let timer
      const timedOut = new Promise((resolve) => {
        timer = setTimeout(() => resolve(null), timeoutMs)
      })
      const result = await Promise.race([exited, timedOut])
      clearTimeout(timer)
      if (!result) {
        child.kill('SIGKILL')
        await exited
        throw new Error(
          `hub did not exit within ${timeoutMs} ms of SIGTERM; stderr:\n${indent(stderr)}`
        )
      }
      return result.code
    },
  }
}

function indent(s) {
  const tail = s.length > 8000 ? '…' + s.slice(-8000) : s
  return tail
    .split('\n')
    .map((l) => '    ' + l)
    .join('\n')
}

function b64url(obj) {
  return Buffer.from(typeof obj === 'string' ? obj : JSON.stringify(obj)).toString('base64url')
}

/**
 * Mints an HS256 JWT.
 *
 * Defaults: `{role: 'authenticated', sub: <uuid>, iat: now, exp: now + expiresIn}`.
 * A claim given as `undefined` is omitted, e.g. `mintToken({exp: undefined})` has no `exp`.
 *
 * @param {Record<string, unknown>} [claims]
 * @param {object} [opts]
 * @param {string} [opts.secret] signing secret (default: the hub's test secret)
 * @param {number} [opts.expiresIn] seconds from now for `exp` (may be negative)
 * @param {Record<string, unknown>} [opts.header] extra/overriding JOSE header fields
 */
export function mintToken(claims = {}, { secret = TEST_JWT_SECRET, expiresIn = 3600, header = {} } = {}) {
  const now = Math.floor(Date.now() / 1000)
  const payload = {
    role: 'authenticated',
    sub: crypto.randomUUID(),
    iat: now,
    exp: now + expiresIn,
    ...claims,
  }
  const signingInput = `${b64url({ alg: 'HS256', typ: 'JWT', ...header })}.${b64url(payload)}`
  const sig = crypto.createHmac('sha256', secret).update(signingInput).digest('base64url')
  return `${signingInput}.${sig}`
}
