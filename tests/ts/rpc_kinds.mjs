// Calls chatd.v1.ChatService from Node through the installed @chatd/client package over
// the Connect protocol: every unary RPC and every server-streaming RPC. Prints one JSON
// object of what came back, for tests/test_ts_client.py to check.
// Usage: node rpc_kinds.mjs BASE_URL API_KEY [connect|grpc-web|grpc]

import { create, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  createConnectTransport,
  createGrpcTransport,
  createGrpcWebTransport,
} from "@connectrpc/connect-node";
import {
  createChatClient,
  errorDetails,
  ReplyState,
  Role,
  SessionDocumentSchema,
  SessionSchema,
} from "@chatd/client";

const [baseUrl, apiKey, protocol = "connect"] = process.argv.slice(2);
const interceptors = [(next) => (req) => (req.header.set("authorization", `Bearer ${apiKey}`), next(req))];
const transports = {
  connect: () => createConnectTransport({ baseUrl, httpVersion: "1.1", interceptors }),
  "grpc-web": () => createGrpcWebTransport({ baseUrl, httpVersion: "1.1", interceptors }),
  grpc: () => createGrpcTransport({ baseUrl, interceptors }),
};
const client = createChatClient(transports[protocol]());
const out = {};
const collect = async (iterable) => {
  const events = [];
  for await (const event of iterable) events.push(event);
  return events;
};
const user = (text) => ({ role: Role.USER, parts: [{ data: { case: "text", value: text } }] });

// Unary.
const { session } = await client.createSession({
  sessionId: "node-kinds",
  session: { displayName: "node", labels: { lang: "ts" }, tools: ["get_current_time"] },
});
out.created = session.sessionId;
out.got = (await client.getSession({ sessionId: session.sessionId })).session.labels;
out.listed = (await client.listSessions({ filter: 'labels.lang = "ts"' })).sessions.map((s) => s.sessionId);
out.updated = (
  await client.updateSession({
    session: create(SessionSchema, { sessionId: session.sessionId, displayName: "renamed" }),
    updateMask: { paths: ["display_name"] },
  })
).session.displayName;
const sent = (await client.sendMessage({ sessionId: session.sessionId, text: "unary hello" })).reply;
out.sendText = sent.text;
out.appended = (
  await client.appendMessages({ sessionId: session.sessionId, messages: [user("appended")] })
).messages.length;
out.messageCount = (await client.listMessages({ sessionId: session.sessionId })).messages.length;
out.counted = Number((await client.countTokens({ sessionId: session.sessionId, text: "count" })).totalTokens) > 0;
out.replyState = ReplyState[(await client.getReply({ replyId: sent.replyId })).reply.state];
out.replies = (await client.listReplies({ sessionId: session.sessionId })).replies.length;
out.cancelled = (await client.cancelReply({ sessionId: session.sessionId })).cancelled;
out.generated = (await client.generateContent({ contents: [user("stateless")] })).generation.text;
out.tools = (await client.listTools({})).tools.map((t) => t.name);
const { document } = await client.exportSession({ sessionId: session.sessionId });
out.exported = JSON.parse(toJsonString(SessionDocumentSchema, document)).messages.length;
out.imported = (await client.importSession({ document, sessionId: "node-kinds-copy" })).session.messageCount.toString();
out.forked = (await client.forkSession({ sessionId: session.sessionId, newSessionId: "node-kinds-fork" })).session.sessionId;
out.cleared = (await client.clearHistory({ sessionId: "node-kinds-fork" })).session.messageCount.toString();
await client.deleteSession({ sessionId: "node-kinds-fork" });

// Server streaming.
const events = await collect(
  client.streamReply({
    sessionId: session.sessionId,
    text: '/call get_current_time {"timezone": "UTC"}',
  }),
);
out.streamCases = events.map((e) => e.event.case);
out.streamReplyText = events.at(-1).event.value.text;
out.streamSequence = events.map((e) => Number(e.sequenceNumber));
const parts = await collect(client.streamExportSession({ sessionId: session.sessionId }));
out.exportParts = parts.length;
out.exportStreamMessages = parts.reduce((n, p) => n + p.document.messages.length, 0);
const generation = await collect(client.streamGenerateContent({ contents: [user("stream stateless")] }));
out.generateCases = [...new Set(generation.map((e) => e.event.case))];

// A rich error from a stream, and one after deletion.
try {
  await collect(client.streamReply({ sessionId: session.sessionId }));
} catch (error) {
  const { errorInfo, badRequest } = errorDetails(error);
  out.streamError = {
    code: Code[ConnectError.from(error).code],
    reason: errorInfo?.reason,
    fields: badRequest?.fieldViolations.map((v) => v.field),
  };
}
await client.deleteSession({ sessionId: session.sessionId });
try {
  await client.getSession({ sessionId: session.sessionId });
} catch (error) {
  out.afterDelete = { code: Code[ConnectError.from(error).code], reason: errorDetails(error).errorInfo?.reason };
}
console.log(JSON.stringify(out));
