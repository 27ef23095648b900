// A typical Alma webhook listener in Node, as the bench's peer: Express with the raw body
// (the signature is over the exact bytes), HMAC-SHA256 checked with timingSafeEqual, the
// same CloudEvent as almabridge, written to Kafka (kafkajs, acks=all, idempotent) or Redis
// Streams (ioredis XADD), and 200 only after the write was acknowledged; 401 for a bad
// signature, 400 for a body that is not JSON, 503 when the write fails.
//
// Environment: PORT, SECRET, SINK (kafka|redis), BROKERS (host:port,...), TOPIC,
// REDIS_URL, STREAM. Dependencies: package.json / package-lock.json here, installed by
// bench/peers.py with `npm ci` into .cache/bench/node (NODE_PATH points there).
'use strict';

const crypto = require('crypto');
const express = require('express');

const port = Number(process.env.PORT || 8080);
const secret = process.env.SECRET || 'bench';
const sink = process.env.SINK || 'kafka';
const topic = process.env.TOPIC || 'alma.bench';
const stream = process.env.STREAM || 'alma';

function cloudEvent(d) {
  const inst = (d.institution && d.institution.value) || 'unknown';
  const action = String(d.action || '');
  const ev = (d.event && d.event.value) || '';
  return {
    specversion: '1.0',
    id: String(d.id),
    source: 'urn:alma:' + inst,
    type: 'com.exlibrisgroup.alma.' + action.toLowerCase() + (ev ? '.' + ev.toLowerCase() : ''),
    time: d.time || '',
    datacontenttype: 'application/json',
    almaaction: action,
    almaevent: ev,
    almainstitution: inst,
    data: d,
  };
}

async function makeWriter() {
  if (sink === 'redis') {
    const Redis = require('ioredis');
    const redis = new Redis(process.env.REDIS_URL || 'redis://127.0.0.1:6379');
    return {
      write: (ce) => redis.xadd(stream, '*', 'event', JSON.stringify(ce)),
      ready: () => redis.status === 'ready',
    };
  }
  const { Kafka, logLevel } = require('kafkajs');
  const kafka = new Kafka({
    clientId: 'alma-listener',
    brokers: (process.env.BROKERS || '127.0.0.1:9092').split(','),
    logLevel: logLevel.ERROR,
  });
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  return {
    write: (ce) => producer.send({ topic, acks: -1, messages: [{ key: ce.id, value: JSON.stringify(ce) }] }),
    ready: () => true,
  };
}

async function main() {
  const writer = await makeWriter();
  const app = express();
  app.disable('x-powered-by');
  app.get('/healthz', (req, res) => res.status(writer.ready() ? 200 : 503).send('ok'));
  app.post('/webhook', express.raw({ type: () => true, limit: '4mb' }), async (req, res) => {
    const body = Buffer.isBuffer(req.body) ? req.body : Buffer.alloc(0);
    const want = crypto.createHmac('sha256', secret).update(body).digest();
    const given = Buffer.from(String(req.get('X-Exl-Signature') || '').trim(), 'base64');
    if (given.length !== want.length || !crypto.timingSafeEqual(given, want)) {
      return res.status(401).json({ error: 'bad signature' });
    }
    let d;
    try {
      d = JSON.parse(body.toString('utf8'));
    } catch (e) {
      return res.status(400).json({ error: 'body is not JSON' });
    }
    if (d === null || typeof d !== 'object' || d.id === undefined) {
      return res.status(400).json({ error: 'not an Alma webhook' });
    }
    const ce = cloudEvent(d);
    try {
      await writer.write(ce);
    } catch (e) {
      return res.status(503).set('Retry-After', '30').json({ error: 'sink unavailable' });
    }
    res.json({ id: ce.id, status: 'accepted' });
  });
  const server = app.listen(port, '127.0.0.1', () =>
    console.error(`node listener on 127.0.0.1:${port}, sink ${sink}`));
  server.keepAliveTimeout = 65000;
  const stop = () => server.close(() => process.exit(0));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
