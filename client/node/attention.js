'use strict';
// Small helpers for calling attention-server (attention.v1.AttentionService)
// from Node.js: load the proto at run time, make a client, convert tensors
// between Float32Array and the wire's little-endian raw_data, and turn the
// callback API into promises. TLS, mutual TLS and a bearer token (sent as
// `authorization: Bearer <token>` metadata on every call, by an interceptor)
// come from createClient's connection options; connectionFromArgv() reads
// them from the shared flags (--tls_ca_file, --tls_cert_file,
// --tls_key_file, --tls_server_name, --token, else $ATTN_TOKEN).
const fs = require('node:fs');
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

// Adds `authorization: Bearer <token>` to every call's metadata (unary and
// streaming; over TLS or plaintext, unlike call credentials).
function tokenInterceptor(token) {
  return (options, nextCall) => new grpc.InterceptingCall(nextCall(options), {
    start(metadata, listener, next) {
      metadata.set('authorization', `Bearer ${token}`);
      next(metadata, listener);
    },
  });
}

function readPem(file, option) {
  try {
    return fs.readFileSync(file);
  } catch (err) {
    throw new Error(`${option}: cannot read '${file}': ${err.code || err.message}`);
  }
}

// An AttentionService client for `target` ("HOST:PORT"). `connection`:
//   tlsCaFile      PEM CA certificates the server's must chain to (unset: the system roots)
//   tlsCertFile, tlsKeyFile  both or neither: a client certificate (mutual TLS)
//   tlsServerName  the name checked against the server's certificate
//   token          bearer token (unset: $ATTN_TOKEN; '' or null: none)
// Any tls* option makes the channel TLS; otherwise it is plaintext. The
// second argument may also be the proto path (the older form), or an object
// with `protoPath` among the connection options. Throws an Error naming the
// option for a file it cannot read or a bad token (never echoing it).
function createClient(target, connection = {}, protoPath = DEFAULT_PROTO) {
  if (typeof connection === 'string') {
    protoPath = connection;
    connection = {};
  }
  if (connection.protoPath) protoPath = connection.protoPath;
  const { tlsCaFile, tlsCertFile, tlsKeyFile, tlsServerName } = connection;
  const token = connection.token === undefined ? process.env.ATTN_TOKEN : connection.token;
  if (token && !/^[\x21-\x7e]+$/.test(token)) {
    throw new Error('token: expected the bare token (printable ASCII, no spaces; ' +
                    "the client adds 'Bearer ')");
  }
  if (Boolean(tlsCertFile) !== Boolean(tlsKeyFile)) {
    throw new Error('tlsCertFile and tlsKeyFile: both or neither');
  }
  const options = {
    'grpc.max_receive_message_length': -1, // attention probabilities can be large
    'grpc.max_send_message_length': 256 << 20,
  };
  let credentials;
  if (tlsCaFile || tlsCertFile || tlsServerName) {
    credentials = grpc.credentials.createSsl(
      tlsCaFile ? readPem(tlsCaFile, 'tlsCaFile') : null,
      tlsKeyFile ? readPem(tlsKeyFile, 'tlsKeyFile') : null,
      tlsCertFile ? readPem(tlsCertFile, 'tlsCertFile') : null);
    if (tlsServerName) options['grpc.ssl_target_name_override'] = tlsServerName;
  } else {
    credentials = grpc.credentials.createInsecure();
  }
  if (token) options.interceptors = [tokenInterceptor(token)];
  const pkg = loadAttentionPackage(protoPath);
  return new pkg.AttentionService(target, credentials, options);
}

// The value of --NAME=VALUE in `argv` (process.argv without node and the
// script), or `fallback`.
function flag(name, fallback, argv = process.argv.slice(2)) {
  const prefix = `--${name}=`;
  const arg = argv.find((a) => a.startsWith(prefix));
  return arg === undefined ? fallback : arg.slice(prefix.length);
}

// createClient's connection options from the shared connection flags:
// --tls_ca_file, --tls_cert_file, --tls_key_file, --tls_server_name and
// --token (empty or absent: $ATTN_TOKEN; a token on the command line is
// visible in ps, so prefer the variable).
function connectionFromArgv(argv = process.argv.slice(2)) {
  const get = (name) => flag(name, '', argv) || undefined;
  return {
    tlsCaFile: get('tls_ca_file'),
    tlsCertFile: get('tls_cert_file'),
    tlsKeyFile: get('tls_key_file'),
    tlsServerName: get('tls_server_name'),
    token: get('token'), // undefined: $ATTN_TOKEN
  };
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
  DEFAULT_PROTO, loadAttentionPackage, createClient, connectionFromArgv, flag, float32Tensor,
  decodeTensor, call,
};
