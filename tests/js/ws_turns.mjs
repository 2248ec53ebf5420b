// The official openai Node SDK's WebSocket client (ResponsesWS, over the `ws` package) driving
// the sluicegate proxy's WebSocket mode (docs/websocket.md), run by tests/test_real_clients_js.py.
// One connection carries: turn one, a function call (streamed arguments); two bad messages (an
// unknown `type`, and text that is not JSON), each of which must come back as an `error` event
// while the connection goes on; turn two, the function's output chained by previous_response_id,
// answered in streamed text. Then the client closes. Prints one JSON object on stdout for the
// test to assert on; on an error, prints {"error": ...} and exits 1.
//
// Environment: SLUICEGATE_BASE_URL (the proxy's /v1 URL), SLUICEGATE_API_KEY, SLUICEGATE_MODEL.
import { client, model, tools } from "./setup.mjs";
import { ResponsesWS } from "openai/resources/responses/ws";
import { VERSION } from "openai/version";

const TERMINAL = new Set(["response.completed", "response.failed", "response.incomplete"]);

function fail(detail) {
  process.stdout.write(JSON.stringify(detail) + "\n");
  process.exit(1);
}

// Nothing here may wait forever: the test's own deadline is longer than this one.
const deadline = setTimeout(() => fail({ error: "timed out after 60 s" }), 60_000);

const connection = new ResponsesWS(client);
// What the connection delivers, in order: every parsed message (`event`, error events
// included), the SDK's errors (an error event is one too; a socket error has no event), and
// the close. A reader awaits them one at a time.
const inbox = [];
let wake = null;
const deliver = (item) => {
  inbox.push(item);
  wake?.();
  wake = null;
};
const sdkErrors = [];
connection.on("event", (event) => deliver({ kind: "event", event }));
connection.on("error", (error) => {
  sdkErrors.push({ message: error.message, eventType: error.error?.type ?? null });
  if (!error.error) deliver({ kind: "socket error", message: error.message });
});
connection.on("close", (code, reason) => deliver({ kind: "close", code, reason: String(reason) }));

async function next() {
  while (inbox.length === 0) await new Promise((resolve) => (wake = resolve));
  return inbox.shift();
}

async function nextEvent() {
  const item = await next();
  if (item.kind !== "event") throw new Error(`expected an event, got ${JSON.stringify(item)}`);
  return item.event;
}

// One response: send response.create, read events up to its terminal one (or an error event).
async function turn(params) {
  connection.send({ type: "response.create", ...params });
  const events = [];
  for (;;) {
    const event = await nextEvent();
    events.push(event);
    if (TERMINAL.has(event.type) || event.type === "error") break;
  }
  const last = events[events.length - 1];
  const response = last.response ?? null;
  const deltas = (type) =>
    events.filter((event) => event.type === type).map((event) => event.delta).join("");
  const outputText = (response?.output ?? [])
    .filter((item) => item.type === "message")
    .flatMap((item) => item.content)
    .filter((part) => part.type === "output_text")
    .map((part) => part.text)
    .join("");
  return {
    id: response?.id ?? null,
    status: response?.status ?? null,
    createdId: events[0].response?.id ?? null,
    types: events.map((event) => event.type),
    sequenceNumbers: events.map((event) => event.sequence_number),
    outputTypes: (response?.output ?? []).map((item) => item.type),
    argumentDeltas: deltas("response.function_call_arguments.delta"),
    textDeltas: deltas("response.output_text.delta"),
    outputText,
    previousResponseId: response?.previous_response_id ?? null,
    call: (response?.output ?? []).find((item) => item.type === "function_call") ?? null,
    error: last.type === "error" ? last : null,
  };
}

// A bad message: the very next message back must be its error event.
async function badMessage(send) {
  send();
  return await nextEvent();
}

try {
  const first = await turn({ model, input: "What is the weather in Paris?", tools });
  if (first.status !== "completed" || !first.call) {
    throw new Error(`turn one did not end in a function call: ${JSON.stringify(first)}`);
  }
  const unknownType = await badMessage(() =>
    connection.send({ type: "response.frobnicate", previous_response_id: first.id }),
  );
  const notJson = await badMessage(() => connection.sendRaw("{not json"));
  const output = JSON.stringify({ city: JSON.parse(first.call.arguments).city, forecast: "sunny" });
  const second = await turn({
    model,
    previous_response_id: first.id,
    input: [{ type: "function_call_output", call_id: first.call.call_id, output }],
    tools,
  });
  connection.close({ code: 1000, reason: "done" });
  const closed = await next();
  const result = {
    sdkVersion: VERSION,
    url: String(connection.url),
    first,
    second,
    unknownType,
    notJson,
    sdkErrors,
    closed,
    toolOutput: output,
  };
  clearTimeout(deadline);
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (error) {
  fail({ error: String(error), sdkErrors, pending: inbox });
}
