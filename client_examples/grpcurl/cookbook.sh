#!/usr/bin/env bash
# A grpcurl cookbook: every RPC of chatd.v1.ChatService, plus the health check.
#
# Run it whole against `make run` (it creates its own uniquely named sessions), or copy
# the commands you need:
#
#   client_examples/grpcurl/cookbook.sh                  # 127.0.0.1:50051
#   client_examples/grpcurl/cookbook.sh chatd.internal:443
#
# Settings (environment):
#   ADDR (or the first argument)  chatd's address, default $CHATD_ADDRESS or 127.0.0.1:50051
#   CHATD_API_KEY                 sent as "authorization: Bearer KEY" when set
#   CHATD_TLS=1                   use TLS (CHATD_CA_CERT=file.pem to trust a private CA)
#   GRPCURL                       the grpcurl binary (make run installs .venv/bin/grpcurl)
#   PYTHON                        a python3, used to pick fields out of JSON replies
#
# chatd serves reflection, so grpcurl needs no .proto files. Requests and replies are JSON
# with the proto field names (session_id, text_delta, ...).
set -euo pipefail

ADDR=${1:-${ADDR:-${CHATD_ADDRESS:-127.0.0.1:50051}}}
PYTHON=${PYTHON:-python3}
SVC=chatd.v1.ChatService

# The grpcurl command line shared by every call below.
G=("${GRPCURL:-grpcurl}")
if [[ -n ${CHATD_CA_CERT:-} ]]; then
  G+=(-cacert "$CHATD_CA_CERT")
elif [[ -z ${CHATD_TLS:-} ]]; then
  G+=(-plaintext)
fi
if [[ -n ${CHATD_API_KEY:-} ]]; then
  G+=(-H "authorization: Bearer $CHATD_API_KEY")
fi

# field EXPRESSION: prints a Python expression over the JSON reply on stdin (bound to `r`),
# for example: field 'r["session"]["etag"]'. (jq does the same: jq -r .session.etag)
field() { "$PYTHON" -c 'import json, sys; r = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }

step() { printf '\n### %s\n' "$*"; }

# Unique ids, so the cookbook can run again on the same database.
RUN=$(date +%Y%m%d%H%M%S)-$$
ID=cookbook-$RUN

step "Discover the API through reflection"
"${G[@]}" "$ADDR" list
"${G[@]}" "$ADDR" describe $SVC
"${G[@]}" "$ADDR" describe chatd.v1.StreamReplyResponse

step "Health: SERVING for the whole server and for the chat service"
"${G[@]}" "$ADDR" grpc.health.v1.Health/Check
"${G[@]}" -d '{"service": "chatd.v1.ChatService"}' "$ADDR" grpc.health.v1.Health/Check

step "ListTools: the server tools a session may enable"
"${G[@]}" -d '{}' "$ADDR" $SVC/ListTools

step "CreateSession $ID with settings and labels"
"${G[@]}" -d '{
  "session_id": "'"$ID"'",
  "session": {
    "display_name": "grpcurl cookbook",
    "system_instruction": "You are a concise assistant.",
    "generation_config": {"temperature": 0.2, "max_output_tokens": 512},
    "tools": ["get_current_time", "calculate"],
    "labels": {"env": "dev", "run": "'"$RUN"'"},
    "context_policy": {"max_messages": 50}
  }
}' "$ADDR" $SVC/CreateSession

step "GetSession: message_count, usage, state and etag"
"${G[@]}" -d '{"session_id": "'"$ID"'"}' "$ADDR" $SVC/GetSession

step "ListSessions with a label filter, oldest first, two per page"
"${G[@]}" -d '{"filter": "labels.run = \"'"$RUN"'\"", "order_by": "create_time", "page_size": 2}' \
  "$ADDR" $SVC/ListSessions

step "UpdateSession: only the fields named in update_mask are written"
# grpcurl 1.8/1.9 reads a FieldMask as {"paths": [...]} rather than the canonical JSON
# string form (fullstorydev/grpcurl#393). Pass "etag" to update only the version you read.
# The etag (W/"3") holds quotes, so it is fetched already JSON-encoded.
ETAG=$("${G[@]}" -d '{"session_id": "'"$ID"'"}' "$ADDR" $SVC/GetSession |
  field 'json.dumps(r["session"]["etag"])')
"${G[@]}" -d '{
  "session": {
    "session_id": "'"$ID"'",
    "display_name": "renamed",
    "labels": {"env": "dev", "run": "'"$RUN"'", "step": "updated"}
  },
  "update_mask": {"paths": ["display_name", "labels"]},
  "etag": '"$ETAG"'
}' "$ADDR" $SVC/UpdateSession

step "SendMessage: one turn, the whole reply at once"
"${G[@]}" -d '{"session_id": "'"$ID"'", "text": "Hello, chatd!"}' "$ADDR" $SVC/SendMessage

step "StreamReply: the same, as events (text deltas, messages, then the reply)"
"${G[@]}" -d '{"session_id": "'"$ID"'", "text": "Stream this reply"}' "$ADDR" $SVC/StreamReply

step "A retry with the same request_id returns the first reply, without a new turn"
REQ='{"session_id": "'"$ID"'", "text": "Exactly once", "request_id": "req-'"$RUN"'"}'
FIRST=$("${G[@]}" -d "$REQ" "$ADDR" $SVC/SendMessage | field 'r["reply"]["turn_id"]')
AGAIN=$("${G[@]}" -d "$REQ" "$ADDR" $SVC/SendMessage | field 'r["reply"]["turn_id"]')
echo "first turn $FIRST, retry turn $AGAIN"
[[ $FIRST == "$AGAIN" ]]

step "Server tools: chatd runs get_current_time itself (tool_call and tool_result events)"
# The /call line drives the offline echo provider; a real model decides by itself.
"${G[@]}" -d '{"session_id": "'"$ID"'", "text": "What time is it in Tokyo?\n/call get_current_time {\"timezone\": \"Asia/Tokyo\"}"}' \
  "$ADDR" $SVC/StreamReply

step "ListMessages: the history, oldest first"
"${G[@]}" -d '{"session_id": "'"$ID"'", "page_size": 100}' "$ADDR" $SVC/ListMessages

step "CountTokens: the next turn's context plus a candidate message, and contents alone"
"${G[@]}" -d '{"session_id": "'"$ID"'", "text": "How long would this be?"}' "$ADDR" $SVC/CountTokens
"${G[@]}" -d '{"contents": [{"role": "ROLE_USER", "parts": [{"text": "Count me"}]}]}' \
  "$ADDR" $SVC/CountTokens

step "Caller tools: the turn pauses until you send tool_results"
TOOLS=$ID-tools
"${G[@]}" -d '{
  "session_id": "'"$TOOLS"'",
  "session": {"function_declarations": [{
    "name": "lookup_order",
    "description": "The shipping status of an order.",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "integer"}}, "required": ["order_id"]}
  }]}
}' "$ADDR" $SVC/CreateSession
PAUSED=$("${G[@]}" -d '{"session_id": "'"$TOOLS"'", "text": "Where is order 42?\n/call lookup_order {\"order_id\": 42}"}' \
  "$ADDR" $SVC/SendMessage)
echo "$PAUSED"
# The reply says FINISH_REASON_TOOL_CALLS_PENDING and lists pending_tool_calls; answer each id.
CALL_ID=$(field 'r["reply"]["pending_tool_calls"][0]["id"]' <<<"$PAUSED")
"${G[@]}" -d '{"session_id": "'"$TOOLS"'", "tool_results": [{"call_id": "'"$CALL_ID"'", "result": {"status": "shipped"}}]}' \
  "$ADDR" $SVC/SendMessage

step "AppendMessages: add turns to history without calling the model"
"${G[@]}" -d '{
  "session_id": "'"$ID"'",
  "request_id": "append-'"$RUN"'",
  "messages": [
    {"role": "ROLE_USER", "parts": [{"text": "What is the capital of France?"}]},
    {"role": "ROLE_MODEL", "parts": [{"text": "Paris."}]}
  ]
}' "$ADDR" $SVC/AppendMessages

step "ForkSession: a copy of the history (up to message_id; empty = all) to branch from"
"${G[@]}" -d '{"session_id": "'"$ID"'", "new_session_id": "'"$ID"'-fork"}' "$ADDR" $SVC/ForkSession

step "ClearHistory on the fork: messages go, settings stay"
"${G[@]}" -d '{"session_id": "'"$ID"'-fork"}' "$ADDR" $SVC/ClearHistory

step "ExportSession piped into ImportSession under a new id"
"${G[@]}" -d '{"session_id": "'"$ID"'"}' "$ADDR" $SVC/ExportSession |
  "$PYTHON" -c 'import json, sys; doc = json.load(sys.stdin)["document"]; print(json.dumps({"document": doc, "session_id": sys.argv[1]}))' "$ID-copy" |
  "${G[@]}" -d @ "$ADDR" $SVC/ImportSession
# With jq instead: ... ExportSession | jq --arg id "$ID-copy" '{document, session_id: $id}' | ...
"${G[@]}" -d '{"session_id": "'"$ID"'-copy", "text": "Do you remember me?"}' "$ADDR" $SVC/SendMessage |
  field 'r["reply"]["text"]'

step "GenerateContent and StreamGenerateContent: stateless, nothing is stored"
GEN='{"contents": [{"role": "ROLE_USER", "parts": [{"text": "Say hello"}]}], "system_instruction": "Be brief."}'
"${G[@]}" -d "$GEN" "$ADDR" $SVC/GenerateContent
"${G[@]}" -d "$GEN" "$ADDR" $SVC/StreamGenerateContent

step "CancelReply: stops a session's running turn (cancelled is false when none runs)"
# Start a turn in the background, then cancel it: its stream ends with status Canceled
# (so its exit code is ignored here) and nothing of the turn is stored. The echo provider
# is usually done first; `CHATD_ECHO_DELAY_MS=150 make run` gives you time to cancel.
# -max-time bounds how long the background stream may take.
"${G[@]}" -max-time 5 -d '{"session_id": "'"$ID"'", "text": "A reply to cancel"}' \
  "$ADDR" $SVC/StreamReply >/dev/null 2>&1 &
STREAM=$!
"${G[@]}" -d '{"session_id": "'"$ID"'"}' "$ADDR" $SVC/CancelReply
wait "$STREAM" || true

step "DeleteSession: the sessions this run created"
for session in "$ID" "$TOOLS" "$ID-fork" "$ID-copy"; do
  "${G[@]}" -d '{"session_id": "'"$session"'"}' "$ADDR" $SVC/DeleteSession
done
"${G[@]}" -d '{"filter": "labels.run = \"'"$RUN"'\""}' "$ADDR" $SVC/ListSessions

step "Done: every RPC of $SVC ran against $ADDR"
