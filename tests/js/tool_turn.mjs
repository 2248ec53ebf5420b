// The official openai Node SDK streaming a tool turn through the sluicegate proxy, run by
// tests/test_real_clients_js.py. Turn one: the model calls the function (streamed arguments).
// Turn two: the function's output goes back with previous_response_id and the model answers in
// streamed text. Prints one JSON object on stdout for the test to assert on; on an error, prints
// {"error": ...} and exits 1.
//
// Environment: SLUICEGATE_BASE_URL (the proxy's /v1 URL), SLUICEGATE_API_KEY, SLUICEGATE_MODEL.
import { client, model, tools } from "./setup.mjs";
import { VERSION } from "openai/version";


// One streamed turn through the SDK's stream helper: every event type in order, what the
// deltas add up to, and the final response the helper assembled.
async function streamedTurn(params) {
  const stream = client.responses.stream(params);
  const types = [];
  const sequenceNumbers = [];
  let argumentDeltas = "";
  let textDeltas = "";
  for await (const event of stream) {
    types.push(event.type);
    sequenceNumbers.push(event.sequence_number);
    if (event.type === "response.function_call_arguments.delta") argumentDeltas += event.delta;
    if (event.type === "response.output_text.delta") textDeltas += event.delta;
  }
  const response = await stream.finalResponse();
  return { types, sequenceNumbers, argumentDeltas, textDeltas, response };
}

try {
  const first = await streamedTurn({ model, input: "What is the weather in Paris?", tools });
  const call = first.response.output.find((item) => item.type === "function_call");
  const output = JSON.stringify({ city: JSON.parse(call.arguments).city, forecast: "sunny" });
  const second = await streamedTurn({
    model,
    previous_response_id: first.response.id,
    input: [{ type: "function_call_output", call_id: call.call_id, output }],
    tools,
  });
  const summary = (turn) => ({
    id: turn.response.id,
    status: turn.response.status,
    types: turn.types,
    sequenceNumbers: turn.sequenceNumbers,
    outputTypes: turn.response.output.map((item) => item.type),
    argumentDeltas: turn.argumentDeltas,
    textDeltas: turn.textDeltas,
    outputText: turn.response.output_text,
    previousResponseId: turn.response.previous_response_id,
  });
  const result = {
    sdkVersion: VERSION,
    first: { ...summary(first), call: { name: call.name, arguments: call.arguments } },
    second: summary(second),
    toolOutput: output,
  };
  process.stdout.write(JSON.stringify(result) + "\n");
} catch (error) {
  const detail = { error: String(error), status: error?.status ?? null, body: error?.error ?? null };
  process.stdout.write(JSON.stringify(detail) + "\n");
  process.exitCode = 1;
}
