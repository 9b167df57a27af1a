// send.cjs drives a real analytics SDK against Surge for the Go tests in
// this folder. It reads one JSON job from stdin:
//
//   {"sdk": "segment" | "rudder", "host": "http://127.0.0.1:1234", "writeKey": "...",
//    "messages": [{"type": "track", "userId": "u", "event": "e", "messageId": "m1", ...}],
//    "flushAt": 20, "clockOffsetMs": 0, "gzip": true, "options": {...}}
//
// calls the SDK once per message (its type names the method), flushes, and
// prints one JSON line: {"delivered": n, "failed": n, "errors": ["..."]}.
// It exits 0 even when messages failed: the test judges the counts.
'use strict'

const fs = require('node:fs')

const job = JSON.parse(fs.readFileSync(0, 'utf8'))

// A client whose clock is off: every Date the SDK makes without an
// argument, and Date.now, run clockOffsetMs ahead.
if (job.clockOffsetMs) {
  const RealDate = Date
  const offset = job.clockOffsetMs
  class OffsetDate extends RealDate {
    constructor(...args) {
      if (args.length === 0) super(RealDate.now() + offset)
      else super(...args)
    }
    static now() {
      return RealDate.now() + offset
    }
  }
  globalThis.Date = OffsetDate
}

const errors = []
let delivered = 0
let failed = 0
function settle(err) {
  if (err) {
    failed++
    if (errors.length < 10) errors.push(String(err && err.message ? err.message : err))
  } else {
    delivered++
  }
}

async function segment() {
  const { Analytics } = require('@segment/analytics-node')
  const analytics = new Analytics({
    writeKey: job.writeKey,
    host: job.host,
    flushAt: job.flushAt || 15,
    flushInterval: 100,
    ...job.options,
  })
  const done = job.messages.map(
    ({ type, ...params }) => new Promise((resolve) => analytics[type](params, (err) => resolve(settle(err)))),
  )
  await analytics.closeAndFlush({ timeout: 90000 })
  await Promise.all(done)
}

async function rudder() {
  const Analytics = require('@rudderstack/rudder-sdk-node')
  const client = new Analytics(job.writeKey, {
    dataPlaneUrl: job.host,
    flushAt: job.flushAt || 20,
    flushInterval: 100,
    gzip: job.gzip !== false,
    logLevel: 'error',
    // Without a handler a failed flush is an unhandled rejection; the
    // message callbacks report it.
    errorHandler: () => {},
    ...job.options,
  })
  const done = job.messages.map(
    ({ type, ...params }) => new Promise((resolve) => client[type](params, (err) => resolve(settle(err)))),
  )
  while (client.queue.length > 0 || client.pendingFlush) {
    await client.flush().catch(() => {})
    if (client.queue.length === 0) break
  }
  await Promise.all(done)
}

const run = { segment, rudder }[job.sdk]
if (!run) throw new Error(`unknown sdk ${job.sdk}`)
run().then(
  () => process.stdout.write(JSON.stringify({ delivered, failed, errors }) + '\n'),
  (err) => {
    process.stderr.write(String(err && err.stack ? err.stack : err) + '\n')
    process.exit(1)
  },
)
