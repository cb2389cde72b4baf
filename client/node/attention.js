'use strict';
// Small helpers for calling attention-server (attention.v1.AttentionService)
// from Node.js: load the proto at run time, make a client, convert tensors
// between Float32Array and the wire's little-endian raw_data, and turn the
// callback API into promises.
const os = require('node:os');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const DEFAULT_PROTO = path.resolve(__dirname, '../../proto/attention/v1/attention.proto');

// The attention.v1 package object (message types and AttentionService).
function loadAttentionPackage(protoPath = DEFAULT_PROTO) {
  const definition = protoLoader.loadSync(protoPath, {
    keepCase: true, // field names as in the proto: raw_data, model_name, ...
    longs: Number, // int64 shape and timing fields as numbers
    enums: String, // dtype as 'FLOAT32', 'BFLOAT16', ...
    defaults: true,
  });
  return grpc.loadPackageDefinition(definition).attention.v1;
}

// An AttentionService client for `target` ("HOST:PORT", plaintext).
function createClient(target, protoPath = DEFAULT_PROTO) {
  const pkg = loadAttentionPackage(protoPath);
  return new pkg.AttentionService(target, grpc.credentials.createInsecure(), {
    'grpc.max_receive_message_length': -1, // attention probabilities can be large
    'grpc.max_send_message_length': 256 << 20,
  });
}

// attention.v1.Tensor (FLOAT32, raw_data) holding `data` with `shape`.
function float32Tensor(data, shape) {
  const count = shape.reduce((a, b) => a * b, 1);
  if (data.length !== count) {
    throw new Error(`tensor: shape [${shape}] needs ${count} values, got ${data.length}`);
  }
  let raw;
  if (os.endianness() === 'LE') {
    raw = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  } else {
    raw = Buffer.alloc(4 * count);
    for (let i = 0; i < count; i++) raw.writeFloatLE(data[i], 4 * i);
  }
  return { dtype: 'FLOAT32', shape, raw_data: raw };
}

// { shape, data: Float32Array } of an attention.v1.Tensor (FLOAT32, BFLOAT16
// or FLOAT16 raw_data, or packed float_data).
function decodeTensor(t, label = 'tensor') {
  const shape = t.shape.map(Number);
  const count = shape.reduce((a, b) => a * b, 1);
  const raw = t.raw_data;
  if ((!raw || raw.length === 0) && t.float_data && t.float_data.length > 0) {
    if (t.float_data.length !== count) {
      throw new Error(`${label}.float_data: expected ${count} values, got ${t.float_data.length}`);
    }
    return { shape, data: Float32Array.from(t.float_data) };
  }
  const size = { FLOAT32: 4, BFLOAT16: 2, FLOAT16: 2 }[t.dtype];
  if (size === undefined) throw new Error(`${label}.dtype: unsupported ${t.dtype}`);
  if (raw.length !== count * size) {
    throw new Error(`${label}.raw_data: expected ${count * size} bytes for shape [${shape}] ` +
                    `${t.dtype}, got ${raw.length}`);
  }
  const data = new Float32Array(count);
  if (t.dtype === 'FLOAT32') {
    for (let i = 0; i < count; i++) data[i] = raw.readFloatLE(4 * i);
  } else if (t.dtype === 'BFLOAT16') {
    const bits = new Uint32Array(data.buffer); // same memory: write the float32 bit patterns
    for (let i = 0; i < count; i++) bits[i] = raw.readUInt16LE(2 * i) << 16 >>> 0;
  } else {
    for (let i = 0; i < count; i++) data[i] = halfToFloat(raw.readUInt16LE(2 * i));
  }
  return { shape, data };
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

// client[method](request) as a promise; rejects with the gRPC error, whose
// `code` is the numeric status, `codeName` its name ('NOT_FOUND', ...) and
// `details` the server's message.
function call(client, method, request, timeoutMs = 30000) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + timeoutMs }, (err, response) => {
      if (err) {
        err.codeName = Object.keys(grpc.status).find((k) => grpc.status[k] === err.code);
        reject(err);
      } else {
        resolve(response);
      }
    });
  });
}

module.exports = {
  DEFAULT_PROTO, loadAttentionPackage, createClient, float32Tensor, decodeTensor, call,
};
