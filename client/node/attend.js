#!/usr/bin/env node
'use strict';
// Lists the models of attention-server and runs one Attend on random data.
//   npm ci && node attend.js --target=localhost:50051 [--model=default --batch=2 --seq_len=16]
//   ATTN_TOKEN=... node attend.js --target=HOST:PORT --tls_ca_file=ca.pem \
//       [--tls_cert_file=client.pem --tls_key_file=client.key] [--tls_server_name=NAME]
// The proto is read at run time from ../../proto/attention/v1/attention.proto.
const {
  createClient, connectionFromArgv, flag, float32Tensor, decodeTensor, call,
} = require('./attention');

async function main() {
  const target = flag('target', 'localhost:50051');
  const model = flag('model', 'default');
  const batch = Number(flag('batch', 2));
  const seqLen = Number(flag('seq_len', 16));
  const client = createClient(target, connectionFromArgv());
  try {
    const { models } = await call(client, 'ListModels', {});
    for (const m of models) {
      console.log(`model ${m.name}: embed_dim=${m.embed_dim} num_heads=${m.num_heads} ` +
                  `num_kv_heads=${m.num_kv_heads} dtype=${m.dtype}`);
    }
    const info = await call(client, 'GetModel', { name: model });
    const shape = [batch, seqLen, info.embed_dim];
    const query = new Float32Array(batch * seqLen * info.embed_dim);
    for (let i = 0; i < query.length; i++) query[i] = Math.random() * 2 - 1;
    const response = await call(client, 'Attend', {
      model_name: model, request_id: 'attend.js', query: float32Tensor(query, shape),
    });
    const out = decodeTensor(response.output, 'output');
    const first = Array.from(out.data.subarray(0, 8), (v) => v.toPrecision(6));
    console.log(`output shape: [${out.shape.join(', ')}]`);
    console.log(`output[0, 0, :8]: ${first.join(' ')}`);
    const t = response.timing;
    console.log(`timing: queue_us=${t.queue_us} compute_us=${t.compute_us} ` +
                `batch_size=${t.batch_size} batch_tokens=${t.batch_tokens}`);
  } finally {
    client.close();
  }
}

main().catch((err) => {
  console.error(err.codeName ? `error: ${err.codeName}: ${err.details}` : `error: ${err.message}`);
  process.exit(2);
});
