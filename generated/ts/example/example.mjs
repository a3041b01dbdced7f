// The @chatd/client package in use from Node over the Connect protocol: create a
// session, stream a reply, answer a caller-executed tool, and read a rich error's
// ErrorInfo and BadRequest.
//
// chatd serves Connect on its HTTP listener (CHATD_HTTP_LISTEN). Against `make run`
// (echo provider), with the package and @connectrpc/connect-node installed:
//
//   npm install ./chatd-client-0.1.0.tgz @connectrpc/connect-node
//   node example.mjs                                  # http://127.0.0.1:8080
//   node example.mjs http://HOST:PORT --api-key KEY   # or CHATD_API_KEY=KEY
//   node example.mjs http://127.0.0.1:50051 --protocol grpc   # chatd's native gRPC port
//
// --protocol picks the wire protocol: connect (default, HTTP/1.1), grpc-web (HTTP/1.1)
// or grpc (HTTP/2, the port of CHATD_LISTEN).
//
// A failed call ends the example with exit code 1 and the error on stderr.

import { parseArgs } from "node:util";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import {
  createChatClient,
  errorDetails,
  FinishReason,
  FunctionDeclarationSchema,
  functionArgs,
  ReplyState,
} from "@chatd/client";

/** The caller-executed tool; a real service would query its order database. */
function lookupOrder({ order_id }) {
  return { order_id, status: "shipped" };
}

const LOOKUP_ORDER = create(FunctionDeclarationSchema, {
  name: "lookup_order",
  description: "The shipping status of a customer's order.",
  // google.protobuf.Struct fields are plain JSON objects in protobuf-es.
  parameters: {
    type: "object",
    properties: { order_id: { type: "integer" } },
    required: ["order_id"],
  },
});

/** Streams one turn, printing text as it arrives and tool calls as they happen; returns
 * the reply's id and the final reply. */
async function stream(client, sessionId, text) {
  let replyId = "";
  let line = false; // a "model: " line is open
  for await (const event of client.streamReply({ sessionId, text })) {
    replyId = event.replyId || replyId; // on the first event
    const { case: kind, value } = event.event;
    if (kind === "textDelta" && !value.thought) {
      process.stdout.write(line ? value.text : `model: ${value.text}`);
      line = true;
    } else if (kind === "toolCall") {
      if (line) process.stdout.write("\n");
      line = false;
      const who = value.callerExecuted ? "the caller" : "chatd";
      console.log(`model called ${value.functionCall.name} (run by ${who})`);
    } else if (kind === "reply") {
      if (line) process.stdout.write("\n");
      return { replyId, reply: value };
    }
  }
  throw new Error("the stream ended without a reply");
}

/** Runs every pending caller tool call and answers them, until none are pending. */
async function answerTools(client, sessionId, reply) {
  while (reply.pendingToolCalls.length > 0) {
    const toolResults = reply.pendingToolCalls.map((call) => {
      const output = lookupOrder(functionArgs(call));
      console.log(`tool call: ${call.name}(${call.argsJson}) -> ${JSON.stringify(output)}`);
      // resultJson is JSON text, sent to the model exactly as written.
      return { callId: call.id, outcome: { case: "resultJson", value: JSON.stringify(output) } };
    });
    ({ reply } = await client.sendMessage({ sessionId, toolResults }));
  }
  return reply;
}

async function main() {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      "api-key": { type: "string", default: process.env.CHATD_API_KEY },
      protocol: { type: "string", default: "connect" },
    },
  });
  const baseUrl = positionals[0] ?? "http://127.0.0.1:8080";
  const apiKey = values["api-key"];
  // Every call carries the key as `authorization: Bearer <key>`.
  const interceptors = apiKey
    ? [(next) => (req) => (req.header.set("authorization", `Bearer ${apiKey}`), next(req))]
    : [];
  const transports = {
    connect: () => createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors }),
    "grpc-web": () => createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors }),
    grpc: () => createGrpcTransport({ baseUrl, interceptors }),
  };
  if (!(values.protocol in transports)) {
    console.error(`error: --protocol must be one of ${Object.keys(transports).join(", ")}`);
    return 2;
  }
  const client = createChatClient(transports[values.protocol]());

  const { session } = await client.createSession({
    session: { displayName: "example", functionDeclarations: [LOOKUP_ORDER] },
  });
  console.log(`session: ${session.sessionId}`);

  const { replyId, reply } = await stream(client, session.sessionId, "Hello from @chatd/client");
  console.log(`finish_reason: ${FinishReason[reply.finishReason]}`);
  const stored = await client.getReply({ replyId, skipEvents: true });
  console.log(`reply state: ${ReplyState[stored.reply.state]}`);

  const paused = await stream(
    client,
    session.sessionId,
    'Where is order 42?\n/call lookup_order {"order_id": 42}',
  );
  console.log(`paused: ${FinishReason[paused.reply.finishReason]}`);
  const answered = await answerTools(client, session.sessionId, paused.reply);
  console.log(`after tools: ${FinishReason[answered.finishReason]}`);

  const { messages } = await client.listMessages({ sessionId: session.sessionId });
  console.log(`messages: ${messages.length}`);

  try {
    await client.createSession({ sessionId: "not a valid id!" });
    console.error("error: the malformed id was accepted");
    return 1;
  } catch (error) {
    const { errorInfo, badRequest } = errorDetails(error);
    console.log(`error: ${Code[ConnectError.from(error).code]}`);
    console.log(`reason: ${errorInfo?.reason}`);
    for (const violation of badRequest?.fieldViolations ?? []) {
      console.log(`field: ${violation.field}: ${violation.description}`);
    }
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (error) => {
    const err = ConnectError.from(error);
    console.error(`error: the call failed with ${Code[err.code]}: ${err.rawMessage}`);
    process.exit(1);
  },
);
