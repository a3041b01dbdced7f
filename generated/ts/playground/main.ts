// chatd playground: one static page on chatd's HTTP listener that lists sessions, opens
// one, chats with streamed replies, shows tool calls and results, and exports a session.
// It calls chatd.v1.ChatService over the Connect protocol with the generated client
// (../src), at the origin that served the page. build.mjs bundles it with esbuild.

import { type MessageInitShape, toJsonString } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import {
  type ChatClient,
  createChatClient,
  errorDetails,
  FinishReason,
  type FunctionCall,
  type Message,
  type Part,
  Role,
  type Session,
  SessionDocumentSchema,
  type StreamReplyRequestSchema,
} from "../src/index.js";

const KEY_STORAGE = "chatd-playground-api-key";

function element<T extends HTMLElement>(id: string): T {
  const found = document.getElementById(id);
  if (found === null) throw new Error(`the page has no #${id}`);
  return found as T;
}

const ui = {
  apiKey: element<HTMLInputElement>("api-key"),
  sessions: element<HTMLUListElement>("sessions"),
  newSession: element<HTMLButtonElement>("new-session"),
  refresh: element<HTMLButtonElement>("refresh"),
  title: element<HTMLSpanElement>("chat-title"),
  exportButton: element<HTMLButtonElement>("export"),
  exportPanel: element<HTMLDetailsElement>("export-panel"),
  exportJson: element<HTMLPreElement>("export-json"),
  messages: element<HTMLDivElement>("messages"),
  status: element<HTMLDivElement>("status"),
  composer: element<HTMLFormElement>("composer"),
  input: element<HTMLTextAreaElement>("input"),
  send: element<HTMLButtonElement>("send"),
};

ui.apiKey.value = localStorage.getItem(KEY_STORAGE) ?? "";
ui.apiKey.addEventListener("change", () => {
  localStorage.setItem(KEY_STORAGE, ui.apiKey.value);
  void loadSessions();
});

// Every call carries the key typed in the header, as chatd's gRPC clients do.
const auth: Interceptor = (next) => (request) => {
  const key = ui.apiKey.value.trim();
  if (key !== "") request.header.set("authorization", `Bearer ${key}`);
  return next(request);
};

const client: ChatClient = createChatClient(
  createConnectTransport({ baseUrl: window.location.origin, interceptors: [auth] }),
);

let openSession: Session | undefined;
// Calls of the open session's last reply that wait for the caller's results.
let pendingCalls: FunctionCall[] = [];
let busy = false;

function setStatus(text: string, isError = false): void {
  ui.status.textContent = text;
  ui.status.classList.toggle("error", isError);
}

function describeError(error: unknown): string {
  const err = ConnectError.from(error);
  const { errorInfo, badRequest } = errorDetails(err);
  const parts = [`${Code[err.code]}: ${err.rawMessage}`];
  if (errorInfo) parts.push(`(${errorInfo.reason})`);
  for (const violation of badRequest?.fieldViolations ?? []) {
    parts.push(`[${violation.field}: ${violation.description}]`);
  }
  return parts.join(" ");
}

function fail(error: unknown): void {
  setStatus(describeError(error), true);
}

function scrollDown(): void {
  ui.messages.scrollTop = ui.messages.scrollHeight;
}

function bubble(role: "user" | "model", text: string): HTMLDivElement {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  ui.messages.append(div);
  scrollDown();
  return div;
}

function toolBlock(kind: "call" | "result" | "error", text: string): void {
  const div = document.createElement("div");
  div.className = kind === "call" ? "tool call" : `tool result${kind === "error" ? " error" : ""}`;
  div.textContent = text;
  ui.messages.append(div);
  scrollDown();
}

function callText(call: FunctionCall, callerExecuted: boolean): string {
  const who = callerExecuted ? " (caller executes)" : "";
  return `tool call ${call.name}(${call.argsJson})${who}`;
}

/** Shows one stored message: its text, function calls and function responses. */
function showMessage(message: Message): void {
  const role = message.role === Role.USER ? "user" : "model";
  let text = "";
  const flush = (): void => {
    if (text !== "") bubble(role, text);
    text = "";
  };
  for (const part of message.parts) {
    const data: Part["data"] = part.data;
    if (data.case === "text") {
      if (!part.thought) text += data.value;
    } else if (data.case === "functionCall") {
      flush();
      toolBlock("call", callText(data.value, false));
    } else if (data.case === "functionResponse") {
      flush();
      toolBlock("result", `tool result ${data.value.name}: ${data.value.responseJson}`);
    } else if (data.case !== undefined) {
      flush();
      toolBlock("result", `[${data.case}]`);
    }
  }
  flush();
}

function setComposerEnabled(): void {
  const ready = openSession !== undefined && !busy;
  ui.input.disabled = !ready;
  ui.send.disabled = !ready;
  ui.exportButton.disabled = !ready;
  ui.input.placeholder =
    pendingCalls.length > 0
      ? `A JSON result answers ${pendingCalls.map((c) => c.name).join(", ")}`
      : "Message (Enter sends, Shift+Enter for a new line)";
}

function sessionLabel(session: Session): string {
  return session.displayName || session.sessionId;
}

async function loadSessions(): Promise<void> {
  try {
    const { sessions } = await client.listSessions({ pageSize: 100 });
    ui.sessions.replaceChildren(
      ...sessions.map((session) => {
        const li = document.createElement("li");
        li.dataset.sessionId = session.sessionId;
        li.classList.toggle("open", session.sessionId === openSession?.sessionId);
        const name = document.createElement("div");
        name.className = "name";
        name.textContent = sessionLabel(session);
        const meta = document.createElement("div");
        meta.className = "meta";
        meta.textContent = `${session.sessionId} · ${session.messageCount} messages`;
        li.append(name, meta);
        li.addEventListener("click", () => void open(session.sessionId));
        return li;
      }),
    );
    if (sessions.length === 0) {
      setStatus("No sessions yet: create one with New session.");
    } else if (ui.status.classList.contains("error")) {
      setStatus("");
    }
  } catch (error) {
    fail(error);
  }
}

async function open(sessionId: string): Promise<void> {
  try {
    const { session } = await client.getSession({ sessionId });
    if (session === undefined) return;
    openSession = session;
    pendingCalls = [...session.pendingToolCalls];
    ui.title.textContent = `${sessionLabel(session)} (${session.sessionId})`;
    ui.title.classList.remove("muted");
    ui.exportPanel.hidden = true;
    ui.messages.replaceChildren();
    let pageToken = "";
    do {
      const page = await client.listMessages({ sessionId, pageSize: 1000, pageToken });
      page.messages.forEach(showMessage);
      pageToken = page.nextPageToken;
    } while (pageToken !== "");
    for (const li of ui.sessions.children) {
      li.classList.toggle("open", (li as HTMLElement).dataset.sessionId === sessionId);
    }
    setStatus(pendingCalls.length > 0 ? "The model waits for tool results." : "");
    setComposerEnabled();
    ui.input.focus();
  } catch (error) {
    fail(error);
  }
}

async function newSession(): Promise<void> {
  try {
    // Every server tool chatd offers is enabled, so the model (or the echo provider's
    // `/call NAME {...}` lines) can call them.
    const { tools } = await client.listTools({ pageSize: 100 });
    const { session } = await client.createSession({
      session: {
        displayName: `Playground ${new Date().toLocaleString()}`,
        tools: tools.map((tool) => tool.name),
      },
    });
    if (session === undefined) return;
    await loadSessions();
    await open(session.sessionId);
  } catch (error) {
    fail(error);
  }
}

/** Streams one turn: text deltas grow the model's bubble, tool calls and results
 * appear as they happen. */
async function send(text: string): Promise<void> {
  if (openSession === undefined) return;
  const sessionId = openSession.sessionId;
  const request: MessageInitShape<typeof StreamReplyRequestSchema> = { sessionId };
  if (pendingCalls.length > 0) {
    // The text answers every pending call, as JSON text sent exactly as typed.
    request.toolResults = pendingCalls.map((call) => ({
      callId: call.id,
      outcome: { case: "resultJson" as const, value: text },
    }));
    toolBlock("result", `tool results: ${text}`);
  } else {
    request.text = text;
    bubble("user", text);
  }
  busy = true;
  setComposerEnabled();
  setStatus("Streaming…");
  let current: HTMLDivElement | undefined;
  try {
    for await (const event of client.streamReply(request)) {
      const e = event.event;
      if (e.case === "textDelta" && !e.value.thought) {
        current ??= bubble("model", "");
        current.textContent += e.value.text;
        scrollDown();
      } else if (e.case === "toolCall" && e.value.functionCall) {
        current = undefined;
        toolBlock("call", callText(e.value.functionCall, e.value.callerExecuted));
      } else if (e.case === "toolResult" && e.value.functionResponse) {
        current = undefined;
        const response = e.value.functionResponse;
        toolBlock(e.value.isError ? "error" : "result", `tool result ${response.name}: ${response.responseJson}`);
      } else if (e.case === "reply") {
        pendingCalls = [...e.value.pendingToolCalls];
        const reason = FinishReason[e.value.finishReason] ?? String(e.value.finishReason);
        setStatus(
          pendingCalls.length > 0
            ? "The model waits for tool results: type a JSON result and send it."
            : `Finished: ${reason}`,
        );
      }
    }
  } catch (error) {
    fail(error);
  } finally {
    busy = false;
    setComposerEnabled();
    void loadSessions();
    ui.input.focus();
  }
}

async function exportSession(): Promise<void> {
  if (openSession === undefined) return;
  try {
    const { document: doc } = await client.exportSession({ sessionId: openSession.sessionId });
    if (doc === undefined) return;
    const json = toJsonString(SessionDocumentSchema, doc, { prettySpaces: 2 });
    ui.exportJson.textContent = json;
    ui.exportPanel.hidden = false;
    ui.exportPanel.open = true;
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([json], { type: "application/json" }));
    link.download = `${openSession.sessionId}.json`;
    link.click();
    URL.revokeObjectURL(link.href);
    setStatus(`Exported ${doc.messages.length} messages.`);
  } catch (error) {
    fail(error);
  }
}

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = ui.input.value.trim();
  if (text === "" || busy) return;
  ui.input.value = "";
  void send(text);
});
ui.input.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    ui.composer.requestSubmit();
  }
});
ui.newSession.addEventListener("click", () => void newSession());
ui.refresh.addEventListener("click", () => void loadSessions());
ui.exportButton.addEventListener("click", () => void exportSession());

void loadSessions();
