'use strict';
// Tests of client/node against a live attention-server: the model list, an
// Attend compared with attention-cli on the same .npy input, and a NOT_FOUND;
// then the bearer token and mutual TLS against an in-process fake server.
// Env: ATTN_TARGET (server), ATTN_BIN (directory of attention-cli).
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');
const grpc = require('@grpc/grpc-js');
const {
  createClient, connectionFromArgv, loadAttentionPackage, float32Tensor, decodeTensor, call,
} = require('../../client/node/attention');

const TARGET = process.env.ATTN_TARGET;
const BIN = process.env.ATTN_BIN;
assert.ok(TARGET && BIN, 'set ATTN_TARGET and ATTN_BIN (see node_client_test.sh)');

// A float32 C-order .npy image (format 1.0).
function npyBytes(data, shape) {
  const dims = shape.length === 1 ? `${shape[0]},` : shape.join(', ');
  let header = `{'descr': '<f4', 'fortran_order': False, 'shape': (${dims}), }`;
  header += ' '.repeat(63 - ((10 + header.length) % 64)) + '\n';
  const prefix = Buffer.alloc(10);
  Buffer.from('\x93NUMPY', 'latin1').copy(prefix);
  prefix[6] = 1;
  prefix.writeUInt16LE(header.length, 8);
  return Buffer.concat([prefix, Buffer.from(header, 'latin1'), float32Tensor(data, shape).raw_data]);
}

function readNpy(file) {
  const b = fs.readFileSync(file);
  assert.equal(b.toString('latin1', 0, 6), '\x93NUMPY');
  const [start, len] = b[6] === 1 ? [10, b.readUInt16LE(8)] : [12, b.readUInt32LE(8)];
  const header = b.toString('latin1', start, start + len);
  assert.match(header, /'descr': '<f4'/);
  assert.match(header, /'fortran_order': False/);
  const shape = header.match(/'shape': \(([^)]*)\)/)[1].split(',').filter((s) => s.trim())
    .map(Number);
  return decodeTensor({ dtype: 'FLOAT32', shape, raw_data: b.subarray(start + len) }, file);
}

// Deterministic inputs in [-1, 1) (a small LCG; no seeding API in Math.random).
function randomValues(count, seed) {
  const out = new Float32Array(count);
  let s = seed >>> 0;
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 31 - 1;
  }
  return out;
}

const client = createClient(TARGET);
test.after(() => client.close());

test('ListModels and GetModel show the built-in model', async () => {
  const { models } = await call(client, 'ListModels', {});
  assert.deepEqual(models.map((m) => m.name), ['default']);
  const info = await call(client, 'GetModel', { name: 'default' });
  assert.equal(info.embed_dim, 512);
  assert.equal(info.num_heads, 8);
  assert.equal(info.dtype, 'FLOAT32');
});

test('Attend matches attention-cli on the same input', async () => {
  const shape = [2, 5, 512];
  const query = randomValues(shape[0] * shape[1] * shape[2], 42);
  const response = await call(client, 'Attend', {
    model_name: 'default', request_id: 'node-test', query: float32Tensor(query, shape),
  });
  assert.equal(response.request_id, 'node-test');
  const out = decodeTensor(response.output, 'output');
  assert.deepEqual(out.shape, shape);
  assert.ok(response.timing.batch_size >= 1);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'node-client-'));
  try {
    const input = path.join(dir, 'query.npy');
    const output = path.join(dir, 'out.npy');
    fs.writeFileSync(input, npyBytes(query, shape));
    const cli = spawnSync(path.join(BIN, 'attention-cli'),
      ['attend', `--target=${TARGET}`, `--input=${input}`, `--output=${output}`],
      { encoding: 'utf8' });
    assert.equal(cli.status, 0, `attention-cli failed: ${cli.stderr}`);
    const expected = readNpy(output);
    assert.deepEqual(expected.shape, shape);
    let worst = 0;
    for (let i = 0; i < expected.data.length; i++) {
      const err = Math.abs(out.data[i] - expected.data[i]) / (1e-6 + Math.abs(expected.data[i]));
      worst = Math.max(worst, err);
    }
    assert.ok(worst <= 1e-5, `largest relative difference ${worst}`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an unknown model is NOT_FOUND and the message lists the models', async () => {
  const query = float32Tensor(new Float32Array(4 * 512), [4, 512]);
  await assert.rejects(call(client, 'Attend', { model_name: 'no_such_model', query }), (err) => {
    assert.equal(err.codeName, 'NOT_FOUND');
    assert.match(err.details, /no_such_model.*default/);
    return true;
  });
});

// A fake AttentionService (ListModels, Attend, AttendStream) recording each
// call's authorization metadata (null when absent).
async function fakeServer(credentials = grpc.ServerCredentials.createInsecure()) {
  const seen = [];
  const auth = (metadata) => metadata.get('authorization')[0] ?? null;
  const server = new grpc.Server();
  server.addService(loadAttentionPackage().AttentionService.service, {
    ListModels(c, done) { seen.push(['ListModels', auth(c.metadata)]); done(null, { models: [] }); },
    Attend(c, done) {
      seen.push(['Attend', auth(c.metadata)]);
      done(null, { request_id: c.request.request_id, output: c.request.query });
    },
    AttendStream(c) {
      seen.push(['AttendStream', auth(c.metadata)]);
      c.on('data', (r) => c.write({ request_id: r.request_id }));
      c.on('end', () => c.end());
    },
  });
  const port = await new Promise((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', credentials, (err, p) => (err ? reject(err) : resolve(p)));
  });
  return { server, seen, port };
}

async function everyKind(c) {
  await call(c, 'ListModels', {});
  await call(c, 'Attend', { request_id: 'a', query: float32Tensor(new Float32Array(4), [1, 4]) });
  await new Promise((resolve, reject) => {
    const stream = c.AttendStream();
    stream.on('data', () => {});
    stream.on('error', reject);
    stream.on('end', resolve);
    stream.write({ request_id: 's' });
    stream.end();
  });
}

test('the token goes out on unary and streaming calls; ATTN_TOKEN is the default', async () => {
  const { server, seen, port } = await fakeServer();
  const saved = process.env.ATTN_TOKEN;
  try {
    delete process.env.ATTN_TOKEN;
    const withToken = createClient(`127.0.0.1:${port}`, { token: 'tok-1' });
    await everyKind(withToken);
    withToken.close();
    assert.deepEqual(seen.splice(0), [['ListModels', 'Bearer tok-1'], ['Attend', 'Bearer tok-1'],
                                      ['AttendStream', 'Bearer tok-1']]);
    const none = createClient(`127.0.0.1:${port}`);
    await everyKind(none);
    none.close();
    assert.deepEqual(seen.splice(0).map(([, a]) => a), [null, null, null]);
    process.env.ATTN_TOKEN = 'from-env';
    const fromEnv = createClient(`127.0.0.1:${port}`, connectionFromArgv([]));
    await call(fromEnv, 'ListModels', {});
    fromEnv.close();
    assert.deepEqual(seen.splice(0), [['ListModels', 'Bearer from-env']]);
    assert.throws(() => createClient('x:1', { token: 'Bearer secret' }),
                  (err) => /^token: /.test(err.message) && !err.message.includes('secret'));
    assert.throws(() => createClient('x:1', { tlsCaFile: '/nonexistent/ca.pem' }),
                  /tlsCaFile: cannot read '\/nonexistent\/ca.pem'/);
  } finally {
    if (saved === undefined) delete process.env.ATTN_TOKEN; else process.env.ATTN_TOKEN = saved;
    server.forceShutdown();
  }
});

test('mutual TLS from the connection flags, and no handshake without a client certificate',
     async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'attn-node-tls-'));
  t.after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const script = path.resolve(__dirname, '../testing/make_test_certs.sh');
  if (spawnSync(script, [dir]).status !== 0) {
    t.skip('make_test_certs.sh (openssl) failed');
    return;
  }
  const read = (name) => fs.readFileSync(path.join(dir, name));
  const { server, seen, port } = await fakeServer(grpc.ServerCredentials.createSsl(
    read('ca.pem'), [{ private_key: read('server.key'), cert_chain: read('server.pem') }], true));
  try {
    const flags = [`--tls_ca_file=${dir}/ca.pem`, `--tls_cert_file=${dir}/client.pem`,
                   `--tls_key_file=${dir}/client.key`, '--tls_server_name=attention-server',
                   '--token=tls-tok'];
    const c = createClient(`localhost:${port}`, connectionFromArgv(flags));
    await everyKind(c);
    c.close();
    assert.deepEqual(seen.map(([, a]) => a), ['Bearer tls-tok', 'Bearer tls-tok', 'Bearer tls-tok']);
    const anonymous = createClient(`localhost:${port}`,
                                   { tlsCaFile: `${dir}/ca.pem`, tlsServerName: 'attention-server' });
    await assert.rejects(call(anonymous, 'ListModels', {}, 5000), (err) => err.codeName === 'UNAVAILABLE');
    anonymous.close();
  } finally {
    server.forceShutdown();
  }
});
