#!/usr/bin/env node
// Streams a chatd reply from Node.js with @grpc/grpc-js.
//
// The protos are loaded at run time from ../../protos with @grpc/proto-loader, so nothing
// is generated. google/protobuf/*.proto imports (duration, field_mask, struct, timestamp)
// resolve to the copies bundled with protobufjs.
//
//   cd client_examples/node && npm ci
//   node stream_reply.js                      # against `make run` on 127.0.0.1:50051
//   node stream_reply.js "Tell me a story" --address chatd.internal:443 --tls --api-key KEY
//
// Options (and environment): --address (CHATD_ADDRESS), --api-key (CHATD_API_KEY, sent as
// "authorization: Bearer KEY"), --tls, --ca-cert FILE. Exits 0 once the reply is complete,
// 1 with the gRPC status on failure.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.join(__dirname, '..', '..', 'protos');
const TIMEOUT_MS = 120_000;

function loadChatService() {
  const definition = protoLoader.loadSync('chatd/v1/chat_service.proto', {
    includeDirs: [PROTOS],
    keepCase: true, // field names as in the .proto: session_id, text_delta, ...
    longs: String, // int64 (sequence_number, token counts) as strings
    enums: String, // 'FINISH_REASON_STOP' rather than 1
    defaults: true,
    oneofs: true, // `event` names which field of the oneof is set
  });
  return grpc.loadPackageDefinition(definition).chatd.v1.ChatService;
}

function options() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      address: { type: 'string', default: process.env.CHATD_ADDRESS || '127.0.0.1:50051' },
      'api-key': { type: 'string', default: process.env.CHATD_API_KEY || '' },
      tls: { type: 'boolean', default: false },
      'ca-cert': { type: 'string' },
    },
  });
  return { ...values, message: positionals.join(' ') || 'Hello from Node.js!' };
}

function credentials(opts) {
  if (!opts.tls && !opts['ca-cert']) return grpc.credentials.createInsecure();
  const roots = opts['ca-cert'] ? fs.readFileSync(opts['ca-cert']) : null;
  return grpc.credentials.createSsl(roots);
}

function deadline() {
  return new Date(Date.now() + TIMEOUT_MS);
}

// A unary call as a promise.
function unary(client, method, request, metadata) {
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline: deadline() }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

// Streams one turn to stdout; resolves with the final Reply.
function streamReply(client, request, metadata) {
  return new Promise((resolve, reject) => {
    let reply = null;
    const call = client.StreamReply(request, metadata, { deadline: deadline() });
    call.on('data', (event) => {
      switch (event.event) {
        case 'text_delta':
          if (!event.text_delta.thought) process.stdout.write(event.text_delta.text);
          break;
        case 'tool_call':
          process.stdout.write(`\n[tool call ${event.tool_call.function_call.name}]\n`);
          break;
        case 'tool_result':
          process.stdout.write(`[tool result ${event.tool_result.function_response.name}]\n`);
          break;
        case 'reply':
          reply = event.reply; // always the last event
          break;
        default: // `message` events: each stored message of the turn
      }
    });
    call.on('error', reject);
    call.on('end', () => (reply ? resolve(reply) : reject(new Error('no reply event'))));
  });
}

async function main() {
  const opts = options();
  const ChatService = loadChatService();
  const client = new ChatService(opts.address, credentials(opts));
  const metadata = new grpc.Metadata();
  if (opts['api-key']) metadata.set('authorization', `Bearer ${opts['api-key']}`);
  try {
    const { session } = await unary(
      client,
      'CreateSession',
      { session: { display_name: 'node example' } },
      metadata,
    );
    console.log(`session: ${session.session_id}`);
    console.log(`you: ${opts.message}`);
    process.stdout.write('model: ');
    const reply = await streamReply(
      client,
      { session_id: session.session_id, text: opts.message },
      metadata,
    );
    console.log();
    const usage = reply.usage || {};
    console.log(`finish_reason: ${reply.finish_reason}, ${usage.total_token_count || 0} tokens`);
    return 0;
  } catch (err) {
    if (err.code === undefined) throw err; // not a gRPC status: a bug, show the stack
    console.error(`error: the call failed with ${grpc.status[err.code]}: ${err.details}`);
    return 1;
  } finally {
    client.close();
  }
}

main().then((code) => {
  process.exitCode = code;
});
