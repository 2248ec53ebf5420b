// What the Node SDK scripts of tests/test_real_clients_js.py share: the client, pointed at the
// proxy by the environment (SLUICEGATE_BASE_URL, the proxy's /v1 URL; SLUICEGATE_API_KEY;
// SLUICEGATE_MODEL), and the function tool both scripts' turns call.
import OpenAI from "openai";

export const client = new OpenAI({
  baseURL: process.env.SLUICEGATE_BASE_URL,
  apiKey: process.env.SLUICEGATE_API_KEY,
  maxRetries: 0,
  timeout: 60_000,
});
export const model = process.env.SLUICEGATE_MODEL;
export const tools = [
  {
    type: "function",
    name: "get_weather",
    description: "The weather in a city.",
    parameters: {
      type: "object",
      properties: { city: { type: "string" } },
      required: ["city"],
      additionalProperties: false,
    },
    strict: true,
  },
];
