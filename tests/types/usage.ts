// Type-checked by tests/test_types.py (tsc --noEmit): the API as the README and the docs use it.
import {
  createEngine, webgpuSupport, cachedModels, clearModelCache, WebRwkvError,
  type ChatCompletionChunk, type ModelInfo, type LoadProgress, type KernelTimes,
} from "../../web/webrwkv.js";

async function main(out: HTMLElement): Promise<void> {
  const support = await webgpuSupport();
  if (!support.ok) throw new Error(support.message);
  const progress: LoadProgress[] = [];
  const engine = await createEngine({
    model: "models/rwkv7-shakespeare.st", baseUrl: "https://cdn.example.org/webrwkv/", quant: "int8",
    onProgress: (p) => { progress.push(p); if (p.phase === "kernels") console.log(p.done, p.total); },
  });
  const model: ModelInfo | null = engine.model;
  console.log(model?.card?.kind === "completion", model?.load.streamSeconds, engine.adapter);

  const ctrl = new AbortController();
  for await (const { token, text } of engine.generate("Once upon a time", { maxTokens: 50, topP: 0.9, stop: ["\n\n"], signal: ctrl.signal })) {
    out.textContent += text;
    if (token === 0) ctrl.abort();
  }
  const it = engine.generate([1, 2, 3], { temperature: 0, seed: 1 });
  const last = await it.next();
  if (last.done) console.log(last.value.finish_reason, last.value.completion_tokens);

  const stream = await engine.chat.completions.create({
    messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "Hi!" }],
    stream: true, stream_options: { include_usage: true }, max_tokens: 64, temperature: 0.7, top_p: 0.9,
    stop: ["\n"], seed: 7, presence_penalty: 0.3, frequency_penalty: 0.3,
  }, { signal: ctrl.signal });
  for await (const chunk of stream) {
    const c: ChatCompletionChunk = chunk;
    out.textContent += c.choices[0]?.delta.content ?? "";
    if (c.usage) console.log(c.usage.total_tokens);
  }
  // @ts-expect-error loadState takes a URL or null, not the file's bytes
  await engine.loadState(new Uint8Array(4));
  const full = await engine.chat.completions.create({ messages: [{ role: "user", content: "Hi!" }] });
  console.log(full.choices[0].message.content, full.usage.prompt_tokens, full.choices[0].finish_reason);

  console.log(await engine.countTokens([{ role: "user", content: "Hi" }]), engine.model?.chat_format?.stops);
  console.log(await engine.countTokens("Hello"), await cachedModels(), await clearModelCache());
  const kt: KernelTimes = await engine.kernelTimes({ prefill: 128 });
  console.log(kt.step_us, kt.sum_us, kt.kernels["wkv7"]?.us, (await engine.kernelTimes()).what);
  const tuned = await engine.loadState("/models/tuned-state.st");
  console.log(tuned.name, tuned.layers, await engine.loadState(null));
  try {
    await engine.load("missing.st", { signal: AbortSignal.timeout(1000), mirrors: ["https://mirror.example/missing.st", new URL("https://b.example/m.st")] });
  } catch (e) {
    if (e instanceof WebRwkvError && e.kind === "network") console.log(e.message, e.modelKept);
  }
  engine.dispose();
}

// Mistakes the types must catch (tsc fails if any of these lines is accepted).
async function mistakes(): Promise<void> {
  const engine = await createEngine();
  // @ts-expect-error maxTokens is a number
  engine.generate("x", { maxTokens: "abc" });
  // @ts-expect-error OpenAI's names belong to chat.completions, generate takes camelCase
  engine.generate("x", { max_tokens: 5 });
  // @ts-expect-error quant is none, int8 or nf4
  await createEngine({ quant: "int4" });
  // @ts-expect-error messages need a known role
  await engine.chat.completions.create({ messages: [{ role: "robot", content: "x" }] });
  const full = await engine.chat.completions.create({ messages: [{ role: "user", content: "x" }] });
  // @ts-expect-error a non-streamed completion is not iterable
  for await (const c of full) console.log(c);
}

export { main, mistakes };
