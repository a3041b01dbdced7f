// @chatd/client: the generated chatd.v1 messages and the ChatService descriptor
// (protoc-gen-es v2, under ./gen), google.rpc's Status and error details, and a few
// helpers. Calls go through @connectrpc/connect: pick a transport for your runtime
// (@connectrpc/connect-node in Node, @connectrpc/connect-web in browsers) and pass
// it to createChatClient.

import type { JsonValue } from "@bufbuild/protobuf";
import { type Client, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { ChatService } from "./gen/chatd/v1/chat_service_pb.js";
import type { FunctionCall } from "./gen/chatd/v1/content_pb.js";
import {
  type BadRequest,
  BadRequestSchema,
  type ErrorInfo,
  ErrorInfoSchema,
  type RetryInfo,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";

export * from "./gen/chatd/v1/chat_service_pb.js";
export * from "./gen/chatd/v1/content_pb.js";
export * from "./gen/chatd/v1/session_pb.js";
export * from "./gen/google/rpc/error_details_pb.js";
export * from "./gen/google/rpc/status_pb.js";

/** A typed client of chatd.v1.ChatService: one async method per RPC; server-streaming
 * RPCs (StreamReply, StreamExportSession, StreamGenerateContent) return async iterables. */
export type ChatClient = Client<typeof ChatService>;

/** Creates a ChatService client over `transport` (Connect, gRPC-Web or gRPC). */
export function createChatClient(transport: Transport): ChatClient {
  return createClient(ChatService, transport);
}

/** The details chatd attaches to an error (docs/errors.md in the chatd repository):
 * every chatd error has `errorInfo` (domain "chatd", a specific UPPER_SNAKE `reason`);
 * INVALID_ARGUMENT adds `badRequest` naming the field; RESOURCE_EXHAUSTED may add
 * `retryInfo`. An error chatd did not produce (a network failure, the caller's own
 * deadline) has none of them. */
export interface ChatdErrorDetails {
  errorInfo?: ErrorInfo;
  badRequest?: BadRequest;
  retryInfo?: RetryInfo;
}

/** Reads the google.rpc details of a failed call. `error` is whatever the call threw;
 * anything that is not a ConnectError is converted with ConnectError.from first. */
export function errorDetails(error: unknown): ChatdErrorDetails {
  const connectError = ConnectError.from(error);
  const [errorInfo] = connectError.findDetails(ErrorInfoSchema);
  const [badRequest] = connectError.findDetails(BadRequestSchema);
  const [retryInfo] = connectError.findDetails(RetryInfoSchema);
  return { errorInfo, badRequest, retryInfo };
}

/** A function call's arguments as plain JSON, read from `argsJson` (the exact JSON text,
 * so large integers keep every digit when you parse them yourself) and falling back to
 * the `args` object when the text is empty. */
export function functionArgs(call: FunctionCall): { [key: string]: JsonValue } {
  if (call.argsJson !== "") {
    return JSON.parse(call.argsJson) as { [key: string]: JsonValue };
  }
  return call.args ?? {};
}

export { ChatService };
